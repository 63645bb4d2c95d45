import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { readMasterKeyFile } from '../../src/crypto/master-key.js';
import { newId } from '../../src/core/ids.js';
import { appliedMigrations, runMigrations, type Migration } from '../../src/storage/migrations/migration.js';
import { controlMigrations } from '../../src/storage/migrations/control/index.js';
import { tenantMigrations } from '../../src/storage/migrations/tenant/index.js';
import { openStorage } from '../../src/storage/open.js';
import type { Storage } from '../../src/storage/storage.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

describeEachStorage('storage', (kind) => {
  let env: TestEnv;
  let storage: Storage;
  const a = newId();
  const b = newId();

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    const masterKey = await readMasterKeyFile(env.config.masterKeyFile);
    storage = openStorage(env.config, systemClock, () => masterKey);
    await storage.migrateControl();
    await storage.createTenantStore(a);
    await storage.createTenantStore(b);
    for (const [id, name] of [[a, 'alice'], [b, 'bob']] as const) {
      await storage.tenant(id).transaction((db) =>
        db
          .insertInto('users')
          .values({ id: newId(), username: name, email: `${name}@x.example`, kind: 'console', status: 'active', password_hash: null, must_change_password: 0, password_expires_at: null, created_at: 1, updated_at: 1 })
          .execute(),
      );
    }
  });
  /** Stores made here without a row in the control plane's tenants table: the deployment's cleanup would not find them. */
  const made = [a, b];
  afterAll(async () => {
    for (const id of made) await storage.dropTenantStore(id);
    await storage.close();
    await env.cleanup();
  });

  it('applies migrations idempotently: a second run applies nothing', async () => {
    expect((await storage.migrateControl()).applied).toEqual([]);
    expect((await storage.migrateTenant(a)).applied).toEqual([]);
    const names = await storage.tenant(a).transaction(async (db) => {
      // The tenant role may not read the migration table; check through the store file or owner instead.
      return db.selectFrom('store_meta').select(['key', 'value']).execute();
    });
    expect(names).toEqual([{ key: 'tenant_id', value: a }]);
  });

  // PostgreSQL only: SQLite's writers of one file are processes (`serve --workers`), and two handles in one
  // thread would block each other in the busy timeout, which says nothing about two processes.
  it.runIf(kind === 'postgres')('two nodes starting at once migrate the same tenants without tripping over each other', async () => {
    // Each storage is what one starting process has: its own pools. Starts of several nodes race on the
    // same tenants (seen: PostgreSQL's "tuple concurrently updated" when two REVOKEs met on one table).
    const masterKey = await readMasterKeyFile(env.config.masterKeyFile);
    const nodes = [openStorage(env.config, systemClock, () => masterKey), openStorage(env.config, systemClock, () => masterKey)];
    try {
      for (let round = 0; round < 10; round++) {
        const results = await Promise.allSettled(nodes.flatMap((n) => [n.migrateControl(), n.migrateTenant(a), n.migrateTenant(b)]));
        expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
      }
    } finally {
      for (const n of nodes) await n.close();
    }
  });

  it('creating a tenant store twice is harmless', async () => {
    await storage.createTenantStore(a);
    const users = await storage.tenant(a).transaction((db) => db.selectFrom('users').select('username').execute());
    expect(users.map((u) => u.username)).toEqual(['alice']);
  });

  it('each tenant store sees only its own rows', async () => {
    const seenByA = await storage.tenant(a).transaction((db) => db.selectFrom('users').select('username').execute());
    const seenByB = await storage.tenant(b).transaction((db) => db.selectFrom('users').select('username').execute());
    expect(seenByA.map((u) => u.username)).toEqual(['alice']);
    expect(seenByB.map((u) => u.username)).toEqual(['bob']);
  });

  it('reads a binary column as hex text through the adapter (either case), empty or null for no value', async () => {
    const bytes = Buffer.from([0x00, 0xff, 0x10, 0x7f, 0x80]);
    const hexOf = (value: Buffer | null) =>
      storage.tenant(a).read(async (db) => {
        const blob = sql`cast(${value} as ${sql.raw(storage.adapter.blobType)})`;
        const r = await sql<{ h: string | null }>`with t (b) as (select ${blob}) select ${sql.raw(storage.adapter.blobHex('b'))} as h from t`.execute(db);
        return r.rows[0]!.h;
      });
    expect((await hexOf(bytes))!.toLowerCase()).toBe('00ff107f80');
    expect(Buffer.from((await hexOf(bytes))!, 'hex').equals(bytes)).toBe(true);
    expect([null, '']).toContain(await hexOf(null));
    expect(() => storage.adapter.blobHex('b); drop table users; --')).toThrow(TypeError);
  });

  it('rolls back a tenant transaction that throws', async () => {
    await expect(
      storage.tenant(a).transaction(async (db) => {
        await db.updateTable('users').set({ email: 'changed@x.example' }).execute();
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    const row = await storage.tenant(a).transaction((db) => db.selectFrom('users').select('email').executeTakeFirstOrThrow());
    expect(row.email).toBe('alice@x.example');
  });

  it('commits a tenant transaction that resolves', async () => {
    await storage.tenant(b).transaction((db) => db.updateTable('users').set({ updated_at: 2 }).execute());
    const row = await storage.tenant(b).transaction((db) => db.selectFrom('users').select('updated_at').executeTakeFirstOrThrow());
    expect(row.updated_at).toBe(2);
  });

  it('rejects a tenant id that is not an id (no path or identifier injection)', () => {
    for (const bad of ['../control', 'x"; drop schema custos cascade; --', 'ABC', '']) {
      expect(() => storage.tenant(bad)).toThrow(TypeError);
    }
  });

  it('drops a tenant store and reports it gone; dropping again is harmless', async () => {
    const c = newId();
    await storage.createTenantStore(c);
    expect(await storage.tenantStoreExists(c)).toBe(true);
    await storage.dropTenantStore(c);
    expect(await storage.tenantStoreExists(c)).toBe(false);
    await storage.dropTenantStore(c);
    await expect(storage.tenant(c).transaction((db) => db.selectFrom('users').selectAll().execute())).rejects.toThrow();
  });

  it('resumes migrations after a failure in the middle: applied ones stay, the failed one left no trace', async () => {
    const c = newId();
    made.push(c);
    await storage.createTenantStore(c);
    const loc = storage.locateTenantStore(c);
    const steps: Migration[] = [
      { name: '9001_one', up: async (db) => void (await db.schema.createTable('m_one').addColumn('x', 'integer').execute()) },
      {
        name: '9002_two',
        up: async (db) => {
          await db.schema.createTable('m_two').addColumn('x', 'integer').execute();
          throw new Error('crash in the middle of 9002');
        },
      },
    ];
    const run = async (migrations: Migration[]) => {
      if (loc.kind === 'sqlite') {
        const { sqliteWriteTransaction } = await import('../../src/storage/sqlite/sqlite-storage.js');
        const { Kysely, SqliteDialect } = await import('kysely');
        const { openSqliteFile } = await import('../../src/storage/sqlite/sqlite-database.js');
        const db = new Kysely<any>({ dialect: new SqliteDialect({ database: openSqliteFile(loc.file) }) });
        try {
          await runMigrations({ migrations, adapter: storage.adapter, transaction: (fn) => sqliteWriteTransaction(db, fn), now: () => 1 });
          return await appliedMigrations(db);
        } finally {
          await db.destroy();
        }
      }
      const { Kysely, PostgresDialect } = await import('kysely');
      const pg = (await import('pg')).default;
      const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: env.config.databaseUrl, max: 1 }) }) });
      try {
        await runMigrations({
          migrations,
          adapter: storage.adapter,
          transaction: (fn) =>
            db.transaction().execute(async (trx) => {
              await sql.raw(`SET LOCAL search_path TO "${loc.schema}"`).execute(trx);
              return fn(trx);
            }),
          now: () => 1,
        });
        return await db.transaction().execute(async (trx) => {
          await sql.raw(`SET LOCAL search_path TO "${loc.schema}"`).execute(trx);
          return appliedMigrations(trx);
        });
      } finally {
        await db.destroy();
      }
    };
    await expect(run(steps)).rejects.toThrow('crash in the middle of 9002');
    const fixed: Migration[] = [steps[0]!, { name: '9002_two', up: async (db) => void (await db.schema.createTable('m_two').addColumn('x', 'integer').execute()) }];
    const applied = await run(fixed);
    expect(applied).toEqual([...tenantMigrations.map((m) => m.name), '9001_one', '9002_two']);
  });

  it('refuses migration lists out of order', async () => {
    await expect(
      runMigrations({
        migrations: [{ name: '2', up: async () => undefined }, { name: '1', up: async () => undefined }],
        adapter: storage.adapter,
        transaction: (fn) => fn(storage.control as Kysely<any>),
        now: () => 1,
      }),
    ).rejects.toThrow(TypeError);
  });

  it('knows every control migration by name', async () => {
    const names = controlMigrations.map((m) => m.name);
    expect(names.length).toBeGreaterThan(0);
    expect([...names].sort()).toEqual(names);
  });

  if (kind === 'sqlite') {
    it('keeps each tenant in a separate SQLite file in WAL mode with synchronous=FULL, the write connection reading it through a memory map', async () => {
      const fa = storage.locateTenantStore(a);
      const fb = storage.locateTenantStore(b);
      if (fa.kind !== 'sqlite' || fb.kind !== 'sqlite') throw new Error('expected sqlite');
      expect(fa.file).not.toBe(fb.file);
      expect(existsSync(fa.file) && existsSync(fb.file)).toBe(true);
      expect(path.dirname(fa.file)).toBe(path.join(env.dataDir, 'tenants'));
      const files = readdirSync(path.join(env.dataDir, 'tenants')).filter((f) => f.endsWith('.db'));
      expect(files).toEqual(expect.arrayContaining([`${a}.db`, `${b}.db`]));
      const settings = await storage.tenant(a).transaction(async (db) => ({
        journal: (await sql<{ journal_mode: string }>`pragma journal_mode`.execute(db)).rows[0]?.journal_mode,
        sync: (await sql<{ synchronous: number }>`pragma synchronous`.execute(db)).rows[0]?.synchronous,
        dbs: (await sql<{ name: string; file: string }>`pragma database_list`.execute(db)).rows,
        mmap: (await sql<{ mmap_size: number }>`pragma mmap_size`.execute(db)).rows[0]?.mmap_size,
      }));
      const readerMmap = await storage.tenant(a).read(async (db) => (await sql<{ mmap_size: number }>`pragma mmap_size`.execute(db)).rows[0]?.mmap_size);
      expect(settings.mmap).toBe(0x7fff0000);
      expect(readerMmap).toBe(0);
      expect(settings.journal).toBe('wal');
      expect(settings.sync).toBe(2); // FULL
      // The connection has exactly one database attached: this tenant's file.
      expect(settings.dbs).toEqual([expect.objectContaining({ name: 'main', file: fa.file })]);
    });
  }

  if (kind === 'postgres') {
    const other = () => storage.locateTenantStore(b) as { schema: string; role: string };

    it("cannot read another tenant's tables with hand-written SQL", async () => {
      const { schema } = other();
      await expect(storage.tenant(a).transaction((db) => sql.raw(`SELECT * FROM "${schema}".users`).execute(db))).rejects.toThrow(/permission denied/);
    });

    it("cannot write another tenant's tables with hand-written SQL", async () => {
      const { schema } = other();
      await expect(
        storage.tenant(a).transaction((db) => sql.raw(`INSERT INTO "${schema}".user_roles (user_id, role) VALUES ('x', 'account-administrator')`).execute(db)),
      ).rejects.toThrow(/permission denied/);
      await expect(storage.tenant(a).transaction((db) => sql.raw(`DELETE FROM "${schema}".users`).execute(db))).rejects.toThrow(/permission denied/);
      await expect(storage.tenant(a).transaction((db) => sql.raw(`DROP TABLE "${schema}".users`).execute(db))).rejects.toThrow(/permission denied|must be owner/);
      const still = await storage.tenant(b).transaction((db) => db.selectFrom('users').select('username').execute());
      expect(still.map((u) => u.username)).toEqual(['bob']);
    });

    it("cannot take another tenant's role or a privileged one by any route", async () => {
      const { role, schema } = other();
      const attempts = [
        `SET ROLE "${role}"`,
        `SET LOCAL ROLE "${role}"`,
        `SELECT set_config('role', '${role}', false)`,
        `SET SESSION AUTHORIZATION postgres`,
        `SET ROLE postgres`,
      ];
      for (const statement of attempts) {
        await expect(storage.tenant(a).transaction((db) => sql.raw(statement).execute(db)), statement).rejects.toThrow(/permission denied/);
      }
      // RESET ROLE returns to the session user, which is this tenant's own role: still no way in.
      await expect(
        storage.tenant(a).transaction(async (db) => {
          await sql.raw('RESET ROLE').execute(db);
          return sql.raw(`SELECT * FROM "${schema}".users`).execute(db);
        }),
      ).rejects.toThrow(/permission denied/);
    });

    it('cannot reach the control plane', async () => {
      await expect(
        storage.tenant(a).transaction((db) => sql.raw(`SELECT * FROM "${env.config.databaseSchema}".tenants`).execute(db)),
      ).rejects.toThrow(/permission denied/);
    });

    it('runs tenant transactions as the tenant role, which is the session user, with the tenant schema on the path', async () => {
      const mine = storage.locateTenantStore(a) as { schema: string; role: string };
      const r = await storage
        .tenant(a)
        .transaction((db) => sql<{ who: string; session: string; path: string }>`SELECT current_user AS who, session_user AS session, current_setting('search_path') AS path`.execute(db));
      expect(r.rows[0]).toEqual({ who: mine.role, session: mine.role, path: mine.schema });
    });

    it('gives tenant roles no membership in any role and no ownership', async () => {
      const mine = storage.locateTenantStore(a) as { schema: string; role: string };
      const r = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = ${mine.role}`.execute(storage.control);
      expect(r.rows[0]?.n).toBe(0);
      const owned = await sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = ${mine.role}`.execute(storage.control);
      expect(owned.rows[0]?.n).toBe(0);
      const attrs = await sql<{ rolsuper: boolean; rolcreaterole: boolean; rolcreatedb: boolean; rolbypassrls: boolean }>`SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = ${mine.role}`.execute(storage.control);
      expect(attrs.rows[0]).toEqual({ rolsuper: false, rolcreaterole: false, rolcreatedb: false, rolbypassrls: false });
    });

    it("cannot alter its own store's schema: the tenant role holds data privileges only", async () => {
      await expect(storage.tenant(a).transaction((db) => sql.raw(`DROP TABLE users`).execute(db))).rejects.toThrow(/must be owner|permission denied/);
      await expect(storage.tenant(a).transaction((db) => sql.raw(`CREATE TABLE evil (x int)`).execute(db))).rejects.toThrow(/permission denied/);
      await expect(storage.tenant(a).transaction((db) => sql.raw(`SELECT * FROM custos_migrations`).execute(db))).rejects.toThrow(/permission denied/);
    });

    it('tenant role privileges after the transaction do not linger on the pooled connection', async () => {
      await storage.tenant(a).transaction((db) => db.selectFrom('users').selectAll().execute());
      const r = await sql<{ who: string }>`SELECT current_user AS who`.execute(storage.control);
      expect(r.rows[0]?.who).not.toMatch(/^custos_t_/);
    });
  }
});
