import { randomBytes, randomFillSync, randomInt } from 'node:crypto';
import { monotonicFactory } from 'ulid';

/**
 * The ULID library asks its PRNG for one number per character; its default
 * draws `crypto.getRandomValues` each time (~16 calls per id). This source
 * takes the same CSPRNG's bytes from a pool refilled 4 KiB at a time.
 * `byte / 256` is uniform over 256 steps, so `floor(x * 32)` is uniform over
 * the 32 ULID characters.
 */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;
function pooledRandom(): number {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  return pool[poolAt++]! / 256;
}

const nextUlid = monotonicFactory(pooledRandom);

/** A ULID: 26 Crockford base-32 characters, sortable by creation time. */
export function newUlid(time?: number): string {
  return nextUlid(time);
}

/**
 * A lower-case ULID, usable as a SQL identifier fragment and a file name: the
 * alphabet is [0-9a-z] without i, l, o, u.
 */
export function newId(time?: number): string {
  return nextUlid(time).toLowerCase();
}

const LOWER_ID = /^[0-9a-hjkmnp-tv-z]{26}$/;

/** True when `s` has the shape of an id made by {@link newId}. */
export function isId(s: string): boolean {
  return LOWER_ID.test(s);
}

/** `bytes` random bytes as base64url: for session ids, tokens, reset links. */
export function randomToken(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}

const PASSWORD_ALPHABETS = [
  'abcdefghijkmnopqrstuvwxyz',
  'ABCDEFGHJKLMNPQRSTUVWXYZ',
  '23456789',
  '-_.!',
] as const;

/**
 * A random temporary password: `length` characters with at least one of each
 * class (lower, upper, digit, symbol), first and last character non-numeric, so
 * it satisfies every optional password rule. Unambiguous characters only.
 * 24 characters carry about 140 bits.
 */
export function temporaryPassword(length = 24): string {
  const all = PASSWORD_ALPHABETS.join('');
  for (;;) {
    const chars: string[] = [];
    for (let i = 0; i < length; i++) chars.push(all[randomInt(all.length)]!);
    const s = chars.join('');
    const hasEach = PASSWORD_ALPHABETS.every((a) => [...s].some((c) => a.includes(c)));
    const edgesOk = !/[0-9]/.test(s[0]!) && !/[0-9]/.test(s[s.length - 1]!);
    if (hasEach && edgesOk) return s;
  }
}
