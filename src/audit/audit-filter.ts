import { CustosError } from '../core/errors.js';
import type { AuditFilter } from './audit-types.js';
import { AUDIT_OUTCOMES } from './audit-types.js';
import type { StoreFilter } from './chain-store.js';

/** Event types or patterns a filter accepts: lower-case letters, digits, `.`, `_`, `-` and `*`. */
const TYPE_PATTERN = /^[a-z0-9_.*-]{1,128}$/;

function toMs(value: string | number | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  const ms = typeof value === 'number' ? value : Date.parse(value);
  if (!Number.isFinite(ms) || (typeof value === 'string' && !/^\d{4}-\d{2}-\d{2}/.test(value))) {
    throw new CustosError('validation_failed', `${what} must be an RFC 3339 time such as 2026-01-31T00:00:00Z`);
  }
  return ms;
}

/** Checks a query or export filter (untrusted: it will come from the API) and turns it into storage terms. */
export function checkFilter(f: AuditFilter): StoreFilter {
  const out: StoreFilter = {};
  const since = toMs(f.since, 'since');
  const until = toMs(f.until, 'until');
  if (since !== undefined) out.sinceMs = since;
  if (until !== undefined) out.untilMs = until;
  if (f.types !== undefined) {
    if (!Array.isArray(f.types) || f.types.length > 20 || !f.types.every((t) => typeof t === 'string' && TYPE_PATTERN.test(t))) {
      throw new CustosError('validation_failed', 'types are up to 20 event types or patterns such as auth.* (lower-case letters, digits, . _ - and *)');
    }
    out.types = f.types;
  }
  if (f.outcome !== undefined) {
    if (!AUDIT_OUTCOMES.includes(f.outcome)) throw new CustosError('validation_failed', `outcome must be one of ${AUDIT_OUTCOMES.join(', ')}`);
    out.outcome = f.outcome;
  }
  return out;
}

/** An opaque page cursor naming the last event returned. */
export function encodeCursor(seq: number): string {
  return Buffer.from(`seq:${seq}`).toString('base64url');
}

export function decodeCursor(cursor: string): number {
  const m = /^seq:(\d{1,15})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  if (!m) throw new CustosError('validation_failed', 'cursor is not one this API returned');
  return Number(m[1]);
}
