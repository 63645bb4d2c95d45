import type { Kysely, Selectable } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { isId, newId } from '../core/ids.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { authorize, type AuthContext } from './authorize.js';
import type { RolesTable } from './iam-tables.js';
import { ALL_PERMISSIONS, BUILTIN_ROLES, PERMISSIONS, isBuiltinRole, isPermission, type Permission } from './permissions.js';
import type { SecuritySettingsStore } from './security-settings.js';

/** A role as the API shows it: built-in (key, read-only) or custom (ULID id). */
export interface RoleView {
  /** The built-in key (`account-administrator`) or the custom role's id: what users' `roles` hold. */
  id: string;
  name: string;
  description: string;
  builtin: boolean;
  /** In catalogue order. */
  permissions: Permission[];
  /** Users holding the role. */
  userCount: number;
  createdAt: string | null;
  updatedAt: string | null;
}

export interface RoleInput {
  name?: string;
  description?: string;
  permissions?: string[];
}

export interface PermissionView {
  name: Permission;
  description: string;
}

/** Custom roles a tenant may define (a bound, not a product limit: roles are read on every request). */
export const MAX_CUSTOM_ROLES = 200;

const NAME = /^[\p{L}\p{N}][\p{L}\p{N} ._()&/-]{0,63}$/u;

function inCatalogueOrder(perms: Iterable<Permission>): Permission[] {
  const set = new Set(perms);
  return ALL_PERMISSIONS.filter((p) => set.has(p));
}

function checkName(name: unknown): string {
  const n = typeof name === 'string' ? name.trim() : '';
  if (!NAME.test(n)) throw new CustosError('validation_failed', 'name: 1-64 letters, digits, spaces and . _ ( ) & / -, starting with a letter or digit');
  // A custom role must not pass for a built-in one.
  const lower = n.toLowerCase();
  if (Object.entries(BUILTIN_ROLES).some(([key, r]) => key === lower || r.name.toLowerCase() === lower)) {
    throw new CustosError('conflict', `${n} is the name of a built-in role`);
  }
  return n;
}

function checkPermissions(perms: unknown): Permission[] {
  if (!Array.isArray(perms) || perms.length === 0 || perms.length > ALL_PERMISSIONS.length * 2) throw new CustosError('validation_failed', 'permissions must list at least one permission of the catalogue');
  const unknown = perms.filter((p) => !isPermission(p));
  if (unknown.length > 0) throw new CustosError('validation_failed', `not in the permission catalogue: ${unknown.map(String).join(', ')}`);
  return inCatalogueOrder(perms as Permission[]);
}

/** Refuses a role change that would hand out (or take back) permissions the actor does not hold itself. */
function checkHeld(auth: AuthContext, perms: readonly Permission[]): void {
  const missing = perms.filter((p) => !auth.permissions.has(p));
  if (missing.length > 0) throw new CustosError('forbidden', `cannot grant permissions you do not hold: ${missing.join(', ')}`);
}

/**
 * Roles of a tenant: the five built-in roles (read-only) and custom roles
 * made from the permission catalogue. Custom roles are tenant-wide (not
 * organization-scoped). An actor can only create, change or delete a role
 * whose permissions — before and after — it holds itself, so `roles.manage`
 * never becomes a way to escalate. A role still assigned to a user, or named
 * by the MFA policy, cannot be deleted (`conflict`).
 */
export class RoleService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #settings: SecuritySettingsStore;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; settings: SecuritySettingsStore }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#settings = deps.settings;
  }

  /** The permission catalogue. */
  permissions(auth: AuthContext): PermissionView[] {
    authorize(auth, 'users.read');
    return ALL_PERMISSIONS.map((name) => ({ name, description: PERMISSIONS[name] }));
  }

  async #counts(db: Kysely<TenantDB>): Promise<Map<string, number>> {
    const rows = await db
      .selectFrom('user_roles')
      .select((eb) => ['role', eb.fn.countAll<number | string>().as('n')])
      .groupBy('role')
      .execute();
    return new Map(rows.map((r) => [r.role, Number(r.n)]));
  }

  #customView(row: Selectable<RolesTable>, counts: Map<string, number>): RoleView {
    return {
      id: row.id,
      name: row.name,
      description: row.description,
      builtin: false,
      permissions: inCatalogueOrder((JSON.parse(row.permissions) as unknown[]).filter(isPermission)),
      userCount: counts.get(row.id) ?? 0,
      createdAt: rfc3339(row.created_at),
      updatedAt: rfc3339(row.updated_at),
    };
  }

  #builtinView(key: keyof typeof BUILTIN_ROLES, counts: Map<string, number>): RoleView {
    const r = BUILTIN_ROLES[key];
    return { id: key, name: r.name, description: r.description, builtin: true, permissions: inCatalogueOrder(r.permissions), userCount: counts.get(key) ?? 0, createdAt: null, updatedAt: null };
  }

  /** Built-in roles first (in their fixed order), then custom roles by name. */
  async list(auth: AuthContext, tenantId: string): Promise<RoleView[]> {
    authorize(auth, 'users.read');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const counts = await this.#counts(db);
      const custom = await db.selectFrom('roles').selectAll().orderBy('name').execute();
      return [...(Object.keys(BUILTIN_ROLES) as Array<keyof typeof BUILTIN_ROLES>).map((k) => this.#builtinView(k, counts)), ...custom.map((r) => this.#customView(r, counts))];
    });
  }

  async get(auth: AuthContext, tenantId: string, id: string): Promise<RoleView> {
    authorize(auth, 'users.read');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const counts = await this.#counts(db);
      if (isBuiltinRole(id)) return this.#builtinView(id, counts);
      return this.#customView(await this.#find(db, id), counts);
    });
  }

  async #find(db: Kysely<TenantDB>, id: string): Promise<Selectable<RolesTable>> {
    const row = isId(id) ? await db.selectFrom('roles').selectAll().where('id', '=', id).executeTakeFirst() : undefined;
    if (!row) throw new CustosError('not_found');
    return row;
  }

  async #nameTaken(db: Kysely<TenantDB>, name: string, exceptId?: string): Promise<boolean> {
    const rows = await db.selectFrom('roles').select(['id', 'name']).execute();
    return rows.some((r) => r.id !== exceptId && r.name.toLowerCase() === name.toLowerCase());
  }

  async create(auth: AuthContext, tenantId: string, input: RoleInput): Promise<RoleView> {
    authorize(auth, 'roles.manage');
    const name = checkName(input.name);
    const permissions = checkPermissions(input.permissions);
    const description = (input.description ?? '').trim().slice(0, 500);
    checkHeld(auth, permissions);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      if (await this.#nameTaken(db, name)) throw new CustosError('conflict', `a role named ${name} exists`);
      const total = await db.selectFrom('roles').select((eb) => eb.fn.countAll<number | string>().as('n')).executeTakeFirstOrThrow();
      if (Number(total.n) >= MAX_CUSTOM_ROLES) throw new CustosError('conflict', `a tenant can have at most ${MAX_CUSTOM_ROLES} custom roles`);
      const now = this.#clock.now();
      const row: Selectable<RolesTable> = { id: newId(now), name, description, permissions: JSON.stringify(permissions), created_at: now, updated_at: now };
      await db.insertInto('roles').values(row).execute();
      const view = this.#customView(row, new Map());
      await this.#audit.append(db, tenantId, { type: 'iam.role.create', outcome: 'success', actor: auth, resource: { type: 'role', id: row.id, name }, change: { after: { name, description, permissions } } });
      return view;
    });
  }

  /** Changes a custom role; every holder's permissions change with it at their next request. */
  async update(auth: AuthContext, tenantId: string, id: string, input: RoleInput): Promise<RoleView> {
    authorize(auth, 'roles.manage');
    if (isBuiltinRole(id)) throw new CustosError('forbidden', 'built-in roles are read-only');
    const name = input.name === undefined ? undefined : checkName(input.name);
    const permissions = input.permissions === undefined ? undefined : checkPermissions(input.permissions);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const before = this.#customView(await this.#find(db, id), new Map());
      // The permissions taken away and the ones added: both must be the actor's own.
      checkHeld(auth, before.permissions);
      if (permissions) checkHeld(auth, permissions);
      if (name !== undefined && (await this.#nameTaken(db, name, id))) throw new CustosError('conflict', `a role named ${name} exists`);
      const after = {
        name: name ?? before.name,
        description: input.description === undefined ? before.description : input.description.trim().slice(0, 500),
        permissions: permissions ?? before.permissions,
      };
      const now = this.#clock.now();
      await db.updateTable('roles').set({ name: after.name, description: after.description, permissions: JSON.stringify(after.permissions), updated_at: now }).where('id', '=', id).execute();
      await this.#audit.append(db, tenantId, {
        type: 'iam.role.update',
        outcome: 'success',
        actor: auth,
        resource: { type: 'role', id, name: after.name },
        change: { before: { name: before.name, description: before.description, permissions: before.permissions }, after },
      });
      return this.#customView(await this.#find(db, id), await this.#counts(db));
    });
  }

  async delete(auth: AuthContext, tenantId: string, id: string): Promise<void> {
    authorize(auth, 'roles.manage');
    if (isBuiltinRole(id)) throw new CustosError('forbidden', 'built-in roles are read-only');
    await this.#storage.tenant(tenantId).transaction(async (db) => {
      const row = await this.#find(db, id);
      const view = this.#customView(row, await this.#counts(db));
      checkHeld(auth, view.permissions);
      if (view.userCount > 0) throw new CustosError('conflict', `the role is assigned to ${view.userCount} user(s); take it from them first`);
      if ((await this.#settings.inTx(db)).mfa.roles.includes(id)) throw new CustosError('conflict', 'the MFA policy names this role; change the security settings first');
      await db.deleteFrom('roles').where('id', '=', id).execute();
      await this.#audit.append(db, tenantId, { type: 'iam.role.delete', outcome: 'success', actor: auth, resource: { type: 'role', id, name: row.name }, change: { before: { name: view.name, description: view.description, permissions: view.permissions } } });
    });
  }
}
