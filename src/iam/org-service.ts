import type { Kysely, Selectable } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { isId, newId } from '../core/ids.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { authorize, type AuthContext } from './authorize.js';
import type { OrgsTable } from './iam-tables.js';

export interface OrgView {
  id: string;
  name: string;
  parentId: string | null;
  /** Direct children the caller can see. */
  childCount: number;
  /** Users assigned to the organization itself (not its descendants). */
  userCount: number;
  createdAt: string;
}

export interface OrgInput {
  name?: string;
  /** `null`: a top-level organization. */
  parentId?: string | null;
}

/** Deepest nesting allowed (top level is depth 1). */
export const MAX_ORG_DEPTH = 16;
/** Organizations a tenant may have (the tree is read whole on every request when organizational access control is on). */
export const MAX_ORGS = 2000;

const NAME = /^[\p{L}\p{N}][\p{L}\p{N} ._()&/,'-]{0,99}$/u;

function checkName(name: unknown): string {
  const n = typeof name === 'string' ? name.trim() : '';
  if (!NAME.test(n)) throw new CustosError('validation_failed', 'name: 1-100 letters, digits, spaces and . _ ( ) & / , \' -, starting with a letter or digit');
  return n;
}

type Row = Selectable<OrgsTable>;

/**
 * The organization tree of a tenant. Names are unique among siblings; a move
 * can never make a cycle; an organization is deleted only when it has no
 * children and no users. When the tenant enforces organizational access
 * control, an actor sees and changes only the organizations it reaches (its
 * own and their descendants) — others answer `not_found` — and a new or moved
 * organization must land under one of those, so top-level organizations are
 * made while the control is off.
 */
export class OrgService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
  }

  #visible(auth: AuthContext, id: string): boolean {
    return auth.reachableOrgs === null || auth.reachableOrgs.has(id);
  }

  /**
   * The whole tree (it is small and bounded). `forChange` locks every row where
   * writers run concurrently (PostgreSQL), so two moves cannot each pass the
   * cycle check against the other's old state; SQLite's single writer already
   * serializes them.
   */
  async #all(db: Kysely<TenantDB>, forChange = false): Promise<Row[]> {
    const q = db.selectFrom('orgs').selectAll().orderBy('name').orderBy('id');
    return forChange && this.#storage.adapter.concurrentWriters ? q.forUpdate().execute() : q.execute();
  }

  async #views(db: Kysely<TenantDB>, auth: AuthContext, rows: readonly Row[], only?: string): Promise<OrgView[]> {
    const users = await db
      .selectFrom('user_orgs')
      .select((eb) => ['org_id', eb.fn.countAll<number | string>().as('n')])
      .groupBy('org_id')
      .execute();
    const userCount = new Map(users.map((u) => [u.org_id, Number(u.n)]));
    const children = new Map<string, number>();
    for (const r of rows) if (r.parent_id !== null && this.#visible(auth, r.id)) children.set(r.parent_id, (children.get(r.parent_id) ?? 0) + 1);
    return rows
      .filter((r) => this.#visible(auth, r.id) && (only === undefined || r.id === only))
      .map((r) => ({ id: r.id, name: r.name, parentId: r.parent_id, childCount: children.get(r.id) ?? 0, userCount: userCount.get(r.id) ?? 0, createdAt: rfc3339(r.created_at) }));
  }

  /** The organization, if it exists and the actor reaches it; `not_found` otherwise (existence is not disclosed). */
  #reachable(auth: AuthContext, rows: readonly Row[], id: string): Row {
    const row = isId(id) ? rows.find((r) => r.id === id) : undefined;
    if (!row || !this.#visible(auth, row.id)) throw new CustosError('not_found');
    return row;
  }

  /** A parent for a new or moved organization: `null` (top level, only while access control is off) or one the actor reaches. */
  #parent(auth: AuthContext, rows: readonly Row[], parentId: string | null): Row | null {
    if (parentId === null) {
      if (auth.reachableOrgs !== null) throw new CustosError('forbidden', 'with organizational access control on, organizations are made under one you belong to');
      return null;
    }
    const row = isId(parentId) ? rows.find((r) => r.id === parentId) : undefined;
    if (!row || !this.#visible(auth, row.id)) throw new CustosError('validation_failed', `unknown parent organization ${parentId}`);
    return row;
  }

  #depth(rows: readonly Row[], id: string | null): number {
    const byId = new Map(rows.map((r) => [r.id, r]));
    let depth = 0;
    for (let cur = id; cur !== null && depth <= MAX_ORG_DEPTH + 1; cur = byId.get(cur)?.parent_id ?? null) depth++;
    return depth;
  }

  /** Height of the subtree under `id` (1 for a leaf). */
  #height(rows: readonly Row[], id: string): number {
    let height = 0;
    const seen = new Set<string>();
    for (let level = [id]; level.length > 0 && height <= MAX_ORG_DEPTH; height++) {
      for (const l of level) seen.add(l);
      level = rows.filter((r) => r.parent_id !== null && level.includes(r.parent_id) && !seen.has(r.id)).map((r) => r.id);
    }
    return height;
  }

  #siblingClash(rows: readonly Row[], parentId: string | null, name: string, exceptId?: string): boolean {
    return rows.some((r) => r.parent_id === parentId && r.id !== exceptId && r.name.toLowerCase() === name.toLowerCase());
  }

  async list(auth: AuthContext, tenantId: string): Promise<OrgView[]> {
    authorize(auth, 'users.read');
    return this.#storage.tenant(tenantId).transaction(async (db) => this.#views(db, auth, await this.#all(db)));
  }

  async get(auth: AuthContext, tenantId: string, id: string): Promise<OrgView> {
    authorize(auth, 'users.read');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await this.#all(db);
      this.#reachable(auth, rows, id);
      return (await this.#views(db, auth, rows, id))[0]!;
    });
  }

  async create(auth: AuthContext, tenantId: string, input: OrgInput): Promise<OrgView> {
    authorize(auth, 'orgs.manage');
    const name = checkName(input.name);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await this.#all(db, true);
      if (rows.length >= MAX_ORGS) throw new CustosError('conflict', `a tenant can have at most ${MAX_ORGS} organizations`);
      const parent = this.#parent(auth, rows, input.parentId ?? null);
      if (this.#depth(rows, parent?.id ?? null) + 1 > MAX_ORG_DEPTH) throw new CustosError('validation_failed', `organizations nest at most ${MAX_ORG_DEPTH} deep`);
      if (this.#siblingClash(rows, parent?.id ?? null, name)) throw new CustosError('conflict', `an organization named ${name} exists there`);
      const now = this.#clock.now();
      const row: Row = { id: newId(now), name, parent_id: parent?.id ?? null, created_at: now };
      await db.insertInto('orgs').values(row).execute();
      await this.#audit.append(db, tenantId, { type: 'iam.org.create', outcome: 'success', actor: auth, resource: { type: 'org', id: row.id, name }, change: { after: { name, parentId: row.parent_id } } });
      // The new organization sits under one the actor reaches, so it is visible to it (its reach is recomputed per request).
      const visibleTo: AuthContext = auth.reachableOrgs === null ? auth : { ...auth, reachableOrgs: new Set([...auth.reachableOrgs, row.id]) };
      return (await this.#views(db, visibleTo, [...rows, row], row.id))[0]!;
    });
  }

  /** Renames and/or moves an organization (with its subtree). */
  async update(auth: AuthContext, tenantId: string, id: string, input: OrgInput): Promise<OrgView> {
    authorize(auth, 'orgs.manage');
    const name = input.name === undefined ? undefined : checkName(input.name);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await this.#all(db, true);
      const before = this.#reachable(auth, rows, id);
      let parentId = before.parent_id;
      if (input.parentId !== undefined && input.parentId !== before.parent_id) {
        const parent = this.#parent(auth, rows, input.parentId);
        // No cycles: the new parent may be neither the organization nor one of its descendants.
        const byId = new Map(rows.map((r) => [r.id, r]));
        for (let cur: Row | undefined = parent ?? undefined, steps = 0; cur && steps <= rows.length; cur = cur.parent_id === null ? undefined : byId.get(cur.parent_id), steps++) {
          if (cur.id === id) throw new CustosError('validation_failed', 'an organization cannot move under itself or one of its descendants');
        }
        if (this.#depth(rows, parent?.id ?? null) + this.#height(rows, id) > MAX_ORG_DEPTH) throw new CustosError('validation_failed', `organizations nest at most ${MAX_ORG_DEPTH} deep`);
        parentId = parent?.id ?? null;
      }
      const after = { name: name ?? before.name, parentId };
      if (this.#siblingClash(rows, after.parentId, after.name, id)) throw new CustosError('conflict', `an organization named ${after.name} exists there`);
      await db.updateTable('orgs').set({ name: after.name, parent_id: after.parentId }).where('id', '=', id).execute();
      await this.#audit.append(db, tenantId, { type: 'iam.org.update', outcome: 'success', actor: auth, resource: { type: 'org', id, name: after.name }, change: { before: { name: before.name, parentId: before.parent_id }, after } });
      const moved = rows.map((r) => (r.id === id ? { ...r, name: after.name, parent_id: after.parentId } : r));
      return (await this.#views(db, auth, moved, id))[0]!;
    });
  }

  async delete(auth: AuthContext, tenantId: string, id: string): Promise<void> {
    authorize(auth, 'orgs.manage');
    await this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await this.#all(db, true);
      const row = this.#reachable(auth, rows, id);
      if (rows.some((r) => r.parent_id === id)) throw new CustosError('conflict', 'the organization has sub-organizations; move or delete them first');
      const users = await db.selectFrom('user_orgs').select('user_id').where('org_id', '=', id).limit(1).execute();
      if (users.length > 0) throw new CustosError('conflict', 'users are assigned to the organization; reassign them first');
      await db.deleteFrom('orgs').where('id', '=', id).execute();
      await this.#audit.append(db, tenantId, { type: 'iam.org.delete', outcome: 'success', actor: auth, resource: { type: 'org', id, name: row.name }, change: { before: { name: row.name, parentId: row.parent_id } } });
    });
  }
}
