import Database from 'better-sqlite3';
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
  const tenant = newId();

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    const masterKey = await readMasterKeyFile(env.config.masterKeyFile);
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
