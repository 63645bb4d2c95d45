import { sql, type Kysely, type SelectQueryBuilder } from 'kysely';
import { chunks } from '../core/chunks.js';
import type { StorageAdapter } from '../storage/adapter.js';
import { RECENT_KEY_TABLES, RECORD_KEY_TABLES, RECORD_KEYS_STATE } from '../storage/migrations/tenant/0010-record-keys.js';
import { MultiRowInsert } from '../storage/multi-row-insert.js';
import type { TenantDB } from '../storage/schema.js';
import type { TenantStore } from '../storage/storage.js';

/** A `records` column holding a lookup key: 48-bit prefixes of the SHA-256 and MD5 oHashes and of the mobile blind index. */
export type KeyColumn = keyof typeof RECORD_KEY_TABLES;
const KEY_COLUMNS = Object.keys(RECORD_KEY_TABLES) as KeyColumn[];

/** A record's lookup keys and its number in its list. */
export interface KeyedRecord {
  seq: number;
  k_sha256: number | null;
  k_md5: number | null;
  k_mobile: number | null;
}

/** Entries per multi-row delete of key entries (2 parameters each). */
const CHUNK = 300;
/** Entries per multi-row insert (see `MultiRowInsert`). */
const INSERT_SIZES = [300, 50, 10, 1] as const;

/**
 * When a recent table is folded into its key table: once the entries added
 * to it since the last fold reach `ratio`-th of the key table's (and at
 * least `min`). Each batch then touches the recent table's few hundred
 * pages, and a fold rewrites the key table's pages once per `ratio` times
 * its size in new entries. A fold moves `step` entries per transaction, in
 * key order, so that each holds the tenant's write lock for a slice of the
 * key range only (at 1,000,000 entries a whole fold took ~135 ms per table;
 * at tens of millions it would take seconds).
 */
export interface FoldPolicy {
  min: number;
  ratio: number;
  step: number;
}
export const DEFAULT_FOLD: FoldPolicy = { min: 50_000, ratio: 8, step: 20_000 };

/**
 * Where a tenant store keeps the lookup keys of records. SQLite: in three
 * tables of their own (`record_keys_*`, see migration 0010), which every
 * write of a record keeps in step with its `k_*` columns, inside the same
 * transaction; records are found through them by `(list_key, seq)`. New
 * entries go to each table's recent table (`record_keys_*_recent`,
 * migration 0011), which is folded into the table, in key order, when it
 * has grown enough (`FoldPolicy`); an entry is in exactly one of the two,
 * and look-ups read both.
 * PostgreSQL: in indexes on the `k_*` columns of `records`, which the
 * database keeps; nothing to do here.
 */
export class RecordKeys {
  readonly tables: boolean;
  readonly #inserts: Record<KeyColumn, MultiRowInsert>;
  readonly #fold: FoldPolicy;

  constructor(adapter: StorageAdapter, fold: FoldPolicy = DEFAULT_FOLD) {
    this.tables = adapter.kind === 'sqlite';
    this.#fold = fold;
    const insert = (table: string) => new MultiRowInsert(table, ['list_key', 'k', 'seq'], INSERT_SIZES, adapter);
    this.#inserts = { k_sha256: insert(RECENT_KEY_TABLES.k_sha256), k_md5: insert(RECENT_KEY_TABLES.k_md5), k_mobile: insert(RECENT_KEY_TABLES.k_mobile) };
  }

  /**
   * Narrows a query over `records` of list `listKey` to records whose key
   * `column` is one of `ks` (a hit on a 48-bit key is a candidate, to be
   * confirmed on the full value by the caller).
   */
  whereKey<O>(q: SelectQueryBuilder<TenantDB, 'records', O>, db: Kysely<TenantDB>, listKey: number, column: KeyColumn, ks: number[]): SelectQueryBuilder<TenantDB, 'records', O> {
    if (!this.tables) return ks.length === 1 ? q.where(`records.${column}`, '=', ks[0]!) : q.where(`records.${column}`, 'in', ks);
    const seqs = db
      .selectFrom(RECORD_KEY_TABLES[column])
      .select('seq')
      .where('list_key', '=', listKey)
      .where('k', 'in', ks)
      .unionAll(db.selectFrom(RECENT_KEY_TABLES[column]).select('seq').where('list_key', '=', listKey).where('k', 'in', ks));
    return q.where('records.list_key', '=', listKey).where('records.seq', 'in', seqs);
  }

  /** The first free record number of a list (SQLite), for records about to be inserted under the list's write lock. */
  async nextSeq(db: Kysely<TenantDB>, listKey: number): Promise<number> {
    const r = await db
      .selectFrom('records')
      .select((eb) => eb.fn.max('seq').as('m'))
      .where('list_key', '=', listKey)
      .executeTakeFirst();
    return Number(r?.m ?? 0) + 1;
  }

  /**
   * Adds the key entries of records just inserted or re-keyed (SQLite) to
   * the recent tables, each table's in key order, and counts them towards
   * the next fold. The caller holds the write transaction; answers whether
   * a recent table is now due for {@link foldDue}, after the commit.
   */
  async add(db: Kysely<TenantDB>, listKey: number, records: readonly KeyedRecord[]): Promise<boolean> {
    let due = false;
    if (!this.tables || records.length === 0) return due;
    for (const column of KEY_COLUMNS) {
      const entries = records
        .filter((r) => r[column] !== null)
        .map((r) => [r[column]!, r.seq] as const)
        .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      if (entries.length === 0) continue;
      await this.#inserts[column].run(db, entries.flatMap(([k, seq]) => [listKey, k, seq]));
      const state = await db
        .updateTable(RECORD_KEYS_STATE)
        .set((eb) => ({ added: eb('added', '+', entries.length) }))
        .where('tbl', '=', RECORD_KEY_TABLES[column])
        .returning(['folded', 'added'])
        .executeTakeFirstOrThrow();
      due ||= this.#due(state);
    }
    return due;
  }

  #due(state: { folded: number; added: number }): boolean {
    return state.added >= Math.max(this.#fold.min, state.folded / this.#fold.ratio);
  }

  /**
   * Folds each recent table that has grown enough into its key table
   * (SQLite), `step` entries per transaction of its own, after the writes
   * that filled it have committed. Look-ups find the same records at every
   * step; another process folding at the same time only finds less to move.
   */
  async foldDue(store: TenantStore): Promise<void> {
    if (!this.tables) return;
    const states = await store.read((db) => db.selectFrom(RECORD_KEYS_STATE).selectAll().execute());
    for (const column of KEY_COLUMNS) {
      const state = states.find((st) => st.tbl === RECORD_KEY_TABLES[column]);
      if (!state || !this.#due(state)) continue;
      while (!(await store.transaction((db) => this.foldStep(db, column, this.#fold.step))));
    }
  }

  /** Moves every entry of a recent table into its key table in one transaction (the caller's). */
  async fold(db: Kysely<TenantDB>, column: KeyColumn): Promise<void> {
    await this.foldStep(db, column, Number.MAX_SAFE_INTEGER);
  }

  /**
   * Moves the first `limit` entries of a recent table, in key order, into its
   * key table (SQLite; the caller holds the write transaction). When that
   * empties the recent table, records the key table's size and answers true.
   */
  async foldStep(db: Kysely<TenantDB>, column: KeyColumn, limit: number): Promise<boolean> {
    if (!this.tables) return true;
    const main = sql.table(RECORD_KEY_TABLES[column]);
    const recent = sql.table(RECENT_KEY_TABLES[column]);
    const { rows } = await sql<{ list_key: number; k: number; seq: number }>`select list_key, k, seq from ${recent} order by list_key, k, seq limit 1 offset ${limit}`.execute(db);
    const bound = rows[0];
    if (bound) {
      const before = sql`(list_key, k, seq) < (${bound.list_key}, ${bound.k}, ${bound.seq})`;
      await sql`insert into ${main} (list_key, k, seq) select list_key, k, seq from ${recent} where ${before} order by list_key, k, seq`.execute(db);
      await sql`delete from ${recent} where ${before}`.execute(db);
      return false;
    }
    await sql`insert into ${main} (list_key, k, seq) select list_key, k, seq from ${recent} order by list_key, k, seq`.execute(db);
    await sql`delete from ${recent}`.execute(db);
    await sql`update ${sql.table(RECORD_KEYS_STATE)} set folded = (select count(*) from ${main}), added = 0 where tbl = ${RECORD_KEY_TABLES[column]}`.execute(db);
    return true;
  }

  /** Removes the key entries of records about to be deleted or re-keyed (SQLite), given their current keys. */
  async remove(db: Kysely<TenantDB>, listKey: number, records: readonly KeyedRecord[]): Promise<void> {
    if (!this.tables || records.length === 0) return;
    for (const column of KEY_COLUMNS) {
      const entries = records.filter((r) => r[column] !== null).map((r) => sql`(${r[column]}, ${r.seq})`);
      for (const part of chunks(entries, CHUNK)) {
        // Each entry is in one of the two tables.
        for (const table of [RECORD_KEY_TABLES[column], RECENT_KEY_TABLES[column]]) {
          await sql`delete from ${sql.table(table)} where list_key = ${listKey} and (k, seq) in (values ${sql.join(part)})`.execute(db);
        }
      }
    }
  }

  /** Removes every key entry of a list (SQLite), when the list is deleted. */
  async removeList(db: Kysely<TenantDB>, listKey: number): Promise<void> {
    if (!this.tables) return;
    for (const column of KEY_COLUMNS) {
      await db.deleteFrom(RECORD_KEY_TABLES[column]).where('list_key', '=', listKey).execute();
      await db.deleteFrom(RECENT_KEY_TABLES[column]).where('list_key', '=', listKey).execute();
    }
  }
}

/** The key entries a record's write changes: what to remove (old keys) and add (new keys), for records already stored. */
export function rekeyed(before: KeyedRecord, after: Omit<KeyedRecord, 'seq'>): { remove: KeyedRecord | null; add: KeyedRecord | null } {
  const changed = KEY_COLUMNS.filter((c) => before[c] !== after[c]);
  if (changed.length === 0) return { remove: null, add: null };
  const pick = (r: Omit<KeyedRecord, 'seq'>): KeyedRecord => ({
    seq: before.seq,
    k_sha256: changed.includes('k_sha256') ? r.k_sha256 : null,
    k_md5: changed.includes('k_md5') ? r.k_md5 : null,
    k_mobile: changed.includes('k_mobile') ? r.k_mobile : null,
  });
  return { remove: pick(before), add: pick(after) };
}
