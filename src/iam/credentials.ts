import { hash, timingSafeEqual } from 'node:crypto';
import { isId, randomToken } from '../core/ids.js';

/**
 * Bearer secrets (session cookies, API tokens, sign-in flow tokens, device
 * tokens, reset links) are `<tenant id>.<256-bit random, base64url>`. The
 * tenant id only routes the request to the right store; the store keeps the
 * SHA-256 of the random part, never the secret itself.
 */
export interface ParsedCredential {
  tenantId: string;
  secret: string;
}

const SECRET = /^[A-Za-z0-9_-]{43}$/;

export function newCredential(tenantId: string): { token: string; hash: Buffer } {
  const secret = randomToken(32);
  return { token: `${tenantId}.${secret}`, hash: hashSecret(secret) };
}

export function parseCredential(text: unknown): ParsedCredential | null {
  if (typeof text !== 'string' || text.length > 100) return null;
  const dot = text.indexOf('.');
  if (dot < 0) return null;
  const tenantId = text.slice(0, dot);
  const secret = text.slice(dot + 1);
  return isId(tenantId) && SECRET.test(secret) ? { tenantId, secret } : null;
}

export function hashSecret(secret: string): Buffer {
  return hash('sha256', secret, 'buffer');
}

/** Constant-time comparison of a presented secret with a stored hash. */
export function secretMatches(secret: string, hash: Buffer | null): boolean {
  if (!hash) return false;
  const h = hashSecret(secret);
  return h.length === hash.length && timingSafeEqual(h, hash);
}

/** Console sessions live at most 12 hours, whatever the activity. */
export const SESSION_MAX_MS = 12 * 3600 * 1000;
/** API bearer tokens live one hour. */
export const TOKEN_MAX_MS = 3600 * 1000;
/** A sign-in in progress (challenges) must finish within 15 minutes. */
export const FLOW_MAX_MS = 15 * 60 * 1000;
/** Device-verification codes are valid 10 minutes and allow 5 tries. */
export const DEVICE_CODE_MS = 10 * 60 * 1000;
export const DEVICE_CODE_TRIES = 5;
/** A trusted device stays trusted for a year. */
export const DEVICE_MAX_MS = 365 * 24 * 3600 * 1000;
/** Password-reset links expire after 2 hours. */
export const RESET_LINK_MS = 2 * 3600 * 1000;
/** `last_seen_at` is written at most this often per session (idle timeouts are minute-grained). */
export const TOUCH_EVERY_MS = 30 * 1000;
/** `locked_until` of an account only an administrator can unlock. */
export const LOCKED_UNTIL_ADMIN = Number.MAX_SAFE_INTEGER;

export const SESSION_COOKIE = 'custos_session';
export const DEVICE_COOKIE = 'custos_device';
