import type { Kysely } from 'kysely';
import type { StorageAdapter } from './adapter.js';
import type { ControlDB, TenantDB } from './schema.js';

/**
 * One tenant's store. Every query runs inside {@link TenantStore.transaction};
 * the handle it passes can reach this tenant's tables and nothing else (its own
 * SQLite file, or in PostgreSQL the tenant's role and schema).
 */
export interface TenantStore {
  readonly tenantId: string;
  /** Runs `fn` in one transaction bound to this tenant. Commits when `fn` resolves, rolls back when it throws. */
  transaction<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T>;
  /**
   * Runs read-only `fn` without a transaction: plain statements on one of the
   * tenant's connections, each statement its own snapshot (no BEGIN and
   * COMMIT: on PostgreSQL two round trips, on SQLite a tenth of a
   * single-record read's CPU). `fn` must tolerate changes between its
   * statements; reads that need one snapshot, and writes, belong in
   * {@link transaction}.
   */
  read<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T>;
}

/** Where a tenant's data lives, for `tenant show` and operators. */
export type TenantStoreLocation =
  | { kind: 'sqlite'; file: string }
  | { kind: 'postgres'; schema: string; role: string };

export interface MigrationReport {
  applied: string[];
}

/**
 * The storage backend: the control plane plus one store per tenant. Two
 * implementations, SQLite files and PostgreSQL schemas, behind one contract.
 */
export interface Storage {
  readonly adapter: StorageAdapter;
  /** Control-plane queries outside a transaction (reads, single statements). */
  readonly control: Kysely<ControlDB>;
  /** Runs `fn` in one control-plane write transaction. */
  controlTransaction<T>(fn: (db: Kysely<ControlDB>) => Promise<T>): Promise<T>;
  migrateControl(): Promise<MigrationReport>;
  /** A handle on a tenant's store; no I/O until it is used. */
  tenant(tenantId: string): TenantStore;
  /** Creates an empty tenant store and applies every tenant migration. Idempotent. */
  createTenantStore(tenantId: string): Promise<void>;
  /** Applies pending tenant migrations to an existing store. */
  migrateTenant(tenantId: string): Promise<MigrationReport>;
  /** Destroys the store and everything in it. Idempotent. */
  dropTenantStore(tenantId: string): Promise<void>;
  tenantStoreExists(tenantId: string): Promise<boolean>;
  /**
   * Sets new credentials for tenants' database roles inside the caller's
   * control-plane transaction (PostgreSQL, after a master-key rotation); a
   * no-op where stores have no credentials.
   */
  rekeyTenantRoles(db: Kysely<ControlDB>, tenantIds: readonly string[], password: (tenantId: string) => string): Promise<void>;
  locateTenantStore(tenantId: string): TenantStoreLocation;
  /**
   * Refreshes the query planner's statistics of some of a tenant's tables
   * after bulk writes (PostgreSQL `ANALYZE`, run by the service account: the
   * tenant role owns no tables). A no-op on SQLite, whose planner does not
   * need them for Custos's queries.
   */
  refreshStatistics(tenantId: string, tables: readonly string[]): Promise<void>;
  /** Checks the backend answers (for /readyz). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
