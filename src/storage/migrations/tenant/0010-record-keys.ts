import { sql } from 'kysely';
import type { Migration } from '../migration.js';

/** The lookup-key tables of SQLite stores, by the `records` column each mirrors. */
export const RECORD_KEY_TABLES = {
  k_sha256: 'record_keys_sha256',
  k_md5: 'record_keys_md5',
  k_mobile: 'record_keys_mobile',
} as const;

/** The recent entries of each lookup-key table (migration 0011), by the same `records` column. */
export const RECENT_KEY_TABLES = {
  k_sha256: 'record_keys_sha256_recent',
  k_md5: 'record_keys_md5_recent',
  k_mobile: 'record_keys_mobile_recent',
} as const;

/** Per lookup-key table: its entries at its last fold, and the entries added to its recent table since. */
export const RECORD_KEYS_STATE = 'record_keys_state';

/**
 * SQLite only: the three lookup keys of records (48-bit prefixes of the
 * SHA-256 and MD5 oHashes and of the mobile number's blind index) move from
 * indexes on `records` into three small `WITHOUT ROWID` tables
 * `(list_key, k, seq)`, which a batch fills one table at a time in key order.
 *
 * Why: the keys are random, so at a million records every 10,000-record
 * batch dirtied nearly every leaf page of the three indexes, and SQLite
 * writes each dirty page to the WAL in full (docs/PERFORMANCE.md: plain SQL
 * into the records table ran at 16,000 rows/s with the indexes, 38,000 with
 * these tables). `seq` is a per-list record number (unique with `list_key`),
 * because an index entry that names the record by its 26-character id is
 * twice the size, and SQLite's own rowid may change on `VACUUM`.
 *
 * PostgreSQL keeps the indexes on `records`: there each key would become a
 * heap tuple plus an index entry, and its import got slower when tried.
 */
export const recordKeysMigrations: readonly Migration[] = [
  {
    name: '0010_record_keys',
    async up(db, adapter) {
      if (adapter.kind !== 'sqlite') return;
      await db.schema.alterTable('records').addColumn('seq', 'integer').execute();
      // Existing records are numbered per list in id order (ids are time-ordered).
      await sql`update records set seq = n.seq from (select rowid as rid, row_number() over (partition by list_key order by id) as seq from records) as n where records.rowid = n.rid`.execute(db);
      await db.schema.createIndex('records_seq_idx').on('records').columns(['list_key', 'seq']).unique().execute();
      for (const [column, table] of Object.entries(RECORD_KEY_TABLES)) {
        await sql`create table ${sql.table(table)} (list_key integer not null, k integer not null, seq integer not null, primary key (list_key, k, seq)) without rowid`.execute(db);
        await sql`insert into ${sql.table(table)} (list_key, k, seq) select list_key, ${sql.ref(column)}, seq from records where ${sql.ref(column)} is not null order by list_key, ${sql.ref(column)}, seq`.execute(db);
      }
      await db.schema.dropIndex('records_sha256_idx').execute();
      await db.schema.dropIndex('records_md5_idx').execute();
      await db.schema.dropIndex('records_mobile_idx').execute();
    },
  },
  {
    name: '0011_record_keys_recent',
    /**
     * SQLite only: new key entries go to a small table of recent entries
     * beside each key table, folded into it in key order once an eighth as
     * many have been added (see `RecordKeys`). `record_keys_state` keeps,
     * per key table, its size at the last fold and the entries added since.
     *
     * Why: a batch's keys are random, so a batch of 10,000 dirtied nearly
     * every leaf page of each key table — at 1,000,000 records about 6,000
     * pages per table, written to the WAL in full at every commit, then
     * checkpointed — and the import slowed as the list grew (raw SQL, same
     * machine state: 38,000 rows/s over the first 200,000 records, 23,000
     * over the last). Inserting into the recent tables touches a few hundred
     * pages; folds rewrite a key table's pages once per ~12 batches
     * (1,000,000 records in 40,900 rows/s against 28,800, docs/PERFORMANCE.md).
     */
    async up(db, adapter) {
      if (adapter.kind !== 'sqlite') return;
      await sql`create table ${sql.table(RECORD_KEYS_STATE)} (tbl text primary key, folded integer not null, added integer not null) without rowid`.execute(db);
      for (const column of Object.keys(RECORD_KEY_TABLES) as (keyof typeof RECORD_KEY_TABLES)[]) {
        await sql`create table ${sql.table(RECENT_KEY_TABLES[column])} (list_key integer not null, k integer not null, seq integer not null, primary key (list_key, k, seq)) without rowid`.execute(db);
        const main = RECORD_KEY_TABLES[column];
        await sql`insert into ${sql.table(RECORD_KEYS_STATE)} (tbl, folded, added) select ${main}, count(*), 0 from ${sql.table(main)}`.execute(db);
      }
    },
  },
];

