import Database from 'better-sqlite3';
import type { SqliteDatabase, SqliteStatement } from 'kysely';

/** Statements kept prepared per connection; past this the oldest is dropped. */
const STATEMENT_CACHE_SIZE = 256;

/** How long SQLite itself waits for a lock another process holds, unless told otherwise. */
export const BUSY_TIMEOUT_MS = 10_000;

export interface OpenSqliteOptions {
  readonly?: boolean;
  fileMustExist?: boolean;
  /**
   * SQLite's own wait for a lock (default {@link BUSY_TIMEOUT_MS}). Its wait
   * sleeps in the calling thread — for a server, the event loop — so
   * connections whose waits can be made asynchronous (a tenant's write
   * connection: see `sqliteWriteTransaction`) open with 0.
   */
  busyTimeoutMs?: number;
  /** Refuse every write on this connection (`query_only`): a connection meant for reads only. */
  queryOnly?: boolean;
  /**
   * Whether this connection's commits checkpoint the WAL once it passes 1,000
   * pages (SQLite's default, true). A server's write connections leave it to
   * a worker thread (see `WalCheckpointer`).
   */
  autoCheckpoint?: boolean;
  /**
   * Read the database file through a memory map (up to SQLite's 2 GiB)
   * instead of a `pread` per page that is not in the page cache: for a
   * tenant's write connection, whose large writes probe indexes much larger
   * than the page cache (an import's uniqueness checks through the lookup
   * keys). Writes still go through the WAL.
   */
  memoryMap?: boolean;
}

/** SQLite's largest memory map as compiled here (its default SQLITE_MAX_MMAP_SIZE). */
const MMAP_BYTES = 0x7fff0000;

/**
 * Opens a SQLite file with Custos's durability settings: WAL journal with
 * `synchronous=FULL` (no acknowledged commit is lost on power loss), foreign
 * keys on, and a busy timeout so a CLI command and a running server can share
 * the file.
 */
export function openSqliteFile(file: string, options: OpenSqliteOptions = {}): Database.Database {
  const db = new Database(file, { readonly: options.readonly ?? false, fileMustExist: options.fileMustExist ?? false });
  // Opening waits as usual (another process may hold a lock while this one sets the journal mode).
  db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
  if (!options.readonly) db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  // Up to 32 MiB of page cache per connection (allocated as used): large lists keep their indexes in memory.
  db.pragma('cache_size = -32768');
  if (options.queryOnly) db.pragma('query_only = ON');
  if (options.autoCheckpoint === false) db.pragma('wal_autocheckpoint = 0');
  if (options.memoryMap) db.pragma(`mmap_size = ${MMAP_BYTES}`);
  const busy = Math.max(0, Math.floor(options.busyTimeoutMs ?? BUSY_TIMEOUT_MS));
  if (busy !== BUSY_TIMEOUT_MS) db.pragma(`busy_timeout = ${busy}`);
  return db;
}

/**
 * Wraps a better-sqlite3 handle for Kysely with a bounded prepared-statement
 * cache: Kysely prepares every query afresh, which costs more than running it.
 */
export function cachingSqliteDatabase(db: Database.Database): SqliteDatabase & { raw: Database.Database } {
  const cache = new Map<string, SqliteStatement>();
  return {
    raw: db,
    close() {
      cache.clear();
      db.close();
    },
    prepare(sqlText: string): SqliteStatement {
      let stmt = cache.get(sqlText);
      if (stmt) {
        cache.delete(sqlText);
        cache.set(sqlText, stmt);
        return stmt;
      }
      stmt = db.prepare(sqlText);
      cache.set(sqlText, stmt);
      if (cache.size > STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value!);
      return stmt;
    },
  };
}
