import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { parseIntoClientConfig } from 'pg-connection-string';
import { CustosError } from '../../core/errors.js';
import { isId } from '../../core/ids.js';
import type { Clock } from '../../core/clock.js';
import { postgresAdapter } from '../adapter.js';
import { MIGRATIONS_TABLE, runMigrations } from '../migrations/migration.js';
import { controlMigrations } from '../migrations/control/index.js';
import { tenantMigrations } from '../migrations/tenant/index.js';
import type { ControlDB, TenantDB } from '../schema.js';
import type { MigrationReport, Storage, TenantStore, TenantStoreLocation } from '../storage.js';
import { DEFAULT_NAMED_STATEMENTS, preparingClient } from './preparing-client.js';

const INT8_OID = 20;

/** Parses bigint columns as numbers: Custos keeps times in ms, well inside 2^53. */
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8_OID && format !== 'binary') return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format);
  },
};

/** Tenant pools kept open at once; the least recently used idle one closes past this. */
const MAX_TENANT_POOLS = 200;
const TENANT_IDLE_MS = 30_000;

export interface PostgresStorageOptions {
  url: string;
  /** Control-plane schema (default `custos`). */
  schema: string;
  poolSize: number;
  tenantPoolSize: number;
  /** Named prepared statements per connection (see {@link preparingClient}); 0: none. Default 256. */
  preparedStatements?: number;
  /** Password of a tenant's login role, derived from the master key and never stored. */
  tenantRolePassword: (tenantId: string) => string;
  clock: Clock;
}

/** Identifiers of a tenant's schema and role; derived from the validated id, never from input. */
export function tenantIdentifiers(tenantId: string): { schema: string; role: string } {
  if (!isId(tenantId)) throw new TypeError('not a tenant id');
  return { schema: `t_${tenantId}`, role: `custos_t_${tenantId}` };
}

class PostgresTenantStore implements TenantStore {
  readonly tenantId: string;
  readonly #storage: PostgresStorage;
  constructor(storage: PostgresStorage, tenantId: string) {
    this.tenantId = tenantId;
    this.#storage = storage;
  }
  async transaction<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    return this.#storage.tenantKysely(this.tenantId).transaction().execute(fn);
  }
  async read<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    return this.#storage.tenantKysely(this.tenantId).connection().execute(fn);
  }
}

/**
 * PostgreSQL: the control plane in one schema; each tenant in a schema of its
 * own, reached only through connections that log in as the tenant's own role.
 *
 * Why log in as the tenant role rather than `SET LOCAL ROLE` on a shared pool:
 * PostgreSQL checks `SET ROLE` against the session user, so on a connection
 * whose session user is the (privileged) service account, any statement in a
 * tenant transaction could `RESET ROLE` or `SET ROLE` to another tenant. When
 * the session user is the tenant role itself there is nothing to switch to:
 * the role owns no objects, holds DML privileges on its own schema's tables
 * only, has no access to the control schema, and is a member of no role.
 */
export class PostgresStorage implements Storage {
  readonly adapter = postgresAdapter;
  readonly control: Kysely<ControlDB>;
  readonly #root: Kysely<unknown>;
  readonly #opts: PostgresStorageOptions;
  readonly #tenantDbs = new Map<string, { db: Kysely<TenantDB>; pool: pg.Pool }>();
  readonly #Client: typeof pg.Client;

  constructor(opts: PostgresStorageOptions) {
    this.#opts = opts;
    this.#Client = preparingClient(opts.preparedStatements ?? DEFAULT_NAMED_STATEMENTS);
    const pool = new pg.Pool({ connectionString: opts.url, max: opts.poolSize, types, connectionTimeoutMillis: 10000, Client: this.#Client });
    pool.on('error', () => undefined); // an idle client's error; the next checkout reconnects
    this.#root = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
    this.control = (this.#root as unknown as Kysely<ControlDB>).withSchema(opts.schema);
  }

  controlTransaction<T>(fn: (db: Kysely<ControlDB>) => Promise<T>): Promise<T> {
    return this.control.transaction().execute(fn);
  }

  async migrateControl(): Promise<MigrationReport> {
    const schema = this.#opts.schema;
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `schema:${schema}`);
      await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(schema)}`.execute(trx);
      await sql`REVOKE ALL ON SCHEMA ${sql.id(schema)} FROM PUBLIC`.execute(trx);
    });
    const applied = await runMigrations({
      migrations: controlMigrations,
      adapter: this.adapter,
      transaction: (fn) => this.control.transaction().execute(fn),
      lock: (db) => this.#advisoryLock(db, `migrate:${schema}`),
      now: () => this.#opts.clock.now(),
    });
    return { applied };
  }

  async #advisoryLock(db: Kysely<any>, key: string): Promise<void> {
    await sql`SELECT pg_advisory_xact_lock(hashtext(${key}))`.execute(db);
  }

  /** The tenant's Kysely handle over a pool that logs in as the tenant role with its schema on the path. */
  tenantKysely(tenantId: string): Kysely<TenantDB> {
    const hit = this.#tenantDbs.get(tenantId);
    if (hit) {
      this.#tenantDbs.delete(tenantId);
      this.#tenantDbs.set(tenantId, hit);
      return hit.db;
    }
    const { schema, role } = tenantIdentifiers(tenantId);
    // Where and how to connect as the control pool does (the same parser: host or Unix-socket directory, port,
    // database, TLS settings), but as the tenant's own role, in its own schema.
    const { host, port, database, ssl } = parseIntoClientConfig(this.#opts.url);
    const pool = new pg.Pool({
      host,
      port,
      database,
      user: role,
      // A function, so a master-key rotation applies to every new connection at once.
      password: () => this.#opts.tenantRolePassword(tenantId),
      options: `-c search_path=${schema}`,
      ssl,
      max: this.#opts.tenantPoolSize,
      idleTimeoutMillis: TENANT_IDLE_MS,
      connectionTimeoutMillis: 10000,
      types,
      Client: this.#Client,
    });
    pool.on('error', () => undefined);
    const db = new Kysely<TenantDB>({ dialect: new PostgresDialect({ pool }) });
    this.#tenantDbs.set(tenantId, { db, pool });
    if (this.#tenantDbs.size > MAX_TENANT_POOLS) {
      for (const [id, entry] of this.#tenantDbs) {
        if (entry.pool.idleCount === entry.pool.totalCount && id !== tenantId) {
          this.#tenantDbs.delete(id);
          void entry.db.destroy().catch(() => undefined);
          break;
        }
      }
    }
    return db;
  }

  tenant(tenantId: string): TenantStore {
    tenantIdentifiers(tenantId);
    return new PostgresTenantStore(this, tenantId);
  }

  async createTenantStore(tenantId: string): Promise<void> {
    const { schema, role } = tenantIdentifiers(tenantId);
    const password = this.#opts.tenantRolePassword(tenantId);
    if (!/^[A-Za-z0-9_-]+$/.test(password)) throw new TypeError('tenant role password must be base64url');
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `tenant:${tenantId}`);
      const exists = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ${role}`.execute(trx);
      // DDL takes no bind parameters; the password is base64url (checked above), the names are derived from an id.
      if (exists.rows[0]?.n === 0) {
        await sql`CREATE ROLE ${sql.id(role)} LOGIN NOINHERIT NOCREATEDB NOCREATEROLE PASSWORD ${sql.lit(password)}`.execute(trx);
      } else {
        await sql`ALTER ROLE ${sql.id(role)} LOGIN PASSWORD ${sql.lit(password)}`.execute(trx);
      }
      await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(schema)}`.execute(trx);
      await sql`REVOKE ALL ON SCHEMA ${sql.id(schema)} FROM PUBLIC`.execute(trx);
      await sql`GRANT USAGE ON SCHEMA ${sql.id(schema)} TO ${sql.id(role)}`.execute(trx);
      await sql`ALTER DEFAULT PRIVILEGES IN SCHEMA ${sql.id(schema)} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${sql.id(role)}`.execute(trx);
      await sql`ALTER DEFAULT PRIVILEGES IN SCHEMA ${sql.id(schema)} GRANT USAGE, SELECT ON SEQUENCES TO ${sql.id(role)}`.execute(trx);
    });
    await this.migrateTenant(tenantId);
    await this.tenant(tenantId).transaction(async (db) => {
      await db
        .insertInto('store_meta')
        .values({ key: 'tenant_id', value: tenantId })
        .onConflict((oc) => oc.column('key').doNothing())
        .execute();
    });
  }

  async migrateTenant(tenantId: string): Promise<MigrationReport> {
    const { schema, role } = tenantIdentifiers(tenantId);
    if (!(await this.tenantStoreExists(tenantId))) throw new CustosError('tenant_not_found');
    const applied = await runMigrations({
      migrations: tenantMigrations,
      adapter: this.adapter,
      // DDL runs as the service account (the owner) with the tenant schema on the path; the tenant role gets DML only.
      transaction: (fn) =>
        this.#root.transaction().execute(async (trx) => {
          await sql`SELECT set_config('search_path', ${`"${schema}"`}, true)`.execute(trx);
          return fn(trx);
        }),
      lock: (db) => this.#advisoryLock(db, `tenant:${tenantId}`),
      now: () => this.#opts.clock.now(),
    });
    // Under the tenant's lock: two nodes starting at once would otherwise update the table's ACL together
    // ("tuple concurrently updated").
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `tenant:${tenantId}`);
      await sql`REVOKE ALL ON ${sql.id(schema, MIGRATIONS_TABLE)} FROM ${sql.id(role)}`.execute(trx);
    });
    return { applied };
  }

  async dropTenantStore(tenantId: string): Promise<void> {
    const { schema, role } = tenantIdentifiers(tenantId);
    const entry = this.#tenantDbs.get(tenantId);
    this.#tenantDbs.delete(tenantId);
    if (entry) await entry.db.destroy().catch(() => undefined);
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `tenant:${tenantId}`);
      await sql`DROP SCHEMA IF EXISTS ${sql.id(schema)} CASCADE`.execute(trx);
      const exists = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ${role}`.execute(trx);
      if (exists.rows[0]?.n !== 0) {
        // Sessions of this role on other nodes end with it.
        await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${role}`.execute(trx);
        await sql`DROP OWNED BY ${sql.id(role)}`.execute(trx);
        await sql`DROP ROLE ${sql.id(role)}`.execute(trx);
      }
    });
  }

  async rekeyTenantRoles(db: Kysely<ControlDB>, tenantIds: readonly string[], password: (tenantId: string) => string): Promise<void> {
    for (const id of tenantIds) {
      const { role } = tenantIdentifiers(id);
      const pw = password(id);
      if (!/^[A-Za-z0-9_-]+$/.test(pw)) throw new TypeError('tenant role password must be base64url');
      await sql`ALTER ROLE ${sql.id(role)} PASSWORD ${sql.lit(pw)}`.execute(db);
    }
  }

  async tenantStoreExists(tenantId: string): Promise<boolean> {
    const { schema } = tenantIdentifiers(tenantId);
    const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = ${schema}`.execute(this.#root);
    return (r.rows[0]?.n ?? 0) > 0;
  }

  locateTenantStore(tenantId: string): TenantStoreLocation {
    return { kind: 'postgres', ...tenantIdentifiers(tenantId) };
  }

  async refreshStatistics(tenantId: string, tables: readonly string[]): Promise<void> {
    const { schema } = tenantIdentifiers(tenantId);
    for (const table of tables) {
      if (!/^[a-z_]+$/.test(table)) throw new TypeError('not a table name');
      await sql`ANALYZE ${sql.id(schema, table)}`.execute(this.#root);
    }
  }

  async ping(): Promise<void> {
    await sql`SELECT 1`.execute(this.#root);
  }

  async close(): Promise<void> {
    const all = [...this.#tenantDbs.values()];
    this.#tenantDbs.clear();
    await Promise.all(all.map((e) => e.db.destroy().catch(() => undefined)));
    await this.#root.destroy();
  }
}
