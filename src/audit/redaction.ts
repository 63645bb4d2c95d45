import { createHmac } from 'node:crypto';
import { canonicalJson } from './canonical-json.js';

/** What a removed secret is replaced with: the key stays, so a reader sees that it changed. */
export const REMOVED = '[removed]';

/** Prefix of an HMAC'd sensitive value, as Vault's audit devices write it. */
export const HMAC_PREFIX = 'hmac-sha256:';

/**
 * Key names whose values are secrets, matched after lower-casing and dropping
 * everything but letters and digits (`private_key`, `privateKey` and
 * `Private-Key` are one name). A key *containing* one of these is a secret…
 */
const SECRET_KEY_PARTS = [
  'password',
  'passwd',
  'passphrase',
  'secret',
  'token',
  'privatekey',
  'keymaterial',
  'apikey',
  'accesskey',
  'signingkey',
  'masterkey',
  'encryptionkey',
  'wrappedkey',
  'datakey',
  'hmackey',
  'sessionkey',
  'credential',
  'authorization',
  'cookie',
  'recoverycode',
  'totpseed',
  'mfaseed',
  'csrf',
] as const;

/** …and so is a key that *is* one of these short names (too short to match inside other names). */
const SECRET_KEY_NAMES = new Set(['pwd', 'pin', 'otp', 'cvv', 'cvc', 'dek', 'kek', 'seed', 'plaintext']);

/** Whether values under this key name are secrets the activity stream must never hold. */
export function isSecretKey(key: string): boolean {
  const k = key.toLowerCase().replace(/[^a-z0-9]/g, '');
  return SECRET_KEY_NAMES.has(k) || SECRET_KEY_PARTS.some((part) => k.includes(part));
}

/** Nesting allowed in `details` and `change`; deeper values are refused (and cycles cannot pass). */
export const MAX_DEPTH = 16;

/** Caller misuse found while copying a value: becomes `audit_event_invalid`. */
export class InvalidAuditValue extends Error {}

/**
 * Copies an untrusted value into plain JSON data, removing secrets on the way:
 * values under secret-named keys become {@link REMOVED} (booleans and nulls,
 * which hold no secret, stay), binary values become a
 * size note (they may be key material), `Date` becomes RFC 3339 text, `bigint`
 * decimal text; `undefined` members are dropped. Functions, symbols, non-finite
 * numbers, `__proto__` keys and nesting deeper than {@link MAX_DEPTH} are refused.
 */
export function copyRedacted(value: unknown, depth = 0): unknown {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new InvalidAuditValue('numbers must be finite');
    return value;
  }
  if (typeof value === 'bigint') return value.toString();
  if (typeof value !== 'object') throw new InvalidAuditValue(`a ${typeof value} is not JSON data`);
  if (depth >= MAX_DEPTH) throw new InvalidAuditValue(`values nest deeper than ${MAX_DEPTH} levels`);
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new InvalidAuditValue('invalid date');
    return value.toISOString();
  }
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return `[binary ${value.byteLength} bytes]`;
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : copyRedacted(v, depth + 1)));
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    if (key === '__proto__') throw new InvalidAuditValue('__proto__ keys are refused');
    if (v === undefined) continue;
    // A flag (`mustChangePassword: true`) or a null holds no secret; anything else under a secret name goes.
    out[key] = isSecretKey(key) && v !== null && typeof v !== 'boolean' ? REMOVED : copyRedacted(v, depth + 1);
  }
  return out;
}

/** HMAC-SHA256 of a value for the stream: strings as their UTF-8 bytes, anything else as its canonical JSON. */
export function hmacValue(key: Buffer, value: unknown): string {
  const data = typeof value === 'string' ? value : canonicalJson(value);
  return HMAC_PREFIX + createHmac('sha256', key).update(data, 'utf8').digest('hex');
}

const PATH = /^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/;

/** Checks the `sensitive` paths a caller names (`email`, `profile.phone`). */
export function checkSensitivePaths(paths: unknown): string[] {
  if (!Array.isArray(paths) || paths.length > 100) throw new InvalidAuditValue('change.sensitive must be a list of at most 100 paths');
  for (const p of paths) {
    if (typeof p !== 'string' || p.length > 200 || !PATH.test(p) || p.split('.').includes('__proto__')) {
      throw new InvalidAuditValue('change.sensitive holds dot paths such as "email" or "profile.phone"');
    }
  }
  return paths as string[];
}

/**
 * Replaces, in place, the value at each dot path of a copied object by its
 * HMAC. Arrays on the way are traversed element by element (`contacts.email`
 * covers every contact); an array *at* the path has each element replaced.
 * Missing paths and already removed secrets are left alone.
 */
export function hmacPaths(obj: Record<string, unknown>, paths: readonly string[], key: Buffer): void {
  for (const p of paths) applyAt(obj, p.split('.'), key);
}

function applyAt(node: unknown, segments: string[], key: Buffer): void {
  if (Array.isArray(node)) {
    for (const item of node) applyAt(item, segments, key);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  const obj = node as Record<string, unknown>;
  const [head, ...rest] = segments as [string, ...string[]];
  if (!Object.hasOwn(obj, head)) return;
  if (rest.length > 0) return applyAt(obj[head], rest, key);
  const v = obj[head];
  if (v === null || v === REMOVED) return;
  obj[head] = Array.isArray(v) ? v.map((item) => (item === null ? null : hmacValue(key, item))) : hmacValue(key, v);
}
