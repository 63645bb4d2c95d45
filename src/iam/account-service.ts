import type { Kysely } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { AuthContext } from './authorize.js';
import type { LoginService } from './login-service.js';
import type { Mfa } from './mfa.js';
import type { SessionService } from './session-service.js';

export interface MeView {
  id: string;
  username: string;
  email: string;
  fullName: string | null;
  kind: 'console' | 'api';
  tenant: string;
  roles: string[];
  permissions: string[];
  mfa: { enrolled: boolean; recoveryCodesLeft: number };
  via: 'session' | 'token';
  sessionId: string;
  lastLoginAt: string | null;
}

/** What signed-in users do to their own account: their profile, MFA enrollment, sessions. */
export class AccountService {
  readonly #storage: Storage;
  readonly #audit: AuditService;
  readonly #mfa: Mfa;
  readonly #sessions: SessionService;
  readonly #login: LoginService;

  /**
   * `login` checks re-entered passwords: a wrong one counts toward the
   * account's lockout (a stolen session must not guess the password without
   * limit), and a locked account is refused.
   */
  constructor(deps: { storage: Storage; audit: AuditService; mfa: Mfa; sessions: SessionService; login: LoginService }) {
    this.#storage = deps.storage;
    this.#audit = deps.audit;
    this.#mfa = deps.mfa;
    this.#sessions = deps.sessions;
    this.#login = deps.login;
  }

  async me(auth: AuthContext, tenantName: string): Promise<MeView> {
    return this.#storage.tenant(auth.tenantId).read(async (db) => {
      const u = await db.selectFrom('users').select(['id', 'username', 'email', 'full_name', 'kind', 'last_login_at']).where('id', '=', auth.userId).executeTakeFirstOrThrow();
      const enrolled = auth.kind === 'console' && (await this.#mfa.isEnrolled(db, auth.userId));
      return {
        id: u.id,
        username: u.username,
        email: u.email,
        fullName: u.full_name,
        kind: u.kind,
        tenant: tenantName,
        roles: [...auth.roles],
        permissions: [...auth.permissions].sort(),
        mfa: { enrolled, recoveryCodesLeft: enrolled ? await this.#mfa.remainingRecoveryCodes(db, auth.userId) : 0 },
        via: auth.via,
        sessionId: auth.credentialPublicId,
        lastLoginAt: u.last_login_at === null ? null : rfc3339(u.last_login_at),
      };
    });
  }

  /** Runs `fn` in a write transaction once `password` is confirmed as the user's current one (see the constructor). */
  #reauthenticated<T>(auth: AuthContext, password: string, eventType: string, fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    return this.#login.reauthenticated(auth, password, eventType, fn);
  }

  /** Starts TOTP enrollment (or replaces an unconfirmed one). Re-authentication is required when MFA is already on. */
  async beginTotp(auth: AuthContext, tenantName: string, password: string): Promise<{ secret: string; otpauthUri: string }> {
    if (auth.kind !== 'console') throw new CustosError('forbidden', 'MFA is for console users');
    return this.#reauthenticated(auth, password, 'iam.mfa.enroll', async (db) => {
      if (await this.#mfa.isEnrolled(db, auth.userId)) throw new CustosError('conflict', 'MFA is already enabled; disable it first to enroll a new authenticator');
      return this.#mfa.beginEnrollment(db, auth.tenantId, auth.userId, `${tenantName}:${auth.username}`);
    });
  }

  /** Confirms the enrollment with a first code; returns the recovery codes; optionally ends the user's other sessions. */
  async confirmTotp(auth: AuthContext, code: string, endOtherSessions: boolean): Promise<{ recoveryCodes: string[]; endedSessions: number }> {
    return this.#storage.tenant(auth.tenantId).transaction(async (db) => {
      if (await this.#mfa.isEnrolled(db, auth.userId)) throw new CustosError('conflict', 'MFA is already enabled');
      const codes = await this.#mfa.confirmEnrollment(db, auth.tenantId, auth.userId, code);
      if (!codes) throw new CustosError('invalid_code');
      const ended = endOtherSessions ? await this.#sessions.endForUser(db, auth.userId, { except: auth.credentialPublicId }) : 0;
      await this.#audit.append(db, auth.tenantId, { type: 'iam.mfa.enroll', outcome: 'success', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username }, details: { endedSessions: ended } });
      return { recoveryCodes: codes, endedSessions: ended };
    });
  }

  async disableMfa(auth: AuthContext, password: string, endOtherSessions: boolean): Promise<{ endedSessions: number }> {
    return this.#reauthenticated(auth, password, 'iam.mfa.disable', async (db) => {
      await this.#mfa.disable(db, auth.userId);
      const ended = endOtherSessions ? await this.#sessions.endForUser(db, auth.userId, { except: auth.credentialPublicId }) : 0;
      await this.#audit.append(db, auth.tenantId, { type: 'iam.mfa.disable', outcome: 'success', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username } });
      return { endedSessions: ended };
    });
  }

  async regenerateRecoveryCodes(auth: AuthContext, password: string): Promise<string[]> {
    return this.#reauthenticated(auth, password, 'iam.mfa.recovery-codes', async (db) => {
      if (!(await this.#mfa.isEnrolled(db, auth.userId))) throw new CustosError('conflict', 'MFA is not enabled');
      const codes = await this.#mfa.newRecoveryCodes(db, auth.userId);
      await this.#audit.append(db, auth.tenantId, { type: 'iam.mfa.recovery-codes', outcome: 'success', actor: auth, resource: { type: 'user', id: auth.userId, name: auth.username } });
      return codes;
    });
  }
}
