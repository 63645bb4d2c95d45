import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { Secret, TOTP } from 'otpauth';
import type { Clock } from '../core/clock.js';
import type { TenantSecrets } from '../crypto/tenant-secrets.js';
import type { TenantDB } from '../storage/schema.js';
import { hashSecret } from './credentials.js';

const PURPOSE = 'mfa-totp';
export const RECOVERY_CODE_COUNT = 10;
/** Accept the current 30-second step and one on either side (clock skew); never an already-used step. */
const WINDOW = 1;

function totp(secretBase32: string, label: string): TOTP {
  return new TOTP({ issuer: 'Custos', label, algorithm: 'SHA1', digits: 6, period: 30, secret: Secret.fromBase32(secretBase32) });
}

/** Recovery codes: 10 random characters from an unambiguous alphabet, shown as xxxxx-xxxxx; stored hashed. */
function recoveryCode(): string {
  const alphabet = 'abcdefghjkmnpqrstuvwxyz23456789';
  const bytes = randomBytes(10);
  const chars = [...bytes].map((b) => alphabet[b % alphabet.length]!);
  return `${chars.slice(0, 5).join('')}-${chars.slice(5).join('')}`;
}

function normaliseRecoveryCode(code: string): string {
  return code.trim().toLowerCase().replace(/\s+/g, '');
}

/**
 * TOTP (RFC 6238: 30-second steps, 6 digits, HMAC-SHA1 as authenticator apps
 * expect) with 10 single-use recovery codes. The TOTP seed is a tenant secret,
 * encrypted under the tenant's keys; each accepted step is recorded so a code
 * is never accepted twice.
 */
export class Mfa {
  readonly #secrets: TenantSecrets;
  readonly #clock: Clock;

  constructor(deps: { secrets: TenantSecrets; clock: Clock }) {
    this.#secrets = deps.secrets;
    this.#clock = deps.clock;
  }

  async isEnrolled(db: Kysely<TenantDB>, userId: string): Promise<boolean> {
    const row = await db.selectFrom('mfa_totp').select('confirmed_at').where('user_id', '=', userId).executeTakeFirst();
    return row !== undefined && row.confirmed_at !== null;
  }

  /** Starts (or restarts, while unconfirmed) an enrollment: a new seed, returned for the authenticator app. */
  async beginEnrollment(db: Kysely<TenantDB>, tenantId: string, userId: string, label: string): Promise<{ secret: string; otpauthUri: string }> {
    const secret = new Secret({ size: 20 }).base32;
    await this.#secrets.put(db, tenantId, PURPOSE, userId, secret);
    await db.deleteFrom('mfa_totp').where('user_id', '=', userId).execute();
    await db.insertInto('mfa_totp').values({ user_id: userId, confirmed_at: null, last_counter: null, created_at: this.#clock.now() }).execute();
    return { secret, otpauthUri: totp(secret, label).toString() };
  }

  /**
   * Checks a TOTP code. Accepts each 30-second step once only: a replayed code,
   * or an older one after a newer was used, is refused.
   */
  async verifyTotp(db: Kysely<TenantDB>, tenantId: string, userId: string, code: string): Promise<boolean> {
    if (!/^\d{6}$/.test(code)) return false;
    const row = await db.selectFrom('mfa_totp').selectAll().where('user_id', '=', userId).executeTakeFirst();
    if (!row) return false;
    const secret = (await this.#secrets.get(db, tenantId, PURPOSE, userId)).toString('utf8');
    const t = totp(secret, userId);
    const now = this.#clock.now();
    const delta = t.validate({ token: code, timestamp: now, window: WINDOW });
    if (delta === null) return false;
    const counter = t.counter({ timestamp: now }) + delta;
    if (row.last_counter !== null && counter <= row.last_counter) return false;
    // Conditional update: two concurrent uses of the same code cannot both win.
    const r = await db
      .updateTable('mfa_totp')
      .set({ last_counter: counter })
      .where('user_id', '=', userId)
      .where((eb) => eb.or([eb('last_counter', 'is', null), eb('last_counter', '<', counter)]))
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /** Confirms an enrollment with a first valid code; returns the 10 recovery codes (shown once). */
  async confirmEnrollment(db: Kysely<TenantDB>, tenantId: string, userId: string, code: string): Promise<string[] | null> {
    if (!(await this.verifyTotp(db, tenantId, userId, code))) return null;
    await db.updateTable('mfa_totp').set({ confirmed_at: this.#clock.now() }).where('user_id', '=', userId).execute();
    return this.newRecoveryCodes(db, userId);
  }

  async newRecoveryCodes(db: Kysely<TenantDB>, userId: string): Promise<string[]> {
    await db.deleteFrom('mfa_recovery_codes').where('user_id', '=', userId).execute();
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, recoveryCode);
    await db
      .insertInto('mfa_recovery_codes')
      .values(codes.map((c) => ({ code_hash: hashSecret(`${userId}:${normaliseRecoveryCode(c)}`), user_id: userId, used_at: null })))
      .execute();
    return codes;
  }

  /** Uses a recovery code: single use. */
  async useRecoveryCode(db: Kysely<TenantDB>, userId: string, code: string): Promise<boolean> {
    if (typeof code !== 'string' || code.length > 40) return false;
    const r = await db
      .updateTable('mfa_recovery_codes')
      .set({ used_at: this.#clock.now() })
      .where('code_hash', '=', hashSecret(`${userId}:${normaliseRecoveryCode(code)}`))
      .where('user_id', '=', userId)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  async remainingRecoveryCodes(db: Kysely<TenantDB>, userId: string): Promise<number> {
    const r = await db.selectFrom('mfa_recovery_codes').select((eb) => eb.fn.countAll<number>().as('n')).where('user_id', '=', userId).where('used_at', 'is', null).executeTakeFirstOrThrow();
    return Number(r.n);
  }

  async disable(db: Kysely<TenantDB>, userId: string): Promise<void> {
    await db.deleteFrom('mfa_totp').where('user_id', '=', userId).execute();
    await db.deleteFrom('mfa_recovery_codes').where('user_id', '=', userId).execute();
    await this.#secrets.delete(db, PURPOSE, userId);
  }
}
