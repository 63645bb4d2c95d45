import type { Kysely, Selectable } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId, temporaryPassword } from '../core/ids.js';
import { checkEmail } from '../core/validation.js';
import { hashPassword } from '../crypto/password-hash.js';
import type { MailService } from '../notify/mail-service.js';
import type { TenantDB, UsersTable } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { authorize, type AuthContext } from './authorize.js';
import { LOCKED_UNTIL_ADMIN } from './credentials.js';
import { TEMPORARY_PASSWORD_TTL_MS } from './initial-admin.js';
import type { LoginService, TenantRef } from './login-service.js';
import type { Mfa } from './mfa.js';
import { isBuiltinRole, type Permission } from './permissions.js';
import { permissionsOf } from './session-service.js';
import type { SessionService } from './session-service.js';

export interface UserView {
  id: string;
  username: string;
  email: string;
  fullName: string | null;
  kind: 'console' | 'api';
  status: 'active' | 'suspended';
  locked: boolean;
  lockedUntil: string | null;
  mustChangePassword: boolean;
  roles: string[];
  orgIds: string[];
  lastLoginAt: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface CreateUserInput {
  username: string;
  email: string;
  fullName?: string;
  kind?: 'console' | 'api';
  roles?: string[];
  orgIds?: string[];
}

const USERNAME = /^[A-Za-z0-9][A-Za-z0-9._@+-]{1,99}$/;

/** The permissions `roles` give that the actor does not hold (empty: nothing beyond the actor's own). */
async function permissionsBeyond(db: Kysely<TenantDB>, auth: AuthContext, roles: readonly string[]): Promise<Permission[]> {
  const granted = await permissionsOf(db, roles);
  return [...granted].filter((p: Permission) => !auth.permissions.has(p));
}

/**
 * Least privilege on the target: an administrator may act on another user
 * only if that user's roles give no permission the administrator lacks.
 * Changing such a user's email (then resetting its password), registering a
 * client certificate for it, unlocking, suspending or reactivating it would
 * act with, or take over, permissions the administrator could not hold; so it
 * is refused like granting them (403 `forbidden`). Acting on oneself is not
 * this check's business (self-service has its own routes and rules). Call it
 * inside the operation's transaction, after the target's reachability check
 * (users out of reach stay 404).
 */
export async function checkTargetWithinActor(db: Kysely<TenantDB>, auth: AuthContext, userId: string, action: string): Promise<void> {
  if (userId === auth.userId) return;
  const roles = (await db.selectFrom('user_roles').select('role').where('user_id', '=', userId).execute()).map((r) => r.role);
  const missing = await permissionsBeyond(db, auth, roles);
  if (missing.length > 0) throw new CustosError('forbidden', `cannot ${action} a user holding permissions you do not hold: ${missing.join(', ')}`);
}

/**
 * User administration: what Account Administrators (holders of
 * `users.manage`) do. Every operation authorizes first, records its
 * activity event in the same transaction, and never lets an administrator
 * grant a permission it does not hold itself, nor change, suspend, activate,
 * unlock or reset the password of another user holding one
 * ({@link checkTargetWithinActor}).
 */
export class UserService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #mail: MailService;
  readonly #sessions: SessionService;
  readonly #login: LoginService;
  readonly #mfa: Mfa;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; mail: MailService; sessions: SessionService; login: LoginService; mfa: Mfa }) {
    this.#mfa = deps.mfa;
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#mail = deps.mail;
    this.#sessions = deps.sessions;
    this.#login = deps.login;
  }

  async #view(db: Kysely<TenantDB>, u: Selectable<UsersTable>): Promise<UserView> {
    const roles = (await db.selectFrom('user_roles').select('role').where('user_id', '=', u.id).orderBy('role').execute()).map((r) => r.role);
    const orgIds = (await db.selectFrom('user_orgs').select('org_id').where('user_id', '=', u.id).orderBy('org_id').execute()).map((r) => r.org_id);
    const now = this.#clock.now();
    const locked = u.locked_until !== null && u.locked_until > now;
    return {
      id: u.id,
      username: u.username,
      email: u.email,
      fullName: u.full_name,
      kind: u.kind,
      status: u.status,
      locked,
      lockedUntil: !locked ? null : u.locked_until === LOCKED_UNTIL_ADMIN ? 'until-unlocked' : rfc3339(u.locked_until!),
      mustChangePassword: u.must_change_password === 1,
      roles,
      orgIds,
      lastLoginAt: u.last_login_at === null ? null : rfc3339(u.last_login_at),
      createdAt: rfc3339(u.created_at),
      updatedAt: rfc3339(u.updated_at),
    };
  }

  /** Fails unless every role exists and the actor holds every permission the roles grant (no escalation). */
  async #checkRoles(db: Kysely<TenantDB>, auth: AuthContext, roles: unknown): Promise<string[]> {
    if (!Array.isArray(roles) || roles.length > 20 || roles.some((r) => typeof r !== 'string')) throw new CustosError('validation_failed', 'roles must be a list of role keys or ids');
    const list = [...new Set(roles as string[])];
    for (const r of list) {
      if (!isBuiltinRole(r) && !(await db.selectFrom('roles').select('id').where('id', '=', r).executeTakeFirst())) throw new CustosError('validation_failed', `unknown role ${r}`);
    }
    const missing = await permissionsBeyond(db, auth, list);
    if (missing.length > 0) throw new CustosError('forbidden', `cannot grant permissions you do not hold: ${missing.join(', ')}`);
    return list;
  }

  async #checkOrgs(db: Kysely<TenantDB>, auth: AuthContext, orgIds: unknown): Promise<string[]> {
    if (!Array.isArray(orgIds) || orgIds.length > 50 || orgIds.some((o) => typeof o !== 'string')) throw new CustosError('validation_failed', 'orgIds must be a list of organization ids');
    const list = [...new Set(orgIds as string[])];
    for (const o of list) {
      if (!(await db.selectFrom('orgs').select('id').where('id', '=', o).executeTakeFirst())) throw new CustosError('validation_failed', `unknown organization ${o}`);
      if (auth.reachableOrgs !== null && !auth.reachableOrgs.has(o)) throw new CustosError('forbidden', 'cannot assign an organization outside your own');
    }
    return list;
  }

  /** A user is within the actor's reach: when organizational access is on, one of its organizations (or none) is reachable. */
  async #reachable(db: Kysely<TenantDB>, auth: AuthContext, userId: string): Promise<Selectable<UsersTable>> {
    const u = await db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirst();
    if (!u) throw new CustosError('not_found');
    if (auth.reachableOrgs !== null) {
      const orgs = await db.selectFrom('user_orgs').select('org_id').where('user_id', '=', userId).execute();
      if (orgs.length > 0 && !orgs.some((o) => auth.reachableOrgs!.has(o.org_id))) throw new CustosError('not_found');
    }
    return u;
  }

  /**
   * Creates a console or API user with a random temporary password, mailed to
   * the user, valid 72 hours, to be changed at first sign-in.
   */
  async create(auth: AuthContext, tenant: TenantRef, input: CreateUserInput): Promise<UserView> {
    authorize(auth, 'users.manage');
    if (typeof input.username !== 'string' || !USERNAME.test(input.username)) throw new CustosError('validation_failed', 'username: 2-100 letters, digits and . _ @ + -');
    const email = checkEmail(input.email);
    const kind = input.kind ?? 'console';
    if (kind !== 'console' && kind !== 'api') throw new CustosError('validation_failed', 'kind must be console or api');
    const password = temporaryPassword();
    const passwordHash = await hashPassword(password);
    return this.#storage.tenant(tenant.id).transaction(async (db) => {
      const roles = await this.#checkRoles(db, auth, input.roles ?? []);
      const orgIds = await this.#checkOrgs(db, auth, input.orgIds ?? []);
      if (await db.selectFrom('users').select('id').where('username', '=', input.username).executeTakeFirst()) throw new CustosError('conflict', `a user named ${input.username} exists`);
      const now = this.#clock.now();
      const id = newId(now);
      await db
        .insertInto('users')
        .values({ id, username: input.username, email, full_name: input.fullName?.slice(0, 200) ?? null, kind, status: 'active', password_hash: passwordHash, must_change_password: 1, password_expires_at: now + TEMPORARY_PASSWORD_TTL_MS, created_at: now, updated_at: now })
        .execute();
      if (roles.length > 0) await db.insertInto('user_roles').values(roles.map((role) => ({ user_id: id, role }))).execute();
      if (orgIds.length > 0) await db.insertInto('user_orgs').values(orgIds.map((org_id) => ({ user_id: id, org_id }))).execute();
      await this.#mail.enqueue(db, tenant.id, {
        kind: 'iam.user.welcome',
        to: email,
        subject: `Your Custos ${kind === 'api' ? 'API user' : 'account'} on ${tenant.name}`,
        text: [
          `An administrator created the ${kind === 'api' ? 'API user' : 'user'} ${input.username} for you on tenant ${tenant.name}.`,
          '',
          `Temporary password: ${password}`,
          '',
          `It expires at ${rfc3339(now + TEMPORARY_PASSWORD_TTL_MS)} and must be changed at first sign-in.`,
        ].join('\n'),
      });
      const view = await this.#view(db, (await db.selectFrom('users').selectAll().where('id', '=', id).executeTakeFirstOrThrow()));
      await this.#audit.append(db, tenant.id, { type: 'iam.user.create', outcome: 'success', actor: auth, resource: { type: 'user', id, name: input.username }, change: { after: { ...view }, sensitive: ['email', 'fullName'] } });
      for (const role of roles) await this.#audit.append(db, tenant.id, { type: 'iam.user.role.grant', outcome: 'success', actor: auth, resource: { type: 'user', id, name: input.username }, details: { role } });
      return view;
    });
  }

  /**
   * Users in username order, `limit` at a time; `cursor` is the `nextCursor`
   * of the previous page (null on the last). Under organizational access
   * control, users outside the caller's reach are skipped, not counted.
   */
  async list(auth: AuthContext, tenantId: string, opts: { limit?: number; cursor?: string } = {}): Promise<{ users: UserView[]; nextCursor: string | null }> {
    authorize(auth, 'users.read');
    const limit = opts.limit ?? 100;
    let after = opts.cursor === undefined ? undefined : decodeCursor(opts.cursor);
    return this.#storage.tenant(tenantId).read(async (db) => {
      const out: UserView[] = [];
      for (;;) {
        let q = db.selectFrom('users').selectAll().orderBy('username').limit(limit + 1);
        if (after !== undefined) q = q.where('username', '>', after);
        const rows = await q.execute();
        for (const u of rows.slice(0, limit)) {
          after = u.username;
          const v = await this.#view(db, u);
          if (auth.reachableOrgs === null || v.orgIds.length === 0 || v.orgIds.some((o) => auth.reachableOrgs!.has(o))) out.push(v);
          if (out.length === limit) return { users: out, nextCursor: rows.length > limit || u !== rows.at(-1) ? encodeCursor(u.username) : null };
        }
        if (rows.length <= limit) return { users: out, nextCursor: null };
      }
    });
  }

  async get(auth: AuthContext, tenantId: string, userId: string): Promise<UserView> {
    authorize(auth, 'users.read');
    return this.#storage.tenant(tenantId).transaction(async (db) => this.#view(db, await this.#reachable(db, auth, userId)));
  }

  /** One change to user `userId` (`action` names it in a refusal): authorized, in reach, not above the actor ({@link checkTargetWithinActor}), recorded. */
  async #change(auth: AuthContext, tenantId: string, userId: string, type: string, action: string, fn: (db: Kysely<TenantDB>, u: Selectable<UsersTable>) => Promise<Record<string, unknown> | void>): Promise<UserView> {
    authorize(auth, 'users.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const before = await this.#reachable(db, auth, userId);
      await checkTargetWithinActor(db, auth, userId, action);
      const beforeView = await this.#view(db, before);
      const details = (await fn(db, before)) ?? undefined;
      await db.updateTable('users').set({ updated_at: this.#clock.now() }).where('id', '=', userId).execute();
      const after = await this.#view(db, await db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirstOrThrow());
      await this.#audit.append(db, tenantId, { type, outcome: 'success', actor: auth, resource: { type: 'user', id: userId, name: before.username }, change: { before: { ...beforeView }, after: { ...after }, sensitive: ['email', 'fullName'] }, details });
      return after;
    });
  }

  update(auth: AuthContext, tenantId: string, userId: string, input: { email?: string; fullName?: string | null }): Promise<UserView> {
    return this.#change(auth, tenantId, userId, 'iam.user.update', 'change', async (db) => {
      const set: { email?: string; full_name?: string | null } = {};
      if (input.email !== undefined) set.email = checkEmail(input.email);
      if (input.fullName !== undefined) set.full_name = input.fullName === null ? null : String(input.fullName).slice(0, 200);
      if (Object.keys(set).length > 0) await db.updateTable('users').set(set).where('id', '=', userId).execute();
    });
  }

  /** Replaces a user's roles; each added role is its own `iam.user.role.grant` event (alertable). */
  async setRoles(auth: AuthContext, tenantId: string, userId: string, roles: unknown): Promise<UserView> {
    if (userId === auth.userId) throw new CustosError('forbidden', 'you cannot change your own roles');
    return this.#change(auth, tenantId, userId, 'iam.user.roles', 'change the roles of', async (db, u) => {
      const list = await this.#checkRoles(db, auth, roles);
      const current = (await db.selectFrom('user_roles').select('role').where('user_id', '=', userId).execute()).map((r) => r.role);
      // Removing roles the actor could not grant is escalation's mirror image: refused too.
      const removed = current.filter((r) => !list.includes(r));
      await this.#checkRoles(db, auth, removed);
      await db.deleteFrom('user_roles').where('user_id', '=', userId).execute();
      if (list.length > 0) await db.insertInto('user_roles').values(list.map((role) => ({ user_id: userId, role }))).execute();
      for (const role of list.filter((r) => !current.includes(r))) {
        await this.#audit.append(db, tenantId, { type: 'iam.user.role.grant', outcome: 'success', actor: auth, resource: { type: 'user', id: userId, name: u.username }, details: { role } });
      }
      for (const role of removed) await this.#audit.append(db, tenantId, { type: 'iam.user.role.revoke', outcome: 'success', actor: auth, resource: { type: 'user', id: userId, name: u.username }, details: { role } });
    });
  }

  /** Replaces a user's organizations within the actor's reach; memberships in organizations the actor cannot reach stay. */
  setOrgs(auth: AuthContext, tenantId: string, userId: string, orgIds: unknown): Promise<UserView> {
    return this.#change(auth, tenantId, userId, 'iam.user.orgs', 'change the organizations of', async (db) => {
      const list = await this.#checkOrgs(db, auth, orgIds);
      const current = (await db.selectFrom('user_orgs').select('org_id').where('user_id', '=', userId).execute()).map((r) => r.org_id);
      const kept = auth.reachableOrgs === null ? [] : current.filter((o) => !auth.reachableOrgs!.has(o));
      await db.deleteFrom('user_orgs').where('user_id', '=', userId).execute();
      const all = [...new Set([...kept, ...list])];
      if (all.length > 0) await db.insertInto('user_orgs').values(all.map((org_id) => ({ user_id: userId, org_id }))).execute();
    });
  }

  /** Suspends a user: every session and token ends at once; sign-in fails until reactivated. */
  suspend(auth: AuthContext, tenantId: string, userId: string): Promise<UserView> {
    if (userId === auth.userId) return Promise.reject(new CustosError('forbidden', 'you cannot suspend yourself'));
    return this.#change(auth, tenantId, userId, 'iam.user.suspend', 'suspend', async (db) => {
      await db.updateTable('users').set({ status: 'suspended' }).where('id', '=', userId).execute();
      const ended = await this.#sessions.endForUser(db, userId);
      await db.deleteFrom('login_flows').where('user_id', '=', userId).execute();
      return { endedSessions: ended };
    });
  }

  activate(auth: AuthContext, tenantId: string, userId: string): Promise<UserView> {
    return this.#change(auth, tenantId, userId, 'iam.user.activate', 'activate', async (db) => {
      await db.updateTable('users').set({ status: 'active' }).where('id', '=', userId).execute();
    });
  }

  unlock(auth: AuthContext, tenantId: string, userId: string): Promise<UserView> {
    return this.#change(auth, tenantId, userId, 'iam.user.unlock', 'unlock', async (db) => {
      await db.updateTable('users').set({ locked_until: null, failed_attempts: 0 }).where('id', '=', userId).execute();
    });
  }

  /** Mails the user a reset link (Responsys: "Account Administrators can manually trigger the reset"). */
  async triggerPasswordReset(auth: AuthContext, tenant: TenantRef, userId: string): Promise<void> {
    authorize(auth, 'users.manage');
    await this.#storage.tenant(tenant.id).transaction(async (db) => {
      await this.#reachable(db, auth, userId);
      // The link goes to the user's address: only for users whose permissions the actor holds (see update).
      await checkTargetWithinActor(db, auth, userId, 'reset the password of');
      await this.#login.sendResetLink(db, tenant, userId, auth);
    });
  }

  async delete(auth: AuthContext, tenantId: string, userId: string): Promise<void> {
    authorize(auth, 'users.manage');
    if (userId === auth.userId) throw new CustosError('forbidden', 'you cannot delete yourself');
    await this.#storage.tenant(tenantId).transaction(async (db) => {
      const u = await this.#reachable(db, auth, userId);
      const view = await this.#view(db, u);
      // Deleting an account no one else could grant is refused like granting it.
      await this.#checkRoles(db, auth, view.roles);
      await this.#sessions.endForUser(db, userId);
      await this.#mfa.disable(db, userId);
      for (const t of ['login_flows', 'devices', 'password_history', 'password_resets', 'api_credentials', 'user_orgs', 'user_roles'] as const) {
        await db.deleteFrom(t).where('user_id', '=', userId).execute();
      }
      await db.deleteFrom('users').where('id', '=', userId).execute();
      await this.#audit.append(db, tenantId, { type: 'iam.user.delete', outcome: 'success', actor: auth, resource: { type: 'user', id: userId, name: u.username }, change: { before: { ...view }, sensitive: ['email', 'fullName'] } });
    });
  }
}

/** List cursors are opaque to clients: base64url of the last username of a page. */
function encodeCursor(username: string): string {
  return Buffer.from(username, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): string {
  const username = Buffer.from(cursor, 'base64url').toString('utf8');
  if (username.length === 0 || encodeCursor(username) !== cursor) throw new CustosError('validation_failed', 'cursor: not a cursor this API gave');
  return username;
}
