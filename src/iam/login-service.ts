import { createHash, randomInt } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Actor, Source } from '../core/principal.js';
import { hashPassword, verifyDummy, verifyPassword } from '../crypto/password-hash.js';
import type { MailService } from '../notify/mail-service.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { AuthContext } from './authorize.js';
import {
  DEVICE_CODE_MS,
  DEVICE_CODE_TRIES,
  DEVICE_MAX_MS,
  FLOW_MAX_MS,
  LOCKED_UNTIL_ADMIN,
  RESET_LINK_MS,
  hashSecret,
  newCredential,
  parseCredential,
} from './credentials.js';
import { loginThrottle } from './login-throttle.js';
import type { Mfa } from './mfa.js';
import { checkPassword, isWellFormedPassword } from './password-policy.js';
import type { SecuritySettings, SecuritySettingsStore } from './security-settings.js';
import type { IssuedSession, SessionService, UserRow } from './session-service.js';
import { readSamlSettings } from './sso/saml-settings.js';

export type Challenge = 'device_verification_required' | 'password_change_required' | 'mfa_required';

export type SignInResult =
  | { status: 'ok'; session: IssuedSession; user: { id: string; username: string; kind: 'console' | 'api' }; deviceToken?: string; recoveryCodes?: string[] }
  | {
      status: 'challenge';
      challenge: Challenge;
      flowToken: string;
      /** For `mfa_required` when the user must enroll first: the seed for the authenticator app. */
      mfaEnrollment?: { secret: string; otpauthUri: string };
      deviceToken?: string;
    };

export interface TenantRef {
  id: string;
  name: string;
}

interface Flow {
  idHash: Buffer;
  user: UserRow;
  pending: Challenge[];
  /** How the first factor was passed: the session the flow ends in carries it. */
  method: 'password' | 'saml';
}

/** The actor of a sign-in attempt before anyone is authenticated: the claimed user (or the claimed name, when unknown). */
function claimant(user: UserRow | undefined, username: string, source: Source | undefined): Actor {
  return { principal: { type: user?.kind === 'api' ? 'api-user' : 'user', id: user?.id ?? 'unknown', name: username.slice(0, 200) }, source };
}

function codeHash(flowHash: Buffer, code: string): Buffer {
  return createHash('sha256').update(flowHash).update(code).digest();
}

function isLocked(user: UserRow, now: number): boolean {
  return user.locked_until !== null && user.locked_until > now;
}

/**
 * Verifies a presented password against a stored hash, in the time of one
 * argon2id verification whatever the outcome. A password that is not
 * well-formed Unicode never matches: it was never set (the policy refuses
 * it), and its unpaired surrogates would hash as U+FFFD.
 */
async function passwordMatches(hash: string | null | undefined, password: string): Promise<boolean> {
  return hash && isWellFormedPassword(password) ? verifyPassword(hash, password) : verifyDummy(password);
}

/**
 * Sign-in for console users (sessions) and API users (tokens), with the
 * security behaviour of the Responsys overview: a temporary password must be
 * changed at first sign-in and expires after 72 hours; an unknown device needs
 * a 6-digit code sent by mail (10 minutes, single use, 5 tries); MFA (TOTP or
 * a recovery code) when the user enrolled or the tenant's policy requires it;
 * lockout after N consecutive failures (60 minutes, custom, or until an
 * administrator unlocks), counted atomically in the user's row; password
 * reset links valid 2 hours, single use, never bypassing MFA. Wrong username,
 * wrong password, suspended and locked accounts all fail the same way, in the
 * same time (one argon2id verification on every path).
 */
export class LoginService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #mail: MailService;
  readonly #settings: SecuritySettingsStore;
  readonly #sessions: SessionService;
  readonly #mfa: Mfa;
  readonly #publicUrl: string;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; mail: MailService; settings: SecuritySettingsStore; sessions: SessionService; mfa: Mfa; publicUrl: string }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#mail = deps.mail;
    this.#settings = deps.settings;
    this.#sessions = deps.sessions;
    this.#mfa = deps.mfa;
    this.#publicUrl = deps.publicUrl;
  }

  // --- first factor ----------------------------------------------------------------

  /**
   * Checks username and password of a user of `kind`. Every failure is the
   * same `invalid_credentials`, recorded with its real reason in the activity
   * stream; consecutive wrong passwords lock the account. On success, `then`
   * runs in the same transaction that checked the outcome (one write
   * transaction per sign-in: the user is read without one, before the
   * password is verified off the event loop). That read is only a guess:
   * the transaction re-reads the user under its row lock, so a correct
   * password signs in only if the account is unlocked when it commits.
   */
  async #firstFactor<T>(
    tenant: TenantRef,
    kind: 'console' | 'api',
    username: string,
    password: string,
    source: Source | undefined,
    then: (db: Kysely<TenantDB>, user: UserRow, settings: SecuritySettings) => Promise<T>,
  ): Promise<T> {
    const store = this.#storage.tenant(tenant.id);
    // Cached for at most a second (dropped at once on a change through this process): the throttle and a
    // successful sign-in's challenges use it; the lockout of a failure reads the settings in its transaction.
    const cachedSettings = await this.#settings.get(tenant.id);
    const { user, wait } = await store.read(async (db) => ({
      user: await db.selectFrom('users').selectAll().where('username', '=', username).executeTakeFirst(),
      wait: await loginThrottle.waitSeconds(db, source?.ip, cachedSettings, this.#clock.now()),
    }));
    const actor = claimant(user, username, source);
    const eventType = kind === 'console' ? 'auth.login.failure' : 'auth.token.failure';
    if (wait > 0) {
      // The password is not checked: the address has failed too often (and hashing is the costly part).
      await this.#audit.record(tenant.id, { type: eventType, outcome: 'failure', code: 'rate_limited', actor, resource: user ? { type: 'user', id: user.id, name: user.username } : undefined, details: { reason: 'ip_throttled' } });
      throw new CustosError('rate_limited', 'too many failed sign-ins from this address; try again later', { extensions: { retryAfterSeconds: wait } });
    }
    const matches = await passwordMatches(user?.password_hash, password);
    const now = this.#clock.now();

    const outcome = await store.transaction(async (db) => {
      const fail = async (reason: string) => {
        await loginThrottle.recordFailure(db, source?.ip, now);
        await this.#audit.append(db, tenant.id, { type: eventType, outcome: 'failure', code: 'invalid_credentials', actor, resource: user ? { type: 'user', id: user.id, name: user.username } : undefined, details: { reason } });
        return { ok: false as const };
      };
      if (!user || user.kind !== kind) return fail(user ? 'wrong_user_kind' : 'unknown_user');
      if (user.status !== 'active') return fail('suspended');
      // A tenant that signs its console users in through its SAML IdP may refuse their passwords (API users keep theirs).
      if (kind === 'console') {
        const saml = await readSamlSettings(db);
        if (saml.enabled && !saml.passwordLogin) return fail('password_login_disabled');
      }
      if (!matches) {
        const counted = await this.#countFailure(db, user.id, now);
        if (!counted) return fail('locked');
        await fail('wrong_password');
        if (counted.locked) await this.#onLocked(db, tenant, user, counted.settings, counted.attempts);
        return { ok: false as const };
      }
      // The user as of now, locked until this transaction ends: failures committed while the password was
      // hashed may have locked the account, and those still running wait for this sign-in (and then count
      // from its reset). The row read before hashing decides nothing a success does.
      const current = await this.#lockedUser(db, user.id);
      if (!current) return fail('unknown_user');
      if (current.status !== 'active') return fail('suspended');
      if (isLocked(current, now)) return fail('locked');
      // Changed meanwhile: the password just verified is no longer this user's.
      if (current.password_hash !== user.password_hash) return fail('password_changed');
      if (current.must_change_password === 1 && current.password_expires_at !== null && current.password_expires_at <= now) return fail('temporary_password_expired');
      return { ok: true as const, result: await then(db, current, cachedSettings) };
    });
    if (!outcome.ok) throw new CustosError('invalid_credentials');
    return outcome.result;
  }

  /**
   * The user's row, locked until the caller's transaction ends: `SELECT … FOR
   * UPDATE` where several processes write at once (PostgreSQL); SQLite's
   * write transaction already holds the only write lock. A success checks the
   * lockout on this row, so no failure can commit a lock between that check
   * and the success's commit.
   */
  async #lockedUser(db: Kysely<TenantDB>, userId: string): Promise<UserRow | undefined> {
    const q = db.selectFrom('users').selectAll().where('id', '=', userId);
    return this.#storage.adapter.concurrentWriters ? q.forUpdate().executeTakeFirst() : q.executeTakeFirst();
  }

  /**
   * Counts one failure of the user's password or second factor toward the
   * lockout, in one atomic `UPDATE` under the lockout rules as of this
   * transaction: concurrent failures across processes each add one, and
   * exactly one crosses the threshold. The count is of consecutive failures
   * since the last completed sign-in or the end of the last lock: a lock that
   * has run out starts it over at 1, or a single wrong password would lock
   * the account again for the whole period. `undefined` while the account is
   * locked (nothing is counted).
   */
  async #countFailure(db: Kysely<TenantDB>, userId: string, now: number): Promise<{ attempts: number; locked: boolean; settings: SecuritySettings } | undefined> {
    // Exact rules for a failure; a success uses the settings cached for at most 1 s.
    const settings = await this.#settings.inTx(db);
    const lockValue = settings.lockout.mode === 'admin' ? LOCKED_UNTIL_ADMIN : now + settings.lockout.durationMinutes * 60_000;
    const counted = await db
      .updateTable('users')
      .set((eb) => {
        // The failures before this one: none after a lock that has run out (the only lock the WHERE lets through).
        const before = eb.case().when('locked_until', 'is', null).then(eb.ref('failed_attempts')).else(0).end();
        return {
          failed_attempts: eb(before, '+', 1),
          locked_until: eb.case().when(eb(before, '>=', settings.lockout.threshold - 1)).then(lockValue).else(null).end(),
          updated_at: now,
        };
      })
      .where('id', '=', userId)
      .where((eb) => eb.or([eb('locked_until', 'is', null), eb('locked_until', '<=', now)]))
      .returning(['failed_attempts', 'locked_until'])
      .executeTakeFirst();
    return counted && { attempts: counted.failed_attempts, locked: counted.locked_until !== null, settings };
  }

  /** Records and mails a lockout; `sessionsEnded` when the lock also ended the user's sessions and tokens. */
  async #onLocked(db: Kysely<TenantDB>, tenant: TenantRef, user: UserRow, settings: SecuritySettings, attempts: number, sessionsEnded = false): Promise<void> {
    await this.#audit.append(db, tenant.id, {
      type: 'auth.lockout',
      outcome: 'success',
      actor: { principal: { type: 'system', id: 'custos', name: 'Custos' } },
      resource: { type: 'user', id: user.id, name: user.username },
      details: { failedAttempts: attempts, mode: settings.lockout.mode, minutes: settings.lockout.mode === 'duration' ? settings.lockout.durationMinutes : null, sessionsEnded },
    });
    await this.#mail.enqueue(db, tenant.id, {
      kind: 'auth.lockout',
      to: user.email,
      subject: 'Your Custos account is locked',
      text: [
        `Your account ${user.username} on ${tenant.name} was locked after ${attempts} failed sign-in attempts.`,
        settings.lockout.mode === 'duration' ? `It unlocks by itself after ${settings.lockout.durationMinutes} minutes.` : 'An Account Administrator must unlock it.',
        ...(sessionsEnded ? ['The last attempts came from a signed-in session or token, so every session and token of the account was ended.'] : []),
        'If these attempts were not yours, tell your administrator.',
      ].join('\n'),
    });
  }

  // --- flows -----------------------------------------------------------------------

  async #challengesFor(db: Kysely<TenantDB>, user: UserRow, settings: SecuritySettings, deviceToken: string | undefined, tenantId: string): Promise<Challenge[]> {
    const pending: Challenge[] = [];
    if (user.kind === 'console') {
      const device = parseCredential(deviceToken);
      const known =
        device !== null &&
        device.tenantId === tenantId &&
        (await db
          .selectFrom('devices')
          .select('id_hash')
          .where('id_hash', '=', hashSecret(device.secret))
          .where('user_id', '=', user.id)
          .where('expires_at', '>', this.#clock.now())
          .executeTakeFirst()) !== undefined;
      if (!known) pending.push('device_verification_required');
    }
    if (user.must_change_password === 1) pending.push('password_change_required');
    if (user.kind === 'console' && ((await this.#mfa.isEnrolled(db, user.id)) || (await this.#mfaRequired(db, user, settings)))) pending.push('mfa_required');
    return pending;
  }

  async #mfaRequired(db: Kysely<TenantDB>, user: UserRow, settings: SecuritySettings): Promise<boolean> {
    if (settings.mfa.required === 'all') return true;
    if (settings.mfa.required === 'none') return false;
    const roles = (await db.selectFrom('user_roles').select('role').where('user_id', '=', user.id).execute()).map((r) => r.role);
    return roles.some((r) => settings.mfa.roles.includes(r));
  }

  /** Continues a sign-in: either the next challenge (creating or updating its flow) or a session. */
  async #advance(db: Kysely<TenantDB>, tenant: TenantRef, user: UserRow, pending: Challenge[], flow: { idHash: Buffer; token: string } | undefined, source: Source | undefined, authMethod: 'password' | 'certificate' | 'saml'): Promise<SignInResult> {
    const now = this.#clock.now();
    if (pending.length === 0) {
      if (flow) await db.deleteFrom('login_flows').where('id_hash', '=', flow.idHash).execute();
      // Only a completed password sign-in (every factor passed) resets the failure count: a
      // certificate sign-in proves nothing about the password someone may be guessing. Password
      // sign-ins hold the user's row lock and saw it unlocked; the condition keeps any success from
      // clearing a lock it did not see, and refuses the session instead.
      const signedIn = await db
        .updateTable('users')
        .set(authMethod === 'password' ? { last_login_at: now, failed_attempts: 0, locked_until: null } : { last_login_at: now })
        .where('id', '=', user.id)
        .where((eb) => eb.or([eb('locked_until', 'is', null), eb('locked_until', '<=', now)]))
        .executeTakeFirst();
      if (Number(signedIn.numUpdatedRows) !== 1) throw new CustosError('invalid_credentials');
      const session = await this.#sessions.issue(db, tenant.id, user, { authMethod, source });
      await this.#audit.append(db, tenant.id, {
        type: user.kind === 'console' ? 'auth.login.success' : 'auth.token.issue',
        outcome: 'success',
        actor: { principal: { type: user.kind === 'console' ? 'user' : 'api-user', id: user.id, name: user.username }, source: { ...source, sessionId: session.sessionId } },
        resource: { type: 'user', id: user.id, name: user.username },
        details: { method: authMethod },
      });
      return { status: 'ok', session, user: { id: user.id, username: user.username, kind: user.kind } };
    }
    let f = flow;
    if (!f) {
      const c = newCredential(tenant.id);
      f = { idHash: c.hash, token: c.token };
      await db
        .insertInto('login_flows')
        .values({ id_hash: f.idHash, user_id: user.id, pending: JSON.stringify(pending), code_hash: null, code_expires_at: null, code_attempts: 0, created_at: now, expires_at: now + FLOW_MAX_MS, auth_method: authMethod === 'saml' ? 'saml' : null })
        .execute();
    } else {
      await db.updateTable('login_flows').set({ pending: JSON.stringify(pending) }).where('id_hash', '=', f.idHash).execute();
    }
    const challenge = pending[0]!;
    const result: SignInResult = { status: 'challenge', challenge, flowToken: f.token };
    if (challenge === 'device_verification_required') await this.#sendDeviceCode(db, tenant, user, f.idHash);
    if (challenge === 'mfa_required' && !(await this.#mfa.isEnrolled(db, user.id))) {
      result.mfaEnrollment = await this.#mfa.beginEnrollment(db, tenant.id, user.id, `${tenant.name}:${user.username}`);
    }
    return result;
  }

  async #sendDeviceCode(db: Kysely<TenantDB>, tenant: TenantRef, user: UserRow, flowHash: Buffer): Promise<void> {
    const code = String(randomInt(0, 1_000_000)).padStart(6, '0');
    const now = this.#clock.now();
    await db.updateTable('login_flows').set({ code_hash: codeHash(flowHash, code), code_expires_at: now + DEVICE_CODE_MS, code_attempts: 0 }).where('id_hash', '=', flowHash).execute();
    await this.#mail.enqueue(db, tenant.id, {
      kind: 'auth.device-code',
      to: user.email,
      subject: 'Your Custos verification code',
      text: `Someone is signing in to ${tenant.name} as ${user.username} from a device we do not know.\n\nVerification code: ${code}\n\nIt is valid for 10 minutes. If this is not you, do not share the code and change your password.`,
    });
  }

  /** Loads an unexpired flow expecting `challenge` next; `invalid_code` otherwise. */
  async #flow(db: Kysely<TenantDB>, tenant: TenantRef, flowToken: unknown, challenge: Challenge): Promise<Flow> {
    const cred = parseCredential(flowToken);
    if (!cred || cred.tenantId !== tenant.id) throw new CustosError('invalid_code');
    const idHash = hashSecret(cred.secret);
    const row = await db.selectFrom('login_flows').selectAll().where('id_hash', '=', idHash).executeTakeFirst();
    if (!row || row.expires_at <= this.#clock.now()) throw new CustosError('invalid_code', 'the sign-in has expired; start again');
    const pending = JSON.parse(row.pending) as Challenge[];
    if (pending[0] !== challenge) throw new CustosError('invalid_code', `this sign-in expects ${pending[0] ?? 'nothing'} next`);
    // Locked until the transaction ends: what it decides (a session, a used code) holds when it commits.
    const user = await this.#lockedUser(db, row.user_id);
    if (!user || user.status !== 'active' || isLocked(user, this.#clock.now())) {
      await db.deleteFrom('login_flows').where('id_hash', '=', idHash).execute();
      throw new CustosError('invalid_code', 'the sign-in cannot continue');
    }
    return { idHash, user, pending, method: row.auth_method === 'saml' ? 'saml' : 'password' };
  }

  // --- public operations ------------------------------------------------------------

  /** `POST /auth/login`: console sign-in with username and password. */
  async login(tenant: TenantRef, input: { username: string; password: string; deviceToken?: string; source?: Source }): Promise<SignInResult> {
    return this.#firstFactor(tenant, 'console', input.username, input.password, input.source, async (db, user, settings) =>
      this.#advance(db, tenant, user, await this.#challengesFor(db, user, settings, input.deviceToken, tenant.id), undefined, input.source, 'password'),
    );
  }

  /** `POST /auth/token`: an API user's bearer token, by username and password. */
  async issueToken(tenant: TenantRef, input: { username: string; password: string; source?: Source }): Promise<SignInResult> {
    return this.#firstFactor(tenant, 'api', input.username, input.password, input.source, async (db, user, settings) =>
      this.#advance(db, tenant, user, await this.#challengesFor(db, user, settings, undefined, tenant.id), undefined, input.source, 'password'),
    );
  }

  /** Issues a token to an API user already authenticated by its client certificate (checked by the caller). */
  async issueTokenForCertificate(db: Kysely<TenantDB>, tenant: TenantRef, user: UserRow, source: Source | undefined): Promise<SignInResult> {
    return this.#advance(db, tenant, user, [], undefined, source, 'certificate');
  }

  /**
   * Signs in the console user a verified SAML assertion names, by email
   * (case-insensitive): exactly one active console user of the tenant must
   * have it; no user is created. The IdP's authentication stands for the
   * password and the new-device code, and the session ends like a completed
   * password sign-in (`auth.login.success`, method `saml`). Custos MFA still
   * applies: a user enrolled in MFA, or whom the tenant's policy requires to
   * use it, gets the `mfa_required` challenge (enrolling if needed), answered
   * at `/auth/mfa/verify` like after a password, and the session then carries
   * method `saml`. Locked accounts stay locked; a SAML sign-in does not reset
   * the password failure count. Every refusal is `invalid_credentials`,
   * recorded as `auth.login.failure` with its reason.
   */
  async signInWithSaml(tenant: TenantRef, input: { email: string; source?: Source }): Promise<SignInResult> {
    const email = input.email.trim().toLowerCase();
    const outcome = await this.#storage.tenant(tenant.id).transaction(async (db) => {
      const all = await db.selectFrom('users').selectAll().where((eb) => eb(eb.fn('lower', ['email']), '=', email)).execute();
      const consoles = all.filter((u) => u.kind === 'console');
      const active = consoles.filter((u) => u.status === 'active');
      const user = active.length === 1 ? active[0] : (consoles[0] ?? all[0]);
      const fail = async (reason: string) => {
        await this.#audit.append(db, tenant.id, {
          type: 'auth.login.failure',
          outcome: 'failure',
          code: 'invalid_credentials',
          actor: claimant(user, user?.username ?? email, input.source),
          resource: user ? { type: 'user', id: user.id, name: user.username } : undefined,
          details: { reason, method: 'saml' },
        });
        return { ok: false as const };
      };
      if (consoles.length === 0) return fail(all.length > 0 ? 'wrong_user_kind' : 'unknown_user');
      if (active.length > 1) return fail('ambiguous_email');
      if (active.length === 0) return fail('suspended');
      const current = await this.#lockedUser(db, active[0]!.id);
      if (!current || current.kind !== 'console') return fail('unknown_user');
      if (current.status !== 'active') return fail('suspended');
      if (isLocked(current, this.#clock.now())) return fail('locked');
      // The IdP's authentication stands for the password and the new-device code; Custos MFA still applies.
      const mfa = (await this.#mfa.isEnrolled(db, current.id)) || (await this.#mfaRequired(db, current, await this.#settings.inTx(db)));
      return { ok: true as const, result: await this.#advance(db, tenant, current, mfa ? ['mfa_required'] : [], undefined, input.source, 'saml') };
    });
    if (!outcome.ok) throw new CustosError('invalid_credentials');
    return outcome.result;
  }

  /** `POST /auth/device/verify`: the 6-digit code mailed for an unknown device. Trusts the device on success. */
  async verifyDevice(tenant: TenantRef, input: { flowToken: string; code: string; source?: Source }): Promise<SignInResult> {
    const store = this.#storage.tenant(tenant.id);
    const result = await store.transaction(async (db) => {
      const flow = await this.#flow(db, tenant, input.flowToken, 'device_verification_required');
      // Read again after the user's lock: a concurrent submission may have used the code or ended the flow.
      const row = await db.selectFrom('login_flows').selectAll().where('id_hash', '=', flow.idHash).executeTakeFirst();
      if (!row) return { error: true as const };
      const now = this.#clock.now();
      const good =
        typeof input.code === 'string' &&
        /^\d{6}$/.test(input.code) &&
        row.code_hash !== null &&
        row.code_expires_at !== null &&
        row.code_expires_at > now &&
        row.code_attempts < DEVICE_CODE_TRIES &&
        codeHash(flow.idHash, input.code).equals(row.code_hash);
      const actor = claimant(flow.user, flow.user.username, input.source);
      const resource = { type: 'user', id: flow.user.id, name: flow.user.username };
      if (!good) {
        // Atomic, whatever was read: concurrent wrong codes each take one of the tries, and none past the last.
        const counted = await db
          .updateTable('login_flows')
          .set((eb) => ({ code_attempts: eb('code_attempts', '+', 1) }))
          .where('id_hash', '=', flow.idHash)
          .where('code_attempts', '<', DEVICE_CODE_TRIES)
          .returning('code_attempts')
          .executeTakeFirst();
        if (!counted || counted.code_attempts >= DEVICE_CODE_TRIES) await db.deleteFrom('login_flows').where('id_hash', '=', flow.idHash).execute();
        if (counted) await this.#audit.append(db, tenant.id, { type: 'auth.device.verify', outcome: 'failure', code: 'invalid_code', actor, resource, details: { attempts: counted.code_attempts } });
        return { error: true as const };
      }
      // Single use, whatever was read: only the submission that clears this code goes on.
      const used = await db
        .updateTable('login_flows')
        .set({ code_hash: null, code_expires_at: null })
        .where('id_hash', '=', flow.idHash)
        .where('code_hash', '=', row.code_hash)
        .where('code_attempts', '<', DEVICE_CODE_TRIES)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) return { error: true as const };
      const device = newCredential(tenant.id);
      await db.insertInto('devices').values({ id_hash: device.hash, user_id: flow.user.id, created_at: now, last_used_at: now, expires_at: now + DEVICE_MAX_MS, user_agent: input.source?.userAgent?.slice(0, 300) ?? null }).execute();
      await this.#audit.append(db, tenant.id, { type: 'auth.device.verify', outcome: 'success', actor, resource });
      const next = await this.#advance(db, tenant, flow.user, flow.pending.slice(1), { idHash: flow.idHash, token: input.flowToken }, input.source, flow.method);
      return { error: false as const, result: { ...next, deviceToken: device.token } };
    });
    if (result.error) throw new CustosError('invalid_code');
    return result.result;
  }

  /** `POST /auth/password/change` during sign-in (temporary password): needs the current password too. */
  async changePasswordInFlow(tenant: TenantRef, input: { flowToken: string; currentPassword: string; newPassword: string; source?: Source }): Promise<SignInResult> {
    const store = this.#storage.tenant(tenant.id);
    const { user } = await store.transaction(async (db) => this.#flow(db, tenant, input.flowToken, 'password_change_required'));
    if (!(await passwordMatches(user.password_hash, input.currentPassword))) {
      await this.#audit.record(tenant.id, { type: 'iam.password.change', outcome: 'failure', code: 'invalid_credentials', actor: claimant(user, user.username, input.source), resource: { type: 'user', id: user.id, name: user.username } });
      throw new CustosError('invalid_credentials');
    }
    const newHash = await this.#checkNewPassword(tenant.id, user, input.newPassword);
    return store.transaction(async (db) => {
      const flow = await this.#flow(db, tenant, input.flowToken, 'password_change_required');
      await this.#setPassword(db, tenant.id, flow.user, newHash, claimant(flow.user, flow.user.username, input.source), 'iam.password.change');
      return this.#advance(db, tenant, { ...flow.user, must_change_password: 0 }, flow.pending.slice(1), { idHash: flow.idHash, token: input.flowToken }, input.source, flow.method);
    });
  }

  /** `POST /auth/mfa/verify`: a TOTP code (confirming an enrollment if one is pending) or a recovery code. */
  async verifyMfa(tenant: TenantRef, input: { flowToken: string; code?: string; recoveryCode?: string; source?: Source }): Promise<SignInResult> {
    const store = this.#storage.tenant(tenant.id);
    const result = await store.transaction(async (db) => {
      const flow = await this.#flow(db, tenant, input.flowToken, 'mfa_required');
      const actor = claimant(flow.user, flow.user.username, input.source);
      const resource = { type: 'user', id: flow.user.id, name: flow.user.username };
      const enrolled = await this.#mfa.isEnrolled(db, flow.user.id);
      let recoveryCodes: string[] | undefined;
      let ok = false;
      let method = 'totp';
      if (!enrolled) {
        if (typeof input.code === 'string') {
          const codes = await this.#mfa.confirmEnrollment(db, tenant.id, flow.user.id, input.code);
          if (codes) {
            ok = true;
            recoveryCodes = codes;
            await this.#audit.append(db, tenant.id, { type: 'iam.mfa.enroll', outcome: 'success', actor, resource });
          }
        }
      } else if (typeof input.recoveryCode === 'string') {
        ok = await this.#mfa.useRecoveryCode(db, flow.user.id, input.recoveryCode);
        method = 'recovery-code';
      } else if (typeof input.code === 'string') {
        ok = await this.#mfa.verifyTotp(db, tenant.id, flow.user.id, input.code);
      }
      if (!ok) {
        await this.#audit.append(db, tenant.id, { type: 'auth.mfa.verify', outcome: 'failure', code: 'invalid_code', actor, resource, details: { method } });
        return { error: true as const };
      }
      await this.#audit.append(db, tenant.id, { type: 'auth.mfa.verify', outcome: 'success', actor, resource, details: { method } });
      const next = await this.#advance(db, tenant, flow.user, flow.pending.slice(1), { idHash: flow.idHash, token: input.flowToken }, input.source, flow.method);
      return { error: false as const, result: next.status === 'ok' && recoveryCodes ? { ...next, recoveryCodes } : next };
    });
    if (result.error) {
      // A wrong second factor counts toward lockout like a wrong password.
      await this.#countSecondFactorFailure(tenant, input.flowToken);
      throw new CustosError('invalid_code');
    }
    return result.result;
  }

  async #countSecondFactorFailure(tenant: TenantRef, flowToken: string): Promise<void> {
    const cred = parseCredential(flowToken);
    if (!cred) return;
    await this.#storage.tenant(tenant.id).transaction(async (db) => {
      const row = await db.selectFrom('login_flows').select('user_id').where('id_hash', '=', hashSecret(cred.secret)).executeTakeFirst();
      if (!row) return;
      const counted = await this.#countFailure(db, row.user_id, this.#clock.now());
      if (counted?.locked) {
        const user = await db.selectFrom('users').selectAll().where('id', '=', row.user_id).executeTakeFirstOrThrow();
        await db.deleteFrom('login_flows').where('user_id', '=', row.user_id).execute();
        await this.#onLocked(db, tenant, user, counted.settings, counted.attempts);
      }
    });
  }

  // --- re-authentication ----------------------------------------------------------------

  /**
   * Checks a signed-in user's current password before a change to their own
   * account (password, sessions, MFA). A wrong password counts toward the
   * lockout exactly as a failed sign-in does (the same counter and rules,
   * the same mail and `auth.lockout` event), or a stolen session or token
   * would be an unlimited password oracle; the lock it completes ends every
   * session and token of the user, as suspension does, the stolen one
   * included. While the account is locked the correct password is refused
   * too. Every refusal is the same `invalid_credentials`, recorded as a
   * failure of `eventType` with its reason. Returns the user as read before
   * the verification: the change itself runs in {@link #whileUnlocked}.
   */
  async #verifyCurrentPassword(auth: AuthContext, password: string, eventType: string): Promise<UserRow> {
    const store = this.#storage.tenant(auth.tenantId);
    const user = await store.read((db) => db.selectFrom('users').selectAll().where('id', '=', auth.userId).executeTakeFirst());
    const matches = await passwordMatches(user?.password_hash, password);
    const now = this.#clock.now();
    if (user && matches && !isLocked(user, now)) return user;
    const counts = user !== undefined && user.password_hash !== null && !matches;
    // The lock mail names the tenant; a signed-in context carries only its id.
    const tenant = counts ? await this.#storage.control.selectFrom('tenants').select(['id', 'name']).where('id', '=', auth.tenantId).executeTakeFirst() : undefined;
    await store.transaction(async (db) => {
      const refuse = async (reason: string) => {
        await this.#audit.append(db, auth.tenantId, { type: eventType, outcome: 'failure', code: 'invalid_credentials', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username }, details: { reason } });
      };
      if (!user) return refuse('unknown_user');
      if (!counts) return refuse(matches ? 'locked' : 'no_password');
      const counted = await this.#countFailure(db, user.id, now);
      if (!counted) return refuse('locked');
      await refuse('wrong_password');
      if (counted.locked) {
        await this.#sessions.endForUser(db, user.id);
        await db.deleteFrom('login_flows').where('user_id', '=', user.id).execute();
        await this.#onLocked(db, tenant ?? { id: auth.tenantId, name: auth.tenantId }, user, counted.settings, counted.attempts, true);
      }
    });
    throw new CustosError('invalid_credentials');
  }

  /**
   * Runs a re-authenticated change in a write transaction that holds the
   * user's row lock, if the account is still unlocked and the password
   * verified is still the user's: failures committed while it was hashed may
   * have locked the account. Refused with the same `invalid_credentials`.
   */
  async #whileUnlocked<T>(auth: AuthContext, verified: UserRow, eventType: string, fn: (db: Kysely<TenantDB>, user: UserRow) => Promise<T>): Promise<T> {
    const outcome = await this.#storage.tenant(auth.tenantId).transaction(async (db) => {
      const current = await this.#lockedUser(db, auth.userId);
      if (!current || isLocked(current, this.#clock.now())) return { ok: false as const, reason: 'locked' };
      if (current.password_hash !== verified.password_hash) return { ok: false as const, reason: 'password_changed' };
      return { ok: true as const, result: await fn(db, current) };
    });
    if (!outcome.ok) {
      await this.#audit.record(auth.tenantId, { type: eventType, outcome: 'failure', code: 'invalid_credentials', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username }, details: { reason: outcome.reason } });
      throw new CustosError('invalid_credentials');
    }
    return outcome.result;
  }

  /**
   * Runs `fn` in a write transaction if `password` is the signed-in user's
   * current password and the account is unlocked when it commits; a wrong
   * password counts toward the lockout ({@link #verifyCurrentPassword}). For
   * changes to the user's own account that need the password again (MFA
   * enrollment and removal, new recovery codes); `eventType` names the change
   * in the activity stream's failure events.
   */
  async reauthenticated<T>(auth: AuthContext, password: string, eventType: string, fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    const user = await this.#verifyCurrentPassword(auth, password, eventType);
    return this.#whileUnlocked(auth, user, eventType, (db) => fn(db));
  }

  // --- passwords ----------------------------------------------------------------------

  /** Policy and history checks; returns the argon2id hash of the accepted password. */
  async #checkNewPassword(tenantId: string, user: UserRow, newPassword: unknown): Promise<string> {
    const settings = await this.#settings.get(tenantId);
    const password = checkPassword(newPassword, settings.password, user.username);
    const history = await this.#storage.tenant(tenantId).transaction((db) =>
      db.selectFrom('password_history').select('password_hash').where('user_id', '=', user.id).orderBy('id', 'desc').limit(settings.password.historySize).execute(),
    );
    const previous = [...(user.password_hash && settings.password.historySize > 0 ? [user.password_hash] : []), ...history.map((h) => h.password_hash)];
    for (const h of previous) {
      if (await verifyPassword(h, password)) {
        throw new CustosError('password_rejected', `the password must differ from the last ${settings.password.historySize} passwords`, { extensions: { reasons: ['was used recently'] } });
      }
    }
    return hashPassword(password);
  }

  async #setPassword(db: Kysely<TenantDB>, tenantId: string, user: UserRow, newHash: string, actor: Actor, eventType: string): Promise<void> {
    const now = this.#clock.now();
    if (user.password_hash) await db.insertInto('password_history').values({ id: newId(now), user_id: user.id, password_hash: user.password_hash, created_at: now }).execute();
    await db.updateTable('users').set({ password_hash: newHash, must_change_password: 0, password_expires_at: null, password_changed_at: now, updated_at: now }).where('id', '=', user.id).execute();
    // Keep at most 24 old passwords (the largest history setting).
    const oldest = await db.selectFrom('password_history').select('id').where('user_id', '=', user.id).orderBy('id', 'desc').limit(1).offset(24).executeTakeFirst();
    if (oldest) await db.deleteFrom('password_history').where('user_id', '=', user.id).where('id', '<=', oldest.id).execute();
    await this.#audit.append(db, tenantId, { type: eventType, outcome: 'success', actor, resource: { type: 'user', id: user.id, name: user.username } });
  }

  /**
   * A signed-in user changes their password: the current one is required.
   * Other sessions end when `endOtherSessions` is set (offered after any
   * change of an authentication factor).
   */
  async changePassword(auth: AuthContext, input: { currentPassword: string; newPassword: string; endOtherSessions?: boolean }): Promise<{ endedSessions: number }> {
    const user = await this.#verifyCurrentPassword(auth, input.currentPassword, 'iam.password.change');
    const newHash = await this.#checkNewPassword(auth.tenantId, user, input.newPassword);
    return this.#whileUnlocked(auth, user, 'iam.password.change', async (db, current) => {
      await this.#setPassword(db, auth.tenantId, current, newHash, auth, 'iam.password.change');
      const ended = input.endOtherSessions ? await this.#sessions.endForUser(db, current.id, { except: auth.credentialPublicId }) : 0;
      return { endedSessions: ended };
    });
  }

  /** `POST /auth/password/forgot`: mails a reset link if the user exists; the caller always answers 202. */
  async forgotPassword(tenant: TenantRef, input: { username: string; source?: Source }): Promise<void> {
    await this.#storage.tenant(tenant.id).transaction(async (db) => {
      const user = await db.selectFrom('users').selectAll().where('username', '=', input.username).executeTakeFirst();
      const actor = claimant(user, input.username, input.source);
      if (!user || user.kind !== 'console' || user.status !== 'active') {
        await this.#audit.append(db, tenant.id, { type: 'auth.password.reset.request', outcome: 'failure', code: 'not_found', actor });
        return;
      }
      await this.#sendResetLink(db, tenant, user, actor);
    });
  }

  /** Mails a single-use reset link valid 2 hours (also what an administrator's "reset password" does). */
  async sendResetLink(db: Kysely<TenantDB>, tenant: TenantRef, userId: string, actor: Actor): Promise<void> {
    const user = await db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirst();
    if (!user) throw new CustosError('not_found');
    if (user.kind !== 'console') throw new CustosError('conflict', 'API users have no password reset by mail');
    await this.#sendResetLink(db, tenant, user, actor);
  }

  async #sendResetLink(db: Kysely<TenantDB>, tenant: TenantRef, user: UserRow, actor: Actor): Promise<void> {
    const now = this.#clock.now();
    const { token, hash } = newCredential(tenant.id);
    await db.insertInto('password_resets').values({ token_hash: hash, user_id: user.id, created_at: now, expires_at: now + RESET_LINK_MS, used_at: null }).execute();
    const link = `${this.#publicUrl}/reset-password?tenant=${encodeURIComponent(tenant.name)}&token=${encodeURIComponent(token)}`;
    await this.#mail.enqueue(db, tenant.id, {
      kind: 'auth.password-reset',
      to: user.email,
      subject: 'Reset your Custos password',
      text: `A password reset was requested for ${user.username} on ${tenant.name}.\n\nChoose a new password here (the link works once and expires at ${rfc3339(now + RESET_LINK_MS)}):\n${link}\n\nIf you did not ask for this, ignore this message.`,
    });
    await this.#audit.append(db, tenant.id, { type: 'auth.password.reset.request', outcome: 'success', actor, resource: { type: 'user', id: user.id, name: user.username } });
  }

  /**
   * `POST /auth/password/reset`: sets a new password with a reset link. The
   * link works once; every session of the user ends. It signs nobody in: the
   * next sign-in still passes device verification and MFA.
   */
  async resetPassword(tenant: TenantRef, input: { token: string; newPassword: string; source?: Source }): Promise<void> {
    const cred = parseCredential(input.token);
    if (!cred || cred.tenantId !== tenant.id) throw new CustosError('invalid_code');
    const hash = hashSecret(cred.secret);
    const store = this.#storage.tenant(tenant.id);
    const found = await store.transaction(async (db) => {
      const r = await db.selectFrom('password_resets').selectAll().where('token_hash', '=', hash).executeTakeFirst();
      if (!r || r.used_at !== null || r.expires_at <= this.#clock.now()) return undefined;
      return db.selectFrom('users').selectAll().where('id', '=', r.user_id).executeTakeFirst();
    });
    if (!found || found.status !== 'active') throw new CustosError('invalid_code', 'the reset link is invalid, used or expired');
    const newHash = await this.#checkNewPassword(tenant.id, found, input.newPassword);
    await store.transaction(async (db) => {
      const used = await db.updateTable('password_resets').set({ used_at: this.#clock.now() }).where('token_hash', '=', hash).where('used_at', 'is', null).executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) throw new CustosError('invalid_code', 'the reset link is invalid, used or expired');
      await db.updateTable('password_resets').set({ used_at: this.#clock.now() }).where('user_id', '=', found.id).where('used_at', 'is', null).execute();
      await this.#setPassword(db, tenant.id, found, newHash, claimant(found, found.username, input.source), 'auth.password.reset');
      await this.#sessions.endForUser(db, found.id);
    });
  }

  /** Ends the caller's own session (sign out). */
  async logout(auth: AuthContext): Promise<void> {
    await this.#storage.tenant(auth.tenantId).transaction(async (db) => {
      await this.#sessions.endForUser(db, auth.userId, { only: auth.credentialPublicId });
      await this.#audit.append(db, auth.tenantId, { type: 'auth.logout', outcome: 'success', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username } });
    });
  }

  /**
   * Ends the caller's other sessions, or one of them: re-authentication with
   * the current password is required first.
   */
  async endSessions(auth: AuthContext, input: { password: string; sessionId?: string }): Promise<{ ended: number }> {
    const user = await this.#verifyCurrentPassword(auth, input.password, 'auth.sessions.end');
    return this.#whileUnlocked(auth, user, 'auth.sessions.end', async (db) => {
      const ended = input.sessionId ? await this.#sessions.endForUser(db, auth.userId, { only: input.sessionId, except: auth.credentialPublicId }) : await this.#sessions.endForUser(db, auth.userId, { except: auth.credentialPublicId });
      if (input.sessionId && ended === 0) throw new CustosError('not_found');
      await this.#audit.append(db, auth.tenantId, { type: 'auth.sessions.end', outcome: 'success', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username }, details: { ended } });
      return { ended };
    });
  }
}
