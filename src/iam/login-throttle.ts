import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Kysely } from 'kysely';
import type { TenantDB } from '../storage/schema.js';
import type { SecuritySettings } from './security-settings.js';

const MINUTE_MS = 60_000;
/** Buckets older than the longest window a tenant may set are deleted as new failures arrive. */
const MAX_WINDOW_MINUTES = 1440;

/**
 * Failed password sign-ins per client address, counted in one-minute
 * buckets in the tenant's store (so every server process of a deployment
 * sees the same counts). Every kind of failure counts (unknown user, wrong
 * password, suspended, locked); a success does not reset the count, or one
 * valid account would let an address clear its own record.
 */
/**
 * The address a failure is counted against: an IPv4 address as it is
 * (IPv4-mapped IPv6 addresses too), an IPv6 address by its /64 — one
 * subscriber usually holds a whole /64 and could otherwise rotate through it.
 */
export function throttleKey(ip: string): string {
  if (isIP(ip) === 0) return ip;
  const addr = ipaddr.process(ip);
  if (addr.kind() === 'ipv4') return addr.toString();
  const parts = (addr as ipaddr.IPv6).parts.slice(0, 4);
  return `${ipaddr.IPv6.parse(`${parts.map((p) => p.toString(16)).join(':')}::`).toString()}/64`;
}

export const loginThrottle = {
  /**
   * Seconds until `ip` may try again, or 0 when it may now. Blocked once
   * the failures inside the window reach the tenant's maximum; the wait
   * lasts until enough of the oldest ones have left the window.
   */
  async waitSeconds(db: Kysely<TenantDB>, ip: string | undefined, settings: SecuritySettings, now: number): Promise<number> {
    const { maxFailures, windowMinutes } = settings.loginThrottle;
    if (ip === undefined || maxFailures === 0) return 0;
    const current = Math.floor(now / MINUTE_MS);
    const rows = await db.selectFrom('login_ip_failures').select(['bucket', 'failures']).where('ip', '=', throttleKey(ip)).where('bucket', '>', current - windowMinutes).orderBy('bucket').execute();
    let total = rows.reduce((n, r) => n + r.failures, 0);
    if (total < maxFailures) return 0;
    for (const r of rows) {
      total -= r.failures;
      // Bucket r leaves the window when `current - windowMinutes` reaches it.
      if (total < maxFailures) return Math.max(1, Math.ceil(((r.bucket + windowMinutes) * MINUTE_MS - now) / 1000));
    }
    return windowMinutes * 60;
  },

  /** Counts one failure from `ip`, inside the caller's transaction (atomic across processes), and drops expired buckets. */
  async recordFailure(db: Kysely<TenantDB>, ip: string | undefined, now: number): Promise<void> {
    if (ip === undefined) return;
    const bucket = Math.floor(now / MINUTE_MS);
    await db
      .insertInto('login_ip_failures')
      .values({ ip: throttleKey(ip), bucket, failures: 1 })
      .onConflict((oc) => oc.columns(['ip', 'bucket']).doUpdateSet((eb) => ({ failures: eb('login_ip_failures.failures', '+', 1) })))
      .execute();
    await db.deleteFrom('login_ip_failures').where('bucket', '<=', bucket - MAX_WINDOW_MINUTES).execute();
  },
};
