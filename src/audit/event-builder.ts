import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newUlid } from '../core/ids.js';
import type { PrincipalType } from '../core/principal.js';
import type { AuditEvent, AuditEventInput } from './audit-types.js';
import { AUDIT_OUTCOMES } from './audit-types.js';
import { canonicalEventJson } from './canonical-json.js';
import { InvalidAuditValue, checkSensitivePaths, copyRedacted, hmacPaths } from './redaction.js';

/** An event ready to be chained: everything but its position. */
export interface PreparedEvent {
  /** The event without `seq`. */
  event: Omit<AuditEvent, 'seq'>;
  /** Canonical JSON of `event`, UTF-8: the bytes that are stored and hashed. */
  body: Buffer;
  /** The same as text, for the `body` column. */
  bodyText: string;
  timeMs: number;
}

/** Largest stored body. A bigger event is refused (fail closed): callers must not log bulk data. */
export const MAX_BODY_BYTES = 256 * 1024;

const EVENT_TYPE = /^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*){1,7}$/;
const CODE = /^[a-z][a-z0-9_.-]{0,63}$/;
const PRINCIPAL_TYPES: readonly PrincipalType[] = ['user', 'api-user', 'operator', 'system'];

let lastTime = { ms: Number.NaN, text: '' };

/** {@link rfc3339}, remembered for the last millisecond: a busy stream stamps many events in the same one. */
function timeText(ms: number): string {
  if (ms !== lastTime.ms) lastTime = { ms, text: rfc3339(ms) };
  return lastTime.text;
}

function invalid(detail: string): never {
  throw new CustosError('audit_event_invalid', detail);
}

/** A string the caller controls (an identifier): bounded, or the event is refused. */
function required(value: unknown, what: string, max: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max || !value.isWellFormed()) invalid(`${what} must be a string of 1 to ${max} characters`);
  return value;
}

/**
 * A string a client controls (user agent, path, names): truncated rather than
 * refused, so that an attacker cannot make the recording of their own request
 * fail by sending an oversized header.
 */
function clipped(value: unknown, what: string, max: number): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') invalid(`${what} must be a string`);
  // Lone surrogates become U+FFFD: a malformed header must not make the record of its request fail.
  const s = value.length > max ? `${value.slice(0, max - 1)}…` : value;
  return s.isWellFormed() ? s : s.toWellFormed();
}

function plainObject(value: unknown, what: string): Record<string, unknown> | undefined {
  if (value === undefined) return undefined;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) invalid(`${what} must be an object`);
  try {
    return copyRedacted(value) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof InvalidAuditValue) invalid(`${what}: ${err.message}`);
    throw err;
  }
}

/**
 * Checks an event input guard by guard, copies it into plain data (removing
 * secrets, HMAC-ing sensitive values with `hmacKey`), stamps id and time, and
 * canonicalises it. Throws `audit_event_invalid` on caller mistakes.
 */
export function prepareEvent(tenant: string | null, input: AuditEventInput, nowMs: number, hmacKey: () => Buffer): PreparedEvent {
  if (input === null || typeof input !== 'object') invalid('an event input object is required');
  const type = required(input.type, 'type', 128);
  if (!EVENT_TYPE.test(type)) invalid('type must be dotted lower-case words such as iam.user.create');
  if (!AUDIT_OUTCOMES.includes(input.outcome)) invalid(`outcome must be one of ${AUDIT_OUTCOMES.join(', ')}`);
  let code: string | undefined;
  if (input.code !== undefined) {
    if (input.outcome === 'success') invalid('a successful outcome carries no code');
    code = required(input.code, 'code', 64);
    if (!CODE.test(code)) invalid('code must be a lower-case error code');
  } else if (input.outcome === 'failure') {
    invalid('a failure needs its error code');
  }

  const actor = input.actor as AuditEventInput['actor'] | undefined;
  const p = actor?.principal;
  if (!p || typeof p !== 'object') invalid('actor.principal is required');
  if (!PRINCIPAL_TYPES.includes(p.type)) invalid(`actor.principal.type must be one of ${PRINCIPAL_TYPES.join(', ')}`);
  const principal: AuditEvent['principal'] = { type: p.type, id: required(p.id, 'actor.principal.id', 256) };
  const principalName = clipped(p.name, 'actor.principal.name', 256);
  if (principalName !== undefined) principal.name = principalName;

  const event: Omit<AuditEvent, 'seq'> = { id: newUlid(nowMs), time: timeText(nowMs), type, tenant, principal, outcome: input.outcome };
  if (code !== undefined) event.code = code;

  if (actor.source) {
    const source: NonNullable<AuditEvent['source']> = {};
    const ip = clipped(actor.source.ip, 'actor.source.ip', 64);
    const userAgent = clipped(actor.source.userAgent, 'actor.source.userAgent', 512);
    const sessionId = clipped(actor.source.sessionId, 'actor.source.sessionId', 128);
    if (ip !== undefined) source.ip = ip;
    if (userAgent !== undefined) source.userAgent = userAgent;
    if (sessionId !== undefined) source.sessionId = sessionId;
    if (Object.keys(source).length > 0) event.source = source;
  }
  if (actor.request) {
    event.request = {
      id: required(actor.request.id, 'actor.request.id', 128),
      method: required(actor.request.method, 'actor.request.method', 16),
      path: clipped(actor.request.path, 'actor.request.path', 1024) ?? invalid('actor.request.path is required'),
    };
  }
  if (input.resource !== undefined) {
    const r = input.resource;
    if (r === null || typeof r !== 'object') invalid('resource must be an object');
    const resource: NonNullable<AuditEvent['resource']> = { type: required(r.type, 'resource.type', 64) };
    if (r.id !== undefined) resource.id = required(r.id, 'resource.id', 256);
    const name = clipped(r.name, 'resource.name', 256);
    if (name !== undefined) resource.name = name;
    event.resource = resource;
  }
  const details = plainObject(input.details, 'details');
  if (details !== undefined) event.details = details;

  if (input.change !== undefined) {
    const c = input.change;
    if (c === null || typeof c !== 'object') invalid('change must be an object');
    const before = plainObject(c.before, 'change.before');
    const after = plainObject(c.after, 'change.after');
    let sensitive: string[] = [];
    try {
      if (c.sensitive !== undefined) sensitive = checkSensitivePaths(c.sensitive);
    } catch (err) {
      if (err instanceof InvalidAuditValue) invalid(err.message);
      throw err;
    }
    const change: NonNullable<AuditEvent['change']> = {};
    if (before !== undefined) change.before = before;
    if (after !== undefined) change.after = after;
    if (sensitive.length > 0) {
      const key = hmacKey();
      if (before) hmacPaths(before, sensitive, key);
      if (after) hmacPaths(after, sensitive, key);
    }
    if (before !== undefined || after !== undefined) event.change = change;
  }

  let bodyText: string;
  try {
    bodyText = canonicalEventJson(event);
  } catch (err) {
    invalid((err as Error).message);
  }
  const body = Buffer.from(bodyText, 'utf8');
  if (body.length > MAX_BODY_BYTES) invalid(`the event is ${body.length} bytes; at most ${MAX_BODY_BYTES} are recorded`);
  return { event, body, bodyText, timeMs: nowMs };
}
