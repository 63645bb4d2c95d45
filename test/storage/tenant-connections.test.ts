import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { readMasterKeyFile } from '../../src/crypto/master-key.js';
import { openStorage } from '../../src/storage/open.js';
import type { Storage } from '../../src/storage/storage.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

const user = (username: string) => ({ id: newId(), username, email: `${username}@x.example`, kind: 'console' as const, status: 'active' as const, password_hash: null, must_change_password: 0, password_expires_at: null, created_at: 1, updated_at: 1 });

describeEachStorage('tenant store connections', (kind) => {
  let env: TestEnv;
  let storage: Storage;
  let masterKey: Buffer;
  const tenant = newId();

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    masterKey = await readMasterKeyFile(env.config.masterKeyFile);
    storage = openStorage(env.config, systemClock, () => masterKey);
    await storage.migrateControl();
    await storage.createTenantStore(tenant);
  });
  afterAll(async () => {
    // The store has no row in the control plane's tenants table, so the deployment's cleanup would not find it.
    await storage.dropTenantStore(tenant);
    await storage.close();
    await env.cleanup();
  });

  const names = () => storage.tenant(tenant).read(async (db) => (await db.selectFrom('users').select('username').orderBy('username').execute()).map((r) => r.username));

  it('a read does not wait for a write transaction of the same process, and sees only what is committed', async () => {
    const store = storage.tenant(tenant);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let inserted!: () => void;
    const didInsert = new Promise<void>((r) => (inserted = r));
    const writing = store.transaction(async (db) => {
      await db.insertInto('users').values(user('pending')).execute();
      inserted();
      await held; // the transaction stays open, its connection held, until released
    });
    try {
      await didInsert;
      // Before reads had a connection of their own (SQLite), this read queued behind the open transaction.
      const during = await Promise.race([names(), new Promise<'timed out'>((r) => setTimeout(() => r('timed out'), 2000))]);
      expect(during).toEqual([]);
    } finally {
      release();
      await writing;
    }
    expect(await names()).toEqual(['pending']);
  });

  it('a read right after a commit sees it (read your writes across the two connections)', async () => {
    const store = storage.tenant(tenant);
    for (let i = 0; i < 20; i++) {
      await store.transaction((db) => db.insertInto('users').values(user(`seq${String(i).padStart(2, '0')}`)).execute());
      expect((await names()).filter((n) => n.startsWith('seq'))).toHaveLength(i + 1);
    }
  });

  it.runIf(kind === 'postgres')("tenant connections go where the deployment's URL says, a Unix socket too, as the tenant's role in its schema (PostgreSQL)", async (ctx) => {
    const inTenant = (s: Storage) =>
      s.tenant(tenant).read(async (db) => (await sql<{ addr: string | null; role: string; path: string[] }>`select host(inet_server_addr()) as addr, current_user as role, current_schemas(false) as path`.execute(db)).rows[0]!);
    // Over TCP, as the test deployment's URL names a host.
    const tcp = await inTenant(storage);
    expect(tcp.addr).not.toBeNull();
    const url = new URL(env.config.databaseUrl!);
    // The server's socket directory, and whether the test's user may sign in through it (a default Debian install
    // authenticates local connections by the operating system's user name).
    const setting = (await sql<{ dirs: string }>`select current_setting('unix_socket_directories') as dirs`.execute(storage.control)).rows[0]!.dirs;
    const dir = setting.split(',').map((d) => d.trim()).find((d) => d.startsWith('/'));
    if (!dir) return ctx.skip('the server listens on no Unix socket');
    url.searchParams.set('host', dir);
    const probe = new pg.Client({ connectionString: url.toString() });
    try {
      await probe.connect();
      await probe.end();
    } catch {
      return ctx.skip(`no sign-in through ${dir} here`);
    }
    const bySocket = openStorage({ ...env.config, databaseUrl: url.toString() }, systemClock, () => masterKey);
    try {
      const local = await inTenant(bySocket);
      // No server address: the connection is the socket's (before, tenant pools took the URL's host name and used TCP).
      expect(local.addr).toBeNull();
      expect(local.role).toBe(tcp.role);
      expect(local.role).not.toBe(url.username);
      expect(local.path).toEqual(tcp.path);
      await bySocket.tenant(tenant).transaction((db) => db.insertInto('users').values(user('via-socket')).execute());
      expect(await names()).toContain('via-socket');
    } finally {
      await bySocket.close();
    }
  });

  it.runIf(kind === 'postgres')('a tenant connection to a socket directory where no server listens fails; it does not fall back to the URL host (PostgreSQL)', async () => {
    const url = new URL(env.config.databaseUrl!);
    url.searchParams.set('host', mkdtempSync(path.join(tmpdir(), 'custos-no-server-')));
    const nowhere = openStorage({ ...env.config, databaseUrl: url.toString() }, systemClock, () => masterKey);
    try {
      await expect(nowhere.tenant(tenant).read((db) => db.selectFrom('users').select('username').execute())).rejects.toThrow(/ENOENT|connect/i);
    } finally {
      await nowhere.close();
      rmSync(url.searchParams.get('host')!, { recursive: true, force: true });
    }
  });

  it.runIf(kind === 'sqlite')('the read connection refuses writes (SQLite: query_only)', async () => {
    await expect(storage.tenant(tenant).read((db) => db.insertInto('users').values(user('sneaky')).execute())).rejects.toThrow(/readonly|read-only|query_only/i);
    expect(await names()).not.toContain('sneaky');
  });

  it.runIf(kind === 'sqlite')("a write transaction waits for another process's write lock without blocking the event loop (SQLite)", async () => {
    const loc = storage.locateTenantStore(tenant);
    if (loc.kind !== 'sqlite') throw new Error('unreachable');
    // Another connection (as another process would) takes the write lock and keeps it for 300 ms.
    const other = new Database(loc.file);
    try {
      other.exec('BEGIN IMMEDIATE');
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 5);
      const started = performance.now();
      const writing = storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user('waited')).execute());
      // Reads and timers go on meanwhile: with SQLite's own busy handler the thread slept inside BEGIN IMMEDIATE.
      await new Promise((r) => setTimeout(r, 100));
      expect(await names()).not.toContain('waited');
      expect(ticks).toBeGreaterThan(5);
      setTimeout(() => other.exec('COMMIT'), 200);
      await writing;
      clearInterval(ticker);
      expect(performance.now() - started).toBeGreaterThanOrEqual(250);
      expect(ticks).toBeGreaterThan(30);
      expect(await names()).toContain('waited');
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
    }
  });
});
