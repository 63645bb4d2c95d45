import { existsSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Kysely, SqliteDialect, sql } from 'kysely';
import { CustosError } from '../../core/errors.js';
import { isId } from '../../core/ids.js';
import type { Clock } from '../../core/clock.js';
import { sqliteAdapter } from '../adapter.js';
import { runMigrations } from '../migrations/migration.js';
import { controlMigrations } from '../migrations/control/index.js';
import { tenantMigrations } from '../migrations/tenant/index.js';
import type { ControlDB, TenantDB } from '../schema.js';
import type { MigrationReport, Storage, TenantStore, TenantStoreLocation } from '../storage.js';
import type Database from 'better-sqlite3';
import { BUSY_TIMEOUT_MS, cachingSqliteDatabase, openSqliteFile, type OpenSqliteOptions } from './sqlite-database.js';
import { WalCheckpointer, type WalCheckpointerOptions } from './wal-checkpointer.js';

const SQLITE_BUSY = /^SQLITE_BUSY/;

/**
 * `BEGIN IMMEDIATE`, waiting for another process's write lock without
 * blocking the event loop: on a connection opened with a busy timeout of 0,
 * SQLite answers `SQLITE_BUSY` at once and the wait happens here, between
 * turns of the event loop (first at once, then 1 ms, 2 ms … up to 5 ms
 * apart), for at most {@link BUSY_TIMEOUT_MS} in all. (SQLite's own busy
 * handler sleeps in the calling thread: with `serve --workers`, every commit
 * of one worker stalled the other's requests while it waited.) On a
 * connection with a busy timeout of its own, SQLite has waited already.
 */
async function beginImmediate<DB>(conn: Kysely<DB>): Promise<void> {
  const deadline = performance.now() + BUSY_TIMEOUT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      await sql`begin immediate`.execute(conn);
      return;
    } catch (err) {
      if (!SQLITE_BUSY.test((err as { code?: string }).code ?? '') || performance.now() >= deadline) throw err;
      await new Promise((resolve) => (attempt < 2 ? setImmediate(resolve) : setTimeout(resolve, Math.min(5, attempt - 1))));
    }
  }
}

/**
 * Runs `fn` in a write transaction that takes SQLite's write lock up front
 * (`BEGIN IMMEDIATE`), so two processes never deadlock upgrading a read lock.
 * Kysely's SQLite driver has one connection guarded by a mutex: transactions
 * of one process run one after another.
 */
export async function sqliteWriteTransaction<DB, T>(db: Kysely<DB>, fn: (db: Kysely<DB>) => Promise<T>): Promise<T> {
  return db.connection().execute(async (conn) => {
    await beginImmediate(conn);
    let result: T;
    try {
      result = await fn(conn);
    } catch (err) {
      await sql`rollback`.execute(conn).catch(() => undefined);
      throw err;
    }
    await sql`commit`.execute(conn);
    return result;
  });
}

/**
 * Runs read-only `fn` as plain statements on the store's connection, each
 * statement its own snapshot — the guarantee PostgreSQL's `read` gives too —
 * without the BEGIN and COMMIT a deferred transaction would cost every read
 * (through Kysely, about a tenth of a single-record GET's CPU).
 */
export async function sqlitePlainRead<DB, T>(db: Kysely<DB>, fn: (db: Kysely<DB>) => Promise<T>): Promise<T> {
  return db.connection().execute(fn);
}

function openKysely<DB>(file: string, options: OpenSqliteOptions): Kysely<DB> {
  return openConnection<DB>(file, options).db;
}

function openConnection<DB>(file: string, options: OpenSqliteOptions): { db: Kysely<DB>; raw: Database.Database } {
  const database = cachingSqliteDatabase(openSqliteFile(file, options));
  return { db: new Kysely<DB>({ dialect: new SqliteDialect({ database }) }), raw: database.raw };
}

/**
 * A tenant's two connections in this process. WAL lets one writer and any
 * number of readers work at once, so reads do not queue behind a write
 * transaction of this process (Kysely holds a connection for the whole of a
 * transaction, awaits included: a 10,000-record merge held every sign-in and
 * `GET` of its tenant for its duration). The writer waits for other
 * processes' write locks asynchronously (busy timeout 0, see
 * `beginImmediate`); the reader refuses writes and is opened on first read.
 */
interface TenantConnections {
  readonly writer: Kysely<TenantDB>;
  readonly writerHandle: Database.Database;
  reader: Kysely<TenantDB> | undefined;
}

async function closeConnections(c: TenantConnections): Promise<void> {
  await Promise.all([c.writer.destroy(), c.reader?.destroy()]);
}

class SqliteTenantStore implements TenantStore {
  readonly tenantId: string;
  readonly #storage: SqliteStorage;
  constructor(storage: SqliteStorage, tenantId: string) {
    this.#storage = storage;
    this.tenantId = tenantId;
  }
  async transaction<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    const result = await sqliteWriteTransaction(this.#storage.openTenant(this.tenantId), fn);
    this.#storage.afterCommit(this.tenantId);
    return result;
  }
  async read<T>(fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
    return sqlitePlainRead(this.#storage.tenantReader(this.tenantId), fn);
  }
}

/**
 * The embedded default: `control.db` plus one SQLite file per tenant under
 * `<dataDir>/tenants/`. A tenant's file holds that tenant's data and nothing
 * else; no connection ever has two tenants' files open.
 */
export class SqliteStorage implements Storage {
  readonly adapter = sqliteAdapter;
  readonly control: Kysely<ControlDB>;
  readonly #dataDir: string;
  readonly #clock: Clock;
  readonly #tenants = new Map<string, TenantConnections>();
  readonly #checkpointer: WalCheckpointer;

  /** `checkpoints`: how the WAL checkpointer runs (tests shorten its interval or give it a failing worker). */
  constructor(dataDir: string, clock: Clock, opts: { checkpoints?: Omit<WalCheckpointerOptions, 'onUnavailable'> } = {}) {
    this.#dataDir = dataDir;
    this.#clock = clock;
    this.#checkpointer = new WalCheckpointer({
      ...opts.checkpoints,
      // Without the worker, the write connections checkpoint in their commits again, as SQLite does by default.
      onUnavailable: () => {
        for (const c of this.#tenants.values()) c.writerHandle.pragma('wal_autocheckpoint = 1000');
      },
    });
    mkdirSync(path.join(dataDir, 'tenants'), { recursive: true, mode: 0o700 });
    this.control = openKysely<ControlDB>(path.join(dataDir, 'control.db'), { fileMustExist: false });
  }

  controlTransaction<T>(fn: (db: Kysely<ControlDB>) => Promise<T>): Promise<T> {
    return sqliteWriteTransaction(this.control, fn);
  }

  async migrateControl(): Promise<MigrationReport> {
    const applied = await runMigrations({
      migrations: controlMigrations,
      adapter: this.adapter,
      transaction: (fn) => sqliteWriteTransaction(this.control, fn),
      now: () => this.#clock.now(),
    });
    return { applied };
  }

  /** Tenant file paths by id (path.join cost ~3 µs, and every request asks for its tenant's store several times). */
  readonly #files = new Map<string, string>();

  #tenantFile(tenantId: string): string {
    let file = this.#files.get(tenantId);
    if (file === undefined) {
      if (!isId(tenantId)) throw new TypeError('not a tenant id');
      file = path.join(this.#dataDir, 'tenants', `${tenantId}.db`);
      // Bounded: ids only enter once valid, and a deployment holds a bounded number of tenants; dropped stores leave.
      this.#files.set(tenantId, file);
    }
    return file;
  }

  #connections(tenantId: string, fileMustExist = true): TenantConnections {
    let c = this.#tenants.get(tenantId);
    if (!c) {
      const file = this.#tenantFile(tenantId);
      if (fileMustExist && !existsSync(file)) throw new CustosError('tenant_not_found');
      const { db, raw } = openConnection<TenantDB>(file, { fileMustExist, busyTimeoutMs: 0, autoCheckpoint: !this.#checkpointer.available, memoryMap: true });
      c = { writer: db, writerHandle: raw, reader: undefined };
      this.#tenants.set(tenantId, c);
    }
    return c;
  }

  /** What the WAL checkpointer has done (tests, diagnostics). */
  get checkpoints(): WalCheckpointer {
    return this.#checkpointer;
  }

  /** Notes a committed write transaction of a tenant: its WAL is checkpointed in the background. */
  afterCommit(tenantId: string): void {
    this.#checkpointer.afterCommit(this.#tenantFile(tenantId));
  }

  /** The tenant's write connection (transactions), opened on first use. Fails if the store does not exist. */
  openTenant(tenantId: string): Kysely<TenantDB> {
    return this.#connections(tenantId).writer;
  }

  /** The tenant's read connection (plain reads), opened on first use. Fails if the store does not exist. */
  tenantReader(tenantId: string): Kysely<TenantDB> {
    const c = this.#connections(tenantId);
    c.reader ??= openKysely<TenantDB>(this.#tenantFile(tenantId), { fileMustExist: true, queryOnly: true });
    return c.reader;
  }

  tenant(tenantId: string): TenantStore {
    this.#tenantFile(tenantId);
    return new SqliteTenantStore(this, tenantId);
  }

  async createTenantStore(tenantId: string): Promise<void> {
    this.#connections(tenantId, false);
    await this.migrateTenant(tenantId);
    await sqliteWriteTransaction(this.openTenant(tenantId), async (db) => {
      await db
        .insertInto('store_meta')
        .values({ key: 'tenant_id', value: tenantId })
        .onConflict((oc) => oc.column('key').doNothing())
        .execute();
    });
  }

  async migrateTenant(tenantId: string): Promise<MigrationReport> {
    const db = this.openTenant(tenantId);
    const applied = await runMigrations({
      migrations: tenantMigrations,
      adapter: this.adapter,
      transaction: (fn) => sqliteWriteTransaction(db, fn),
      now: () => this.#clock.now(),
    });
    return { applied };
  }

  async dropTenantStore(tenantId: string): Promise<void> {
    const file = this.#tenantFile(tenantId);
    const c = this.#tenants.get(tenantId);
    this.#tenants.delete(tenantId);
    if (c) await closeConnections(c);
    // After the connections closed, so that no commit of theirs notes the file again; before the files go.
    await this.#checkpointer.forget(file);
    for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(file + suffix, { force: true });
    this.#files.delete(tenantId);
  }

  /** SQLite tenant stores have no credentials of their own. */
  async rekeyTenantRoles(): Promise<void> {}

  async tenantStoreExists(tenantId: string): Promise<boolean> {
    return Promise.resolve(existsSync(this.#tenantFile(tenantId)));
  }

  async refreshStatistics(): Promise<void> {}

  locateTenantStore(tenantId: string): TenantStoreLocation {
    return { kind: 'sqlite', file: this.#tenantFile(tenantId) };
  }

  async ping(): Promise<void> {
    await sql`select 1`.execute(this.control);
  }

  async close(): Promise<void> {
    await this.#checkpointer.close();
    const all = [...this.#tenants.values()];
    this.#tenants.clear();
    await Promise.all(all.map(closeConnections));
    await this.control.destroy();
  }
}
