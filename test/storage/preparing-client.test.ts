import { randomBytes } from 'node:crypto';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_NAMED_STATEMENTS as MAX_NAMED_STATEMENTS, PreparingClient, preparingClient } from '../../src/storage/postgres/preparing-client.js';
import { postgresUrl } from '../helpers/storage-kinds.js';

// PostgreSQL only: named prepared statements are a PostgreSQL protocol feature (SQLite's statements are
// prepared once per connection by the statement cache in sqlite-database.ts).
(postgresUrl() === null ? describe.skip : describe)('PostgreSQL named prepared statements [postgres]', () => {
  const schema = `prep_test_${randomBytes(5).toString('hex')}`;
  let admin: pg.Client;

  /** A one-connection pool of preparing clients, so every statement meets the same server session. */
  function onePool(Client: typeof pg.Client = PreparingClient): { pool: pg.Pool; db: Kysely<any> } {
    const pool = new pg.Pool({ connectionString: postgresUrl()!, max: 1, Client, options: `-c search_path=${schema}` });
    return { pool, db: new Kysely<any>({ dialect: new PostgresDialect({ pool }) }) };
  }
  /** The server's own list of this session's prepared statements (protocol-level ones only). */
  const prepared = async (db: Kysely<any>) =>
    (await sql<{ name: string; statement: string }>`select name, statement from pg_prepared_statements where not from_sql order by name`.execute(db)).rows;

  beforeAll(async () => {
    admin = new pg.Client({ connectionString: postgresUrl()! });
    await admin.connect();
    await admin.query(`CREATE SCHEMA ${schema}`);
    await admin.query(`CREATE TABLE ${schema}.items (id integer primary key, name text not null)`);
    await admin.query(`INSERT INTO ${schema}.items SELECT g, 'item ' || g FROM generate_series(1, 50) g`);
  });
  afterAll(async () => {
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
  });

  it('parses a query once per connection and reuses it with other parameters, with the same answers', async () => {
    const { db } = onePool();
    try {
      const q = (id: number) => db.selectFrom('items').select(['id', 'name']).where('id', '=', id).executeTakeFirst();
      expect(await q(7)).toEqual({ id: 7, name: 'item 7' });
      expect(await q(8)).toEqual({ id: 8, name: 'item 8' });
      expect(await q(999)).toBeUndefined();
      const mine = (await prepared(db)).filter((p) => p.statement.includes('"items"'));
      expect(mine).toHaveLength(1);
      expect(mine[0]!.name).toMatch(/^k[A-Za-z0-9_-]{22}$/);
      // Writes too, inside a transaction; the transaction's own BEGIN and COMMIT are never named.
      await db.transaction().execute((trx) => trx.updateTable('items').set({ name: 'seven' }).where('id', '=', 7).execute());
      expect(await q(7)).toEqual({ id: 7, name: 'seven' });
      const statements = (await prepared(db)).map((p) => p.statement);
      expect(statements.some((s) => s.startsWith('update "items"'))).toBe(true);
      expect(statements.some((s) => /^\s*(begin|commit)/i.test(s))).toBe(false);
    } finally {
      await db.destroy();
    }
  });

  it('leaves statements that are not plannable (DDL, utility) unnamed', async () => {
    const { db } = onePool();
    try {
      await sql`create temporary table scratch (x integer)`.execute(db);
      await sql`set application_name = 'custos-test'`.execute(db);
      expect((await prepared(db)).filter((p) => /create|set /i.test(p.statement))).toEqual([]);
    } finally {
      await db.destroy();
    }
  });

  it('an error in a named statement is reported as it is, and the statement still works afterwards', async () => {
    const { db } = onePool();
    try {
      const insert = (id: number) => db.insertInto('items').values({ id, name: 'dup' }).execute();
      await expect(insert(1)).rejects.toMatchObject({ code: '23505' });
      await insert(1001);
      await expect(insert(1001)).rejects.toMatchObject({ code: '23505' });
      expect(await db.selectFrom('items').select('name').where('id', '=', 1001).executeTakeFirst()).toEqual({ name: 'dup' });
    } finally {
      await db.destroy();
    }
  });

  it('a statement whose result type changed under it (another node migrated) runs again unnamed and is not named again', async () => {
    await admin.query(`CREATE TABLE ${schema}.evolving (id integer primary key)`);
    await admin.query(`INSERT INTO ${schema}.evolving VALUES (1)`);
    const { db } = onePool();
    try {
      const all = () => db.selectFrom('evolving').selectAll().execute();
      expect(await all()).toEqual([{ id: 1 }]);
      await admin.query(`ALTER TABLE ${schema}.evolving ADD COLUMN note text DEFAULT 'n'`);
      // Without the fallback PostgreSQL answers 0A000 "cached plan must not change result type".
      expect(await all()).toEqual([{ id: 1, note: 'n' }]);
      expect(await all()).toEqual([{ id: 1, note: 'n' }]);
      // Inside a transaction the failed statement aborts it: the cause reaches the caller (not "transaction
      // aborted"), and the next use runs unnamed.
      const inTrx = () => db.transaction().execute((trx) => trx.selectFrom('evolving').selectAll().where('id', '>', 0).execute());
      expect(await inTrx()).toEqual([{ id: 1, note: 'n' }]);
      await admin.query(`ALTER TABLE ${schema}.evolving ADD COLUMN other integer`);
      await expect(inTrx()).rejects.toMatchObject({ code: '0A000' });
      expect(await inTrx()).toEqual([{ id: 1, note: 'n', other: null }]);
    } finally {
      await db.destroy();
    }
  });

  it(`names at most ${MAX_NAMED_STATEMENTS} statements per connection and runs the rest unnamed, with correct answers`, async () => {
    const { db } = onePool();
    try {
      for (let i = 0; i < MAX_NAMED_STATEMENTS + 20; i++) {
        // A distinct text each time (the alias), the same table.
        const row = await sql<{ v: number }>`select id as ${sql.id(`v${i}`)} from items where id = ${(i % 50) + 1}`.execute(db);
        expect(Object.values(row.rows[0]!)[0]).toBe((i % 50) + 1);
      }
      expect((await prepared(db)).length).toBe(MAX_NAMED_STATEMENTS);
    } finally {
      await db.destroy();
    }
  });

  it('a configured limit applies per connection, and 0 turns naming off (databasePreparedStatements)', async () => {
    for (const [limit, expected] of [[3, 3], [0, 0]] as const) {
      const { db } = onePool(preparingClient(limit));
      try {
        for (let i = 0; i < 5; i++) expect((await sql<{ id: number }>`select id as ${sql.id(`c${i}`)} from items where id = ${i + 1}`.execute(db)).rows).toHaveLength(1);
        expect(await prepared(db)).toHaveLength(expected);
      } finally {
        await db.destroy();
      }
    }
  });

  it('passes query objects and callbacks through (the forms Kysely does not use)', async () => {
    const client = new PreparingClient({ connectionString: postgresUrl()!, options: `-c search_path=${schema}` });
    await client.connect();
    try {
      const viaObject = await client.query({ text: 'select name from items where id = $1', values: [3] });
      expect(viaObject.rows).toEqual([{ name: 'item 3' }]);
      const viaCallback = await new Promise<pg.QueryResult>((resolve, reject) => {
        client.query('select name from items where id = $1', [4], (err: Error | null, r?: pg.QueryResult) => (err ? reject(err) : resolve(r!)));
      });
      expect(viaCallback.rows).toEqual([{ name: 'item 4' }]);
      const failed = await new Promise<Error | null>((resolve) => {
        client.query('select nope from items where id = $1', [4], (err: Error | null) => resolve(err));
      });
      expect(failed).toMatchObject({ code: '42703' });
    } finally {
      await client.end();
    }
  });
});
