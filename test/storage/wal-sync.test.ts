import { readlinkSync } from 'node:fs';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AuditService } from '../../src/audit/audit-service.js';
import { systemClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { createLogger } from '../../src/core/logger.js';
import { readMasterKeyFile } from '../../src/crypto/master-key.js';
import { openStorage } from '../../src/storage/open.js';
import { fsyncOnThreadPool } from '../../src/storage/sqlite/fsync-thread.js';
import { SqliteStorage } from '../../src/storage/sqlite/sqlite-storage.js';
import type { Kysely } from 'kysely';
import type { TenantDB } from '../../src/storage/schema.js';
import type { Storage, TenantStore } from '../../src/storage/storage.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';
import { ev } from '../audit/helpers.js';

const user = (username: string) => ({ id: newId(), username, email: `${username}@x.example`, kind: 'console' as const, status: 'active' as const, password_hash: null, must_change_password: 0, password_expires_at: null, created_at: 1, updated_at: 1 });

const usernames = (storage: Storage, tenant: string) =>
  storage.tenant(tenant).read(async (db) => (await db.selectFrom('users').select('username').orderBy('username').execute()).map((r) => r.username));

/** A `deferSync` transaction, then the wait for its durability, as the activity stream's group commit does. */
async function durably<T>(store: TenantStore, fn: (db: Kysely<TenantDB>) => Promise<T>): Promise<T> {
  const result = await store.transaction(fn, { deferSync: true });
  await store.durable();
  return result;
}

/** Waits (yielding to the event loop) until `cond` holds; fails after 5 s. */
async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Whether a promise has settled, after letting pending callbacks run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setTimeout(r, 30));
  return done;
}

describeEachStorage('transactions synced after their commit', (kind) => {
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
    // No tenants row: the deployment's cleanup would not find this store.
    await storage.dropTenantStore(tenant);
    await storage.close();
    await env.cleanup();
  });

  it('deferSync: commits, resolves with the result, rolls back when the function throws; durable() and sync() resolve', async () => {
    const store = storage.tenant(tenant);
    const r = await durably(store, async (db) => {
      await db.insertInto('users').values(user('synced-after')).execute();
      return 42;
    });
    expect(r).toBe(42);
    await expect(
      store.transaction(async (db) => {
        await db.insertInto('users').values(user('rolled-back')).execute();
        throw new Error('boom');
      }, { deferSync: true }),
    ).rejects.toThrow('boom');
    await store.durable();
    await store.sync();
    expect(await usernames(storage, tenant)).toEqual(['synced-after']);
  });
});

/** An `fsync` for the storage that records what it syncs and can be held or made to fail. */
function controlledFsync() {
  const calls: string[] = [];
  let gate: Promise<void> | undefined;
  let open: (() => void) | undefined;
  let failure: Error | undefined;
  return {
    calls,
    fsync: async (fd: number) => {
      calls.push(readlinkSync(`/proc/self/fd/${fd}`));
      if (gate) await gate;
      if (failure) {
        const err = failure;
        failure = undefined;
        throw err;
      }
      await fsyncOnThreadPool(fd);
    },
    hold() {
      gate = new Promise<void>((r) => (open = r));
    },
    release() {
      gate = undefined;
      open?.();
    },
    failNext(err: Error) {
      failure = err;
    },
  };
}

describe.runIf(process.platform === 'linux')('SQLite: commits made durable after they are written, off the event loop', () => {
  let env: TestEnv;
  let storage: SqliteStorage;
  let ctl: ReturnType<typeof controlledFsync>;
  let tenant: string;
  let walFile: string;
  let closed: boolean;

  beforeAll(async () => {
    env = await makeTestEnv('sqlite');
  });
  afterAll(async () => {
    await env.cleanup();
  });
  beforeEach(async () => {
    ctl = controlledFsync();
    storage = new SqliteStorage(env.config.dataDir, systemClock, { fsync: ctl.fsync });
    closed = false;
    await storage.migrateControl();
    tenant = newId();
    await storage.createTenantStore(tenant);
    const loc = storage.locateTenantStore(tenant);
    if (loc.kind !== 'sqlite') throw new Error('unreachable');
    walFile = `${loc.file}-wal`;
  });
  afterEach(async () => {
    ctl.release();
    if (!closed) {
      await storage.dropTenantStore(tenant);
      await storage.close();
    }
  });

  const synchronous = () => storage.tenantConnections(tenant).writerHandle.pragma('synchronous', { simple: true });

  it('writes the commit, syncs the WAL off the event loop (which runs meanwhile), and resolves only after the sync', async () => {
    ctl.hold();
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 1);
    try {
      const writing = durably(storage.tenant(tenant), (db) => db.insertInto('users').values(user('durable')).execute());
      await until(() => ctl.calls.length === 1);
      expect(ctl.calls[0]).toBe(walFile);
      const ticksAtSync = ticks;
      // The commit is written (visible to a reader) but not yet durable, so the caller has no answer yet.
      expect(await usernames(storage, tenant)).toEqual(['durable']);
      expect(await settled(writing)).toBe(false);
      // Timers ran while the sync was pending: it holds no thread of this process's event loop.
      expect(ticks).toBeGreaterThan(ticksAtSync);
      ctl.release();
      await writing;
    } finally {
      clearInterval(ticker);
    }
  });

  it('one fsync at a time: commits made while one is in flight share the next; a caller with nothing new waits for the one in flight', async () => {
    const store = storage.tenant(tenant);
    ctl.hold();
    await store.transaction((db) => db.insertInto('users').values(user('first')).execute(), { deferSync: true });
    const first = store.durable();
    await until(() => ctl.calls.length === 1);
    // Nothing committed since that sync started: waiting for it is enough.
    const same = store.durable();
    await store.transaction((db) => db.insertInto('users').values(user('second')).execute(), { deferSync: true });
    const second = store.durable();
    await store.transaction((db) => db.insertInto('users').values(user('third')).execute(), { deferSync: true });
    const third = store.durable();
    expect(await settled(Promise.all([first, same, second, third]))).toBe(false);
    expect(ctl.calls).toHaveLength(1);
    ctl.release();
    await Promise.all([first, same, second, third]);
    // The second and third commits were covered by one more fsync, started after the first ended.
    expect(ctl.calls).toHaveLength(2);
    expect(await usernames(storage, tenant)).toEqual(['first', 'second', 'third']);
  });

  it('leaves the connection at synchronous = FULL, also after a rollback; a plain transaction is synced inside its commit by SQLite', async () => {
    const store = storage.tenant(tenant);
    await durably(store, (db) => db.insertInto('users').values(user('a')).execute());
    expect(synchronous()).toBe(2); // FULL
    await expect(
      store.transaction(async (db) => {
        await db.insertInto('users').values(user('b')).execute();
        throw new Error('no');
      }, { deferSync: true }),
    ).rejects.toThrow('no');
    expect(synchronous()).toBe(2);
    const before = ctl.calls.length;
    await store.transaction((db) => db.insertInto('users').values(user('c')).execute());
    expect(ctl.calls.length).toBe(before);
    expect(await usernames(storage, tenant)).toEqual(['a', 'c']);
  });

  it('rejects the transaction when the sync fails, and does not take the commit for durable: closing syncs it again', async () => {
    const store = storage.tenant(tenant);
    ctl.failNext(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
    await expect(durably(store, (db) => db.insertInto('users').values(user('unsure')).execute())).rejects.toThrow(/EIO/);
    expect(await usernames(storage, tenant)).toEqual(['unsure']);
    const before = ctl.calls.length;
    await storage.close();
    closed = true;
    // After the connections closed (SQLite's close of the last one also checkpoints the WAL and removes it).
    expect(ctl.calls.slice(before)).toHaveLength(1);
    expect(ctl.calls[before]!.replace(/ \(deleted\)$/, '')).toBe(walFile);
    const again = new SqliteStorage(env.config.dataDir, systemClock);
    try {
      expect(await usernames(again, tenant)).toEqual(['unsure']);
      await again.dropTenantStore(tenant);
    } finally {
      await again.close();
    }
  });

  it('closing with nothing left unsynced does not sync', async () => {
    await durably(storage.tenant(tenant), (db) => db.insertInto('users').values(user('done')).execute());
    const before = ctl.calls.length;
    await storage.close();
    closed = true;
    expect(ctl.calls.length).toBe(before);
    const again = new SqliteStorage(env.config.dataDir, systemClock);
    try {
      expect(await usernames(again, tenant)).toEqual(['done']);
      await again.dropTenantStore(tenant);
    } finally {
      await again.close();
    }
  });

  it("sync() is a barrier for another process's commits too", async () => {
    await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user('mine')).execute());
    const other = new Database(walFile.slice(0, -'-wal'.length));
    try {
      other.pragma('synchronous = OFF');
      other.prepare("insert into users (id, username, email, kind, status, must_change_password, created_at, updated_at) values (?, 'theirs', 'theirs@x.example', 'console', 'active', 0, 1, 1)").run(newId());
    } finally {
      other.close();
    }
    const before = ctl.calls.length;
    await storage.tenant(tenant).sync();
    expect(ctl.calls.slice(before)).toEqual([walFile]);
  });

  it('closing waits for a sync in flight, then closes the WAL descriptor', async () => {
    ctl.hold();
    const writing = durably(storage.tenant(tenant), (db) => db.insertInto('users').values(user('closing')).execute());
    await until(() => ctl.calls.length === 1);
    const closing = storage.close();
    expect(await settled(closing)).toBe(false);
    ctl.release();
    await closing;
    closed = true;
    await writing;
    // Reopened, the commit is there.
    const again = new SqliteStorage(env.config.dataDir, systemClock);
    try {
      expect(await usernames(again, tenant)).toEqual(['closing']);
      await again.dropTenantStore(tenant);
    } finally {
      await again.close();
    }
  });

  it('activity events: a group commit answers its callers only once its WAL is synced, fails them if the sync fails, and reads of the stream wait for durability', async () => {
    const masterKey = await readMasterKeyFile(env.config.masterKeyFile);
    const audit = await AuditService.open({ storage, clock: systemClock, masterKey: () => masterKey, logger: createLogger('silent'), config: env.config });
    try {
      await audit.record(tenant, ev());
      ctl.hold();
      const recording = audit.record(tenant, ev('data.pii.read'));
      await until(() => ctl.calls.length >= 2);
      expect(await settled(recording)).toBe(false);
      ctl.release();
      expect((await recording).type).toBe('data.pii.read');

      ctl.failNext(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
      await expect(audit.record(tenant, ev('data.pii.read'))).rejects.toMatchObject({ code: 'audit_unavailable' });

      // That event is committed (the stream may hold more than its callers were told, never less).
      // A read of the stream first makes every commit so far durable, this process's or another's.
      ctl.hold();
      const before = ctl.calls.length;
      const reading = audit.query(tenant, { limit: 10 });
      await until(() => ctl.calls.length === before + 1);
      expect(await settled(reading)).toBe(false);
      ctl.release();
      expect((await reading).events.map((e) => e.type)).toEqual(['data.pii.read', 'data.pii.read', 'iam.user.create']);
    } finally {
      ctl.release();
      await audit.close();
    }
  });
});
