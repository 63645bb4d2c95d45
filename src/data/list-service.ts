import { sql, type Kysely, type Selectable } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { KeyService } from '../crypto/key-service.js';
import { authorize, type AuthContext } from '../iam/authorize.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { ListsTable } from './data-tables.js';
import { CLASSIFICATIONS, checkFieldDef, checkSchema, checkValue, defaultMask, type Classification, type FieldDef } from './fields.js';
import { LIST_OBJECT, indexValue, openProtected, sealProtected } from './record-codec.js';
import { RecordKeys } from './record-keys.js';

export interface ListView {
  id: string;
  name: string;
  description: string;
  orgId: string | null;
  fields: FieldDef[];
  schemaVersion: number;
  recordCount: number;
  createdAt: string;
  updatedAt: string;
}

export interface LoadedList {
  row: Selectable<ListsTable>;
  fields: FieldDef[];
}

/** How long a read may use a cached list definition (a schema change made by another node applies within it). */
const LIST_CACHE_MS = 1000;
const LIST_NAME = /^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$/;

function fail(why: string): never {
  throw new CustosError('validation_failed', why);
}

/**
 * Lists (profile lists) and their schemas. A list belongs to an
 * organization; with organizational access control on, principals reach only
 * lists of their organizations (others answer 404). Schema changes — adding a
 * field, reclassifying one, dropping one — rewrite every record in the same
 * transaction, so no value is ever half-migrated: a `plain` field becoming
 * `pii` is encrypted, a `pii` field becoming `plain` is decrypted.
 */
export class ListService {
  readonly #storage: Storage;
  readonly #recordKeys: RecordKeys;
  readonly #clock: Clock;
  readonly #keys: KeyService;
  readonly #audit: AuditService;

  constructor(deps: { storage: Storage; clock: Clock; keys: KeyService; audit: AuditService }) {
    this.#storage = deps.storage;
    this.#recordKeys = new RecordKeys(deps.storage.adapter);
    this.#clock = deps.clock;
    this.#keys = deps.keys;
    this.#audit = deps.audit;
  }

  readonly #cache = new Map<string, { list: LoadedList; at: number }>();

  /**
   * Loads a list the principal may reach with `permission`; `not_found`
   * otherwise (lists of other organizations are not disclosed). Reads may use
   * a list definition up to one second old (`cached`); writes always read the
   * current one in their transaction.
   */
  async load(db: Kysely<TenantDB>, auth: AuthContext, listId: string, permission: Parameters<typeof authorize>[1], opts: { cached?: boolean } = {}): Promise<LoadedList> {
    const key = `${auth.tenantId}|${listId}`;
    const now = this.#clock.now();
    let list: LoadedList | undefined;
    const hit = opts.cached ? this.#cache.get(key) : undefined;
    if (hit && now - hit.at < LIST_CACHE_MS) list = hit.list;
    else {
      const row = await db.selectFrom('lists').selectAll().where('id', '=', listId).executeTakeFirst();
      if (!row) {
        this.#cache.delete(key);
        throw new CustosError('not_found');
      }
      list = { row, fields: JSON.parse(row.fields) as FieldDef[] };
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(key, { list, at: now });
    }
    authorize(auth, permission, { orgId: list.row.org_id }, { hide: true });
    return list;
  }

  #forget(tenantId: string, listId: string): void {
    this.#cache.delete(`${tenantId}|${listId}`);
  }

  async #view(db: Kysely<TenantDB>, row: Selectable<ListsTable>): Promise<ListView> {
    const count = await db.selectFrom('records').select((eb) => eb.fn.countAll<number>().as('n')).where('list_key', '=', row.key).executeTakeFirstOrThrow();
    return {
      id: row.id,
      name: row.name,
      description: row.description,
      orgId: row.org_id,
      fields: JSON.parse(row.fields) as FieldDef[],
      schemaVersion: row.schema_version,
      recordCount: Number(count.n),
      createdAt: rfc3339(row.created_at),
      updatedAt: rfc3339(row.updated_at),
    };
  }

  async create(auth: AuthContext, tenantId: string, input: { name: string; description?: string; orgId?: string | null; fields?: unknown[] }): Promise<ListView> {
    authorize(auth, 'lists.write', { orgId: input.orgId ?? null });
    if (typeof input.name !== 'string' || !LIST_NAME.test(input.name)) fail('list names are 1-100 letters, digits, spaces and . _ -');
    const fields = checkSchema(input.fields ?? []);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      if (input.orgId && !(await db.selectFrom('orgs').select('id').where('id', '=', input.orgId).executeTakeFirst())) fail('unknown organization');
      if (await db.selectFrom('lists').select('id').where('name', '=', input.name).executeTakeFirst()) throw new CustosError('conflict', `a list named ${input.name} exists`);
      const now = this.#clock.now();
      const last = await db.selectFrom('lists').select((eb) => eb.fn.max('key').as('k')).executeTakeFirst();
      const row = { id: newId(now), key: Number(last?.k ?? 0) + 1, name: input.name, description: (input.description ?? '').slice(0, 500), org_id: input.orgId ?? null, fields: JSON.stringify(fields), schema_version: 1, created_at: now, updated_at: now };
      await db.insertInto('lists').values(row).execute();
      // The list's data key is created with it (and fails here while the tenant's key is disabled).
      await this.#keys.objectKeys(db, tenantId, LIST_OBJECT, row.id);
      await this.#audit.append(db, tenantId, { type: 'lists.create', outcome: 'success', actor: auth, resource: { type: 'list', id: row.id, name: row.name }, details: { fields: fields.map((f) => `${f.name}:${f.type}:${f.classification}`) } });
      return this.#view(db, row);
    });
  }

  async list(auth: AuthContext, tenantId: string): Promise<ListView[]> {
    authorize(auth, 'lists.read');
    return this.#storage.tenant(tenantId).read(async (db) => {
      const rows = await db.selectFrom('lists').selectAll().orderBy('name').execute();
      const out: ListView[] = [];
      for (const r of rows) {
        if (auth.reachableOrgs === null || r.org_id === null || auth.reachableOrgs.has(r.org_id)) out.push(await this.#view(db, r));
      }
      return out;
    });
  }

  async get(auth: AuthContext, tenantId: string, listId: string): Promise<ListView> {
    return this.#storage.tenant(tenantId).read(async (db) => this.#view(db, (await this.load(db, auth, listId, 'lists.read')).row));
  }

  /**
   * Serialises writers of one list inside the caller's write transaction,
   * taken before the list is read. SQLite write transactions are exclusive
   * already; on PostgreSQL (read committed) two merges of the same new
   * records would otherwise both find no target and then trip over each
   * other's inserts, and a schema change could interleave with a merge that
   * encoded under the old schema. A transaction-scoped advisory lock keyed by
   * the tenant's schema and the list id; released at commit or rollback.
   */
  async lockForWrite(db: Kysely<TenantDB>, listId: string): Promise<void> {
    if (!this.#storage.adapter.concurrentWriters) return;
    await sql`select pg_advisory_xact_lock(hashtext(current_schema()), hashtext(${listId}))`.execute(db);
  }

  async delete(auth: AuthContext, tenantId: string, listId: string): Promise<void> {
    await this.#storage.tenant(tenantId).transaction(async (db) => {
      await this.lockForWrite(db, listId);
      const { row } = await this.load(db, auth, listId, 'lists.write');
      const count = await db.deleteFrom('records').where('list_key', '=', row.key).executeTakeFirst();
      await db.deleteFrom('record_index').where('list_key', '=', row.key).execute();
      await this.#recordKeys.removeList(db, row.key);
      await db.deleteFrom('lists').where('id', '=', listId).execute();
      await db.deleteFrom('data_keys').where('object_type', '=', LIST_OBJECT).where('object_id', '=', listId).execute();
      this.#forget(tenantId, listId);
      await this.#audit.append(db, tenantId, { type: 'lists.delete', outcome: 'success', actor: auth, resource: { type: 'list', id: listId, name: row.name }, details: { records: Number(count.numDeletedRows) } });
    });
  }

  /**
   * Changes a list's schema in one transaction: `add` new custom fields,
   * `reclassify` fields (values are re-encrypted or decrypted in every record),
   * `drop` custom fields (their values are removed). Standard fields cannot be
   * dropped or reclassified.
   */
  async changeSchema(
    auth: AuthContext,
    tenantId: string,
    listId: string,
    change: { add?: unknown[]; reclassify?: Array<{ name: string; classification: Classification }>; drop?: string[] },
  ): Promise<ListView> {
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      await this.lockForWrite(db, listId);
      const { row, fields } = await this.load(db, auth, listId, 'lists.write');
      const next = fields.map((f) => ({ ...f }));
      for (const input of change.add ?? []) {
        const f = checkFieldDef(input);
        if (next.some((x) => x.name === f.name)) fail(`field ${f.name} exists`);
        if (f.required) fail(`${f.name}: a field added to an existing list cannot be required`);
        next.push(f);
      }
      const reclassified: Array<{ field: FieldDef; from: Classification }> = [];
      // A field named twice would be rewritten from where the first entry had already moved its values
      // (and lose them); naming a field once says the same, so the request is refused instead.
      const named = new Set<string>();
      for (const r of change.reclassify ?? []) {
        if (named.has(r.name)) fail(`field ${String(r.name)} is reclassified twice`);
        named.add(r.name);
        const f = next.find((x) => x.name === r.name);
        if (!f) fail(`no field ${String(r.name)}`);
        if (f.standard) fail(`${f.name} is a standard field`);
        if (!CLASSIFICATIONS.includes(r.classification)) fail('classification must be pii, sensitive or plain');
        if (f.classification === r.classification) continue;
        // Out of pii, every stored value is shown unmasked to whoever reads the list: only a principal that may see
        // them in clear may do that (a Marketer could otherwise unmask a field for itself, and mask it again).
        if (f.classification === 'pii') authorize(auth, 'data.pii.view');
        reclassified.push({ field: f, from: f.classification });
        f.classification = r.classification;
        f.mask = r.classification === 'pii' ? (f.mask ?? defaultMask(f.type)) : null;
      }
      const dropped: string[] = [];
      for (const name of change.drop ?? []) {
        if (named.has(name)) fail(`field ${String(name)} cannot be both reclassified and dropped`);
        const i = next.findIndex((x) => x.name === name);
        if (i < 0) fail(`no field ${String(name)}`);
        if (next[i]!.standard) fail(`${name} is a standard field`);
        next.splice(i, 1);
        dropped.push(name);
      }
      if (reclassified.length > 0 || dropped.length > 0) await this.#rewrite(db, tenantId, listId, row.key, reclassified, dropped);
      const now = this.#clock.now();
      await db.updateTable('lists').set({ fields: JSON.stringify(next), schema_version: row.schema_version + 1, updated_at: now }).where('id', '=', listId).execute();
      this.#forget(tenantId, listId);
      await this.#audit.append(db, tenantId, {
        type: 'lists.schema.change',
        outcome: 'success',
        actor: auth,
        resource: { type: 'list', id: listId, name: row.name },
        details: {
          added: (change.add ?? []).map((f) => (f as { name?: string }).name ?? ''),
          reclassified: reclassified.map((r) => `${r.field.name}:${r.from}->${r.field.classification}`),
          dropped,
          version: row.schema_version + 1,
        },
      });
      return this.#view(db, { ...row, fields: JSON.stringify(next), schema_version: row.schema_version + 1, updated_at: now });
    });
  }

  /** Moves values between the plain document and the ciphertexts, and removes dropped ones, record by record. */
  async #rewrite(db: Kysely<TenantDB>, tenantId: string, listId: string, listKey: number, reclassified: Array<{ field: FieldDef; from: Classification }>, dropped: string[]): Promise<void> {
    const keys = await this.#keys.objectKeys(db, tenantId, LIST_OBJECT, listId);
    let cursor = '';
    for (;;) {
      const rows = await db.selectFrom('records').select(['id', 'plain', 'protected']).where('list_key', '=', listKey).where('id', '>', cursor).orderBy('id').limit(1000).execute();
      if (rows.length === 0) break;
      for (const r of rows) {
        const plain = JSON.parse(r.plain) as Record<string, unknown>;
        const prot = openProtected(keys, r.id, r.protected);
        for (const name of dropped) {
          delete plain[name];
          delete prot[name];
        }
        for (const { field, from } of reclassified) {
          const value = (from === 'plain' ? plain[field.name] : prot[field.name]) ?? null;
          delete plain[field.name];
          delete prot[field.name];
          if (value === null) continue;
          checkValue(field, value);
          if (field.classification === 'plain') plain[field.name] = value;
          else prot[field.name] = value;
        }
        await db.updateTable('records').set({ plain: JSON.stringify(plain), protected: sealProtected(keys, r.id, prot) }).where('list_key', '=', listKey).where('id', '=', r.id).execute();
        // Index values change form (blind index ↔ clear) with the classification.
        for (const { field } of reclassified) {
          if (!field.indexed) continue;
          await db.deleteFrom('record_index').where('list_key', '=', listKey).where('record_id', '=', r.id).where('field', '=', field.name).execute();
          const v = field.classification === 'plain' ? plain[field.name] : prot[field.name];
          if (v !== undefined && v !== null) await db.insertInto('record_index').values({ list_key: listKey, field: field.name, value: indexValue(keys, field, v), record_id: r.id }).execute();
        }
      }
      cursor = rows.at(-1)!.id;
    }
    if (dropped.length > 0) await db.deleteFrom('record_index').where('list_key', '=', listKey).where('field', 'in', dropped).execute();
  }
}
