import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { CustosError } from '../../core/errors.js';
import { isId } from '../../core/ids.js';
import type { Clock } from '../../core/clock.js';
import { postgresAdapter } from '../adapter.js';
import { MIGRATIONS_TABLE, runMigrations } from '../migrations/migration.js';
import { controlMigrations } from '../migrations/control/index.js';
import { tenantMigrations } from '../migrations/tenant/index.js';
import type { ControlDB, TenantDB } from '../schema.js';
import type { MigrationReport, Storage, TenantStore, TenantStoreLocation } from '../storage.js';

const INT8_OID = 20;

/** Parses bigint columns as numbers: Custos keeps times in ms, well inside 2^53. */
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8_OID && format !== 'binary') return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format);
  },
} as pg.CustomTypesConfig;

export interface PostgresStorageOptions {
  url: string;
  /** Control-plane schema (default `custos`). */
  schema: string;
  poolSize: number;
  clock: Clock;
}

/** Identifiers of a tenant's schema and role; derived from the validated id, never from input. */
export function tenantIdentifiers(tenantId: string): { schema: string; role: string } {
  if (!isId(tenantId)) throw new TypeError('not a tenant id');
  return { schema: `t_${tenantId}`, role: `custos_t_${tenantId}` };
}

class PostgresTenantStore implements TenantStore {
  readonly tenantId: string;
  readonly #db: Kysely<TenantDB>;
  readonly #bind: ReturnType<typeof sql.raw>;
  constructor(db: Kysely<TenantDB>, tenantId: string) {
    this.tenantId = tenantId;
    this.#db = db;
    const { schema, role } = tenantIdentifiers(tenantId);
    // Both identifiers come from tenantIdentifiers(), which accepts only [0-9a-z] ids.
    this.#bind = sql.raw(`SET LOCAL ROLE "${role}"; SET LOCAL search_path TO "${schema}"`);
  }
  transaction<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    return this.#db.transaction().execute(async (trx) => {
      await this.#bind.execute(trx);
      return fn(trx);
    });
  }
}

/**
 * PostgreSQL: the control plane in one schema, each tenant in a schema of its
 * own with a role of its own. Tenant transactions run `SET LOCAL ROLE` to the
 * tenant's role, which holds privileges on its own schema only, so even
 * hand-written SQL in a tenant transaction cannot reach another tenant.
 */
export class PostgresStorage implements Storage {
  readonly adapter = postgresAdapter;
  readonly control: Kysely<ControlDB>;
  readonly #root: Kysely<unknown>;
  readonly #pool: pg.Pool;
  readonly #schema: string;
  readonly #clock: Clock;

  constructor(opts: PostgresStorageOptions) {
    this.#schema = opts.schema;
    this.#clock = opts.clock;
    this.#pool = new pg.Pool({ connectionString: opts.url, max: opts.poolSize, types, connectionTimeoutMillis: 10000 });
    this.#pool.on('error', () => undefined); // an idle client's error; the next checkout reconnects
    this.#root = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: this.#pool }) });
    this.control = (this.#root as unknown as Kysely<ControlDB>).withSchema(opts.schema);
  }

  controlTransaction<T>(fn: (db: Kysely<ControlDB>) => Promise<T>): Promise<T> {
    return this.control.transaction().execute(fn);
  }

  async migrateControl(): Promise<MigrationReport> {
    await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(this.#schema)}`.execute(this.#root).catch(async (err: unknown) => {
      // Two nodes starting together may race on CREATE SCHEMA IF NOT EXISTS.
      if ((err as { code?: string }).code !== '23505') throw err;
    });
    await sql`REVOKE ALL ON SCHEMA ${sql.id(this.#schema)} FROM PUBLIC`.execute(this.#root);
    const applied = await runMigrations({
      migrations: controlMigrations,
      adapter: this.adapter,
      transaction: (fn) => this.control.transaction().execute(fn),
      lock: (db) => this.#advisoryLock(db, `migrate:${this.#schema}`),
      now: () => this.#clock.now(),
    });
    return { applied };
  }

  async #advisoryLock(db: Kysely<any>, key: string): Promise<void> {
    await sql`SELECT pg_advisory_xact_lock(hashtext(${key}))`.execute(db);
  }

  tenant(tenantId: string): TenantStore {
    return new PostgresTenantStore(this.#root as Kysely<TenantDB>, tenantId);
  }

  async createTenantStore(tenantId: string): Promise<void> {
    const { schema, role } = tenantIdentifiers(tenantId);
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `tenant:${tenantId}`);
      const exists = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ${role}`.execute(trx);
      if (exists.rows[0]?.n === 0) {
        await sql`CREATE ROLE ${sql.id(role)} NOLOGIN NOINHERIT`.execute(trx);
      }
      // Lets the connecting role SET ROLE to the tenant role (a no-op for superusers).
      await sql`GRANT ${sql.id(role)} TO CURRENT_USER`.execute(trx);
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
      // DDL runs as the owner with the tenant schema first on the path; the tenant role only gets DML.
      transaction: (fn) =>
        this.#root.transaction().execute(async (trx) => {
          await sql.raw(`SET LOCAL search_path TO "${schema}"`).execute(trx);
          return fn(trx);
        }),
      lock: (db) => this.#advisoryLock(db, `tenant:${tenantId}`),
      now: () => this.#clock.now(),
    });
    await sql`REVOKE ALL ON ${sql.id(schema, MIGRATIONS_TABLE)} FROM ${sql.id(role)}`.execute(this.#root);
    return { applied };
  }

  async dropTenantStore(tenantId: string): Promise<void> {
    const { schema, role } = tenantIdentifiers(tenantId);
    await this.#root.transaction().execute(async (trx) => {
      await this.#advisoryLock(trx, `tenant:${tenantId}`);
      await sql`DROP SCHEMA IF EXISTS ${sql.id(schema)} CASCADE`.execute(trx);
      const exists = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_roles WHERE rolname = ${role}`.execute(trx);
      if (exists.rows[0]?.n !== 0) {
        await sql`DROP OWNED BY ${sql.id(role)}`.execute(trx);
        await sql`DROP ROLE ${sql.id(role)}`.execute(trx);
      }
    });
  }

  async tenantStoreExists(tenantId: string): Promise<boolean> {
    const { schema } = tenantIdentifiers(tenantId);
    const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = ${schema}`.execute(this.#root);
    return (r.rows[0]?.n ?? 0) > 0;
  }

  locateTenantStore(tenantId: string): TenantStoreLocation {
    return { kind: 'postgres', ...tenantIdentifiers(tenantId) };
  }

  async ping(): Promise<void> {
    await sql`SELECT 1`.execute(this.#root);
  }

  async close(): Promise<void> {
    await this.#root.destroy();
  }
}
