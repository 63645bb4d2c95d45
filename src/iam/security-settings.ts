import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { isBuiltinRole } from './permissions.js';

/** A tenant's login and password security configuration (Responsys's security settings). */
export interface SecuritySettings {
  password: {
    /** Minimum length; default 12, never below 6. */
    minLength: number;
    /** Maximum length; at least 64, at most 256 (default 256). */
    maxLength: number;
    requireLowercase: boolean;
    requireUppercase: boolean;
    requireDigit: boolean;
    /** One of !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ */
    requireSpecial: boolean;
    firstAndLastNonNumeric: boolean;
    /** Refuse the last N passwords (default 5; 0 allows reuse). */
    historySize: number;
  };
  lockout: {
    /** Consecutive failures that lock an account (default 5). */
    threshold: number;
    /** `duration`: unlocked after `durationMinutes` (default 60); `admin`: only an administrator unlocks. */
    mode: 'duration' | 'admin';
    durationMinutes: number;
  };
  session: {
    /** Idle timeout: 15, 30 (default) or 60 minutes. */
    idleTimeoutMinutes: 15 | 30 | 60;
  };
  mfa: {
    /** Who must use MFA to sign in to the console: nobody, everybody, or holders of the listed roles. */
    required: 'none' | 'all' | 'roles';
    roles: string[];
  };
  /** CIDRs (IPv4 or IPv6) requests may come from; empty allows any address. */
  ipAllowlist: string[];
  /**
   * Per-address throttle of password sign-ins (console and API): after
   * `maxFailures` failed attempts from one client address within
   * `windowMinutes`, that address gets 429 `rate_limited` without its
   * password being checked, until the oldest failures leave the window.
   * `maxFailures` 0 turns it off. Default 50 in 15 minutes.
   */
  loginThrottle: { maxFailures: number; windowMinutes: number };
  /** When on, every user and API user reaches only objects of its organizations and their descendants. */
  orgAccessControl: boolean;
}

export const DEFAULT_SECURITY_SETTINGS: SecuritySettings = Object.freeze({
  password: { minLength: 12, maxLength: 256, requireLowercase: false, requireUppercase: false, requireDigit: false, requireSpecial: false, firstAndLastNonNumeric: false, historySize: 5 },
  lockout: { threshold: 5, mode: 'duration', durationMinutes: 60 },
  session: { idleTimeoutMinutes: 30 },
  mfa: { required: 'none', roles: [] },
  ipAllowlist: [],
  loginThrottle: { maxFailures: 50, windowMinutes: 15 },
  orgAccessControl: false,
}) as SecuritySettings;

const KEY = 'security';
const CACHE_MS = 1000;

function fail(why: string): never {
  throw new CustosError('validation_failed', why);
}

function int(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(`${name} must be an integer from ${min} to ${max}`);
  return v;
}

function bool(v: unknown, name: string): boolean {
  if (typeof v !== 'boolean') fail(`${name} must be true or false`);
  return v;
}

/**
 * Parses a CIDR (or a single address) and returns it normalised; throws on anything else.
 * Only the standard notations are accepted (Node's `isIP`): ipaddr.js alone also reads
 * `10.0.0` as 10.0.0.0, `167772161` as 10.0.0.1 and `010.0.0.1` (octal) as 8.0.0.1.
 */
export function parseCidr(text: string): [ipaddr.IPv4 | ipaddr.IPv6, number] {
  const slash = text.indexOf('/');
  if (isIP(slash < 0 ? text : text.slice(0, slash)) === 0 || (slash >= 0 && !/^[0-9]{1,3}$/.test(text.slice(slash + 1)))) fail(`${text} is not an IP address or CIDR`);
  try {
    if (text.includes('/')) return ipaddr.parseCIDR(text);
    const addr = ipaddr.parse(text);
    return [addr, addr.kind() === 'ipv4' ? 32 : 128];
  } catch {
    fail(`${text} is not an IP address or CIDR`);
  }
}

/** Whether `ip` falls in any of the CIDRs (IPv4-mapped IPv6 addresses count as IPv4). */
export function ipAllowed(ip: string, cidrs: readonly string[]): boolean {
  if (cidrs.length === 0) return true;
  if (isIP(ip) === 0) return false;
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    addr = ipaddr.process(ip);
  } catch {
    return false;
  }
  return cidrs.some((c) => {
    const [range, bits] = parseCidr(c);
    return range.kind() === addr.kind() && addr.match(range, bits);
  });
}

/** Checks a complete settings document (copy-then-check: unknown members are refused). */
export function checkSecuritySettings(input: unknown): SecuritySettings {
  const o = input as Partial<Record<keyof SecuritySettings, unknown>>;
  if (o === null || typeof o !== 'object') fail('settings must be an object');
  const p = o.password as Record<string, unknown>;
  const l = o.lockout as Record<string, unknown>;
  const s = o.session as Record<string, unknown>;
  const m = o.mfa as Record<string, unknown>;
  if (!p || !l || !s || !m) fail('password, lockout, session and mfa are required');
  const minLength = int(p.minLength, 'password.minLength', 6, 256);
  const maxLength = int(p.maxLength, 'password.maxLength', 64, 256);
  if (maxLength < minLength) fail('password.maxLength must not be below password.minLength');
  const idle = s.idleTimeoutMinutes;
  if (idle !== 15 && idle !== 30 && idle !== 60) fail('session.idleTimeoutMinutes must be 15, 30 or 60');
  if (l.mode !== 'duration' && l.mode !== 'admin') fail('lockout.mode must be duration or admin');
  if (m.required !== 'none' && m.required !== 'all' && m.required !== 'roles') fail('mfa.required must be none, all or roles');
  const roles = m.roles;
  if (!Array.isArray(roles) || roles.length > 50 || roles.some((r) => typeof r !== 'string' || r.length > 64)) fail('mfa.roles must be a list of role keys or ids');
  const allow = o.ipAllowlist;
  if (!Array.isArray(allow) || allow.length > 200 || allow.some((c) => typeof c !== 'string')) fail('ipAllowlist must be a list of CIDRs');
  // Optional in a PUT (documents from before it existed stay valid): absent means the default.
  const t = (o.loginThrottle ?? DEFAULT_SECURITY_SETTINGS.loginThrottle) as Record<string, unknown>;
  if (t === null || typeof t !== 'object') fail('loginThrottle must be an object');
  const loginThrottle = { maxFailures: int(t.maxFailures, 'loginThrottle.maxFailures', 0, 100000), windowMinutes: int(t.windowMinutes, 'loginThrottle.windowMinutes', 1, 1440) };
  const cidrs = (allow as string[]).map((c) => {
    const [range, bits] = parseCidr(c.trim());
    return `${range.toString()}/${bits}`;
  });
  return {
    password: {
      minLength,
      maxLength,
      requireLowercase: bool(p.requireLowercase, 'password.requireLowercase'),
      requireUppercase: bool(p.requireUppercase, 'password.requireUppercase'),
      requireDigit: bool(p.requireDigit, 'password.requireDigit'),
      requireSpecial: bool(p.requireSpecial, 'password.requireSpecial'),
      firstAndLastNonNumeric: bool(p.firstAndLastNonNumeric, 'password.firstAndLastNonNumeric'),
      historySize: int(p.historySize, 'password.historySize', 0, 24),
    },
    lockout: { threshold: int(l.threshold, 'lockout.threshold', 1, 100), mode: l.mode, durationMinutes: int(l.durationMinutes, 'lockout.durationMinutes', 1, 10080) },
    session: { idleTimeoutMinutes: idle },
    mfa: { required: m.required, roles: roles as string[] },
    ipAllowlist: cidrs,
    loginThrottle,
    orgAccessControl: bool(o.orgAccessControl, 'orgAccessControl'),
  };
}

/**
 * A tenant's security settings: stored in its store, cached for a second
 * (a change made by another node applies within that), invalidated at once
 * in the process that changes them.
 */
export class SecuritySettingsStore {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #cache = new Map<string, { value: SecuritySettings; at: number }>();

  constructor(deps: { storage: Storage; clock: Clock }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
  }

  async #read(db: Kysely<TenantDB>): Promise<SecuritySettings> {
    const row = await db.selectFrom('tenant_settings').select('value').where('key', '=', KEY).executeTakeFirst();
    // Stored documents from before a setting existed get its default.
    return row ? { ...DEFAULT_SECURITY_SETTINGS, ...(JSON.parse(row.value) as Partial<SecuritySettings>) } : DEFAULT_SECURITY_SETTINGS;
  }

  /** Settings as of this transaction (no cache): for decisions that must be exact. */
  inTx(db: Kysely<TenantDB>): Promise<SecuritySettings> {
    return this.#read(db);
  }

  async get(tenantId: string): Promise<SecuritySettings> {
    const now = this.#clock.now();
    const hit = this.#cache.get(tenantId);
    if (hit && now - hit.at < CACHE_MS) return hit.value;
    const value = await this.#storage.tenant(tenantId).transaction((db) => this.#read(db));
    this.#cache.set(tenantId, { value, at: now });
    return value;
  }

  /** Replaces the settings inside the caller's transaction; returns the stored (normalised) document and the previous one. */
  async put(db: Kysely<TenantDB>, tenantId: string, input: unknown): Promise<{ before: SecuritySettings; after: SecuritySettings }> {
    const after = checkSecuritySettings(input);
    for (const r of after.mfa.roles) {
      if (!isBuiltinRole(r) && !(await db.selectFrom('roles').select('id').where('id', '=', r).executeTakeFirst())) fail(`mfa.roles: unknown role ${r}`);
    }
    const before = await this.#read(db);
    await db
      .insertInto('tenant_settings')
      .values({ key: KEY, value: JSON.stringify(after), updated_at: this.#clock.now() })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value: JSON.stringify(after), updated_at: this.#clock.now() }))
      .execute();
    this.#cache.delete(tenantId);
    return { before, after };
  }

  invalidate(tenantId: string): void {
    this.#cache.delete(tenantId);
  }
}
