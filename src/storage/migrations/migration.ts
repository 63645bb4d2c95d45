import { sql, type Kysely } from 'kysely';
import { failpoint } from '../../core/failpoint.js';
import type { StorageAdapter } from '../adapter.js';

/**
 * One versioned schema change. Names sort in the order they apply
 * (`0001_init`, `0002_…`). A migration runs in its own transaction together
 * with the row that records it, so a crash leaves it either applied and
 * recorded or neither: the next run resumes where the last one stopped.
 */
export interface Migration {
  readonly name: string;
  up(db: Kysely<any>, adapter: StorageAdapter): Promise<void>;
}

export const MIGRATIONS_TABLE = 'custos_migrations';

export interface MigrationRunnerOptions {
  migrations: readonly Migration[];
  adapter: StorageAdapter;
  /** Runs `fn` in one write transaction of the store being migrated. */
  transaction: <T>(fn: (db: Kysely<any>) => Promise<T>) => Promise<T>;
  /** Serialises concurrent migrators inside the transaction (PostgreSQL advisory lock); SQLite's write lock does it already. */
  lock?: (db: Kysely<any>) => Promise<void>;
  now: () => number;
}

/** Applies every pending migration in order; returns the names applied. */
export async function runMigrations(opts: MigrationRunnerOptions): Promise<string[]> {
  const names = opts.migrations.map((m) => m.name);
  if (new Set(names).size !== names.length || names.some((n, i) => i > 0 && n <= names[i - 1]!)) {
    throw new TypeError('migration names must be unique and in ascending order');
  }
  await opts.transaction(async (db) => {
    await db.schema
      .createTable(MIGRATIONS_TABLE)
      .ifNotExists()
      .addColumn('name', 'text', (c) => c.primaryKey())
      .addColumn('applied_at', opts.adapter.bigintType, (c) => c.notNull())
      .execute();
  });
  const applied: string[] = [];
  for (const migration of opts.migrations) {
    const done = await opts.transaction(async (db) => {
      if (opts.lock) await opts.lock(db);
      const row = await db
        .selectFrom(MIGRATIONS_TABLE)
        .select('name')
        .where('name', '=', migration.name)
        .executeTakeFirst();
      if (row) return false;
      await migration.up(db, opts.adapter);
      await db.insertInto(MIGRATIONS_TABLE).values({ name: migration.name, applied_at: opts.now() }).execute();
      return true;
    });
    if (done) applied.push(migration.name);
    failpoint(`migrate:after:${migration.name}`);
  }
  return applied;
}

/** Names recorded as applied, in order. */
export async function appliedMigrations(db: Kysely<any>): Promise<string[]> {
  const rows = await db.selectFrom(MIGRATIONS_TABLE).select('name').orderBy('name').execute();
  return rows.map((r: { name: string }) => r.name);
}

/** `sql` helper for raw statements in migrations. */
export { sql };
