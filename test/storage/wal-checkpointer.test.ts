import Database from 'better-sqlite3';
import { copyFileSync, existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type * as WorkerThreads from 'node:worker_threads';
import { sql } from 'kysely';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { SqliteStorage } from '../../src/storage/sqlite/sqlite-storage.js';
import { makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

// Every worker thread the code under test starts, and how it ended: whether a worker is still running.
const workers = vi.hoisted(() => [] as Array<{ exitCode: number | undefined }>);
vi.mock('node:worker_threads', async (importOriginal) => {
  const real = await importOriginal<typeof WorkerThreads>();
  class TrackedWorker extends real.Worker {
    constructor(...args: ConstructorParameters<typeof real.Worker>) {
      super(...args);
      const entry: { exitCode: number | undefined } = { exitCode: undefined };
      workers.push(entry);
      this.once('exit', (code: number) => (entry.exitCode = code));
    }
  }
  return { ...real, Worker: TrackedWorker };
});

const user = (username: string) => ({ id: newId(), username, email: `${username}@x.example`, kind: 'console' as const, status: 'active' as const, password_hash: null, must_change_password: 0, password_expires_at: null, created_at: 1, updated_at: 1 });

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` until it holds; fails after `timeoutMs`. */
async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Frames in a WAL file (its high-water mark: SQLite rewrites a WAL from the start after a complete checkpoint, it does not shrink it). */
function walFrames(file: string, pageSize: number): number {
  const wal = `${file}-wal`;
  if (!existsSync(wal)) return 0;
  const size = statSync(wal).size;
  return size <= 32 ? 0 : (size - 32) / (pageSize + 24);
}

/** Opens `file` on its own connection and returns its integrity check and usernames. */
function inspect(file: string): { integrity: unknown; usernames: string[] } {
  const db = new Database(file, { fileMustExist: true });
  try {
    const integrity = db.pragma('integrity_check', { simple: true });
    const usernames = (db.prepare('SELECT username FROM users ORDER BY username').all() as Array<{ username: string }>).map((r) => r.username);
    return { integrity, usernames };
  } finally {
    db.close();
  }
}

describe('WAL checkpoints on a worker thread [sqlite]', () => {
  let env: TestEnv;
  let opened: SqliteStorage[] = [];

  beforeEach(async () => {
    env = await makeTestEnv('sqlite');
  });
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close();
    await env.cleanup();
  });

  async function openSqlite(checkpoints: { intervalMs?: number; workerUrl?: URL } = { intervalMs: 20 }): Promise<SqliteStorage> {
    const storage = new SqliteStorage(env.config.dataDir, systemClock, { checkpoints });
    opened.push(storage);
    await storage.migrateControl();
    return storage;
  }

  /** Closes `storage` here (and not again after the test). */
  async function closeSqlite(storage: SqliteStorage): Promise<void> {
    opened = opened.filter((s) => s !== storage);
    await storage.close();
  }

  function fileOf(storage: SqliteStorage, tenant: string): string {
    const loc = storage.locateTenantStore(tenant);
    if (loc.kind !== 'sqlite') throw new Error('unreachable');
    return loc.file;
  }

  /** A storage with a short checkpoint interval and one new tenant store: the storage, the tenant id and its file. */
  async function openWithTenant(): Promise<{ storage: SqliteStorage; tenant: string; file: string }> {
    const storage = await openSqlite();
    const tenant = newId();
    await storage.createTenantStore(tenant);
    return { storage, tenant, file: fileOf(storage, tenant) };
  }

  /** The write connection's `wal_autocheckpoint` (a per-connection setting: read on that very connection). */
  async function autoCheckpoint(storage: SqliteStorage, tenant: string): Promise<number> {
    const { rows } = await sql<{ wal_autocheckpoint: number }>`pragma wal_autocheckpoint`.execute(storage.openTenant(tenant));
    return rows[0]!.wal_autocheckpoint;
  }

  async function pageSize(storage: SqliteStorage, tenant: string): Promise<number> {
    const { rows } = await sql<{ page_size: number }>`pragma page_size`.execute(storage.openTenant(tenant));
    return rows[0]!.page_size;
  }

  const usernames = (storage: SqliteStorage, tenant: string) =>
    storage.tenant(tenant).read(async (db) => (await db.selectFrom('users').select('username').orderBy('username').execute()).map((r) => r.username));

  const count = (storage: SqliteStorage, tenant: string) =>
    storage.tenant(tenant).read(async (db) => Number((await db.selectFrom('users').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n));

  /**
   * Commits `batches` × `perBatch` one-row write transactions, pausing `pauseMs` after each batch so that the
   * checkpoint interval passes between batches. Calls `afterBatch` after each pause. Returns the usernames committed.
   */
  async function commitStream(storage: SqliteStorage, tenant: string, prefix: string, opts: { batches: number; perBatch: number; pauseMs: number; afterBatch?: () => void }): Promise<string[]> {
    const names: string[] = [];
    for (let b = 0; b < opts.batches; b++) {
      for (let i = 0; i < opts.perBatch; i++) {
        const name = `${prefix}-${String(b).padStart(3, '0')}-${String(i).padStart(3, '0')}`;
        await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user(name)).execute());
        names.push(name);
      }
      await sleep(opts.pauseMs);
      opts.afterBatch?.();
    }
    return names;
  }

  /** Commits batches of 5 (each after a pause longer than the interval) until `cond` holds. Returns the usernames committed. */
  async function commitUntil(storage: SqliteStorage, tenant: string, prefix: string, what: string, cond: () => boolean): Promise<string[]> {
    const names: string[] = [];
    const deadline = performance.now() + 10_000;
    for (let k = 0; !cond(); k++) {
      if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      names.push(...(await commitStream(storage, tenant, `${prefix}-${k}`, { batches: 1, perBatch: 5, pauseMs: 25 })));
    }
    return names;
  }

  it("a tenant's write connection runs with wal_autocheckpoint = 0 while the checkpointer is available", async () => {
    const storage = await openSqlite();
    const tenant = newId();
    await storage.createTenantStore(tenant);
    expect(storage.checkpoints.available).toBe(true);
    expect(await autoCheckpoint(storage, tenant)).toBe(0);
    // Still 0 once the worker has started and checkpointed.
    await commitStream(storage, tenant, 'u', { batches: 3, perBatch: 5, pauseMs: 25 });
    await until('a checkpoint', () => storage.checkpoints.stats.runs > 0);
    expect(storage.checkpoints.available).toBe(true);
    expect(await autoCheckpoint(storage, tenant)).toBe(0);
    // A store opened later, too.
    const other = newId();
    await storage.createTenantStore(other);
    expect(await autoCheckpoint(storage, other)).toBe(0);
  });

  it('a stream of commits is checkpointed by the worker, and the WAL does not grow without bound', async () => {
    const { storage, tenant, file } = await openWithTenant();
    const page = await pageSize(storage, tenant);
    // The worker starts with the first checkpoint, an interval after the first commit; a batch more lets the WAL start over.
    await commitUntil(storage, tenant, 'warm-up', 'the first checkpoint', () => storage.checkpoints.stats.runs > 0);
    await commitStream(storage, tenant, 'warm-up-last', { batches: 1, perBatch: 20, pauseMs: 25 });
    const baseline = walFrames(file, page);
    let maxFrames = baseline;
    const names = await commitStream(storage, tenant, 'u', {
      batches: 30,
      perBatch: 20,
      pauseMs: 25,
      afterBatch: () => (maxFrames = Math.max(maxFrames, walFrames(file, page))),
    });
    const { runs, failures } = storage.checkpoints.stats;
    // An explicit checkpoint, with nothing else holding a lock, copies every frame. (The worker answers in order:
    // any checkpoint a commit started has finished by now.)
    const explicit = await storage.checkpoints.checkpoint(file);
    // One more commit once the interval has passed starts a checkpoint of its own, nothing else holding a lock.
    await sleep(30);
    const before = storage.checkpoints.stats.runs;
    await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user('last')).execute());
    await until('the checkpoint after the last commit', () => storage.checkpoints.stats.runs > before);
    const { last } = storage.checkpoints.stats;
    expect(runs).toBeGreaterThan(0);
    expect(failures).toBe(0);
    expect(explicit.busy).toBe(0);
    expect(explicit.checkpointed).toBe(explicit.log);
    expect(last).toBeDefined();
    expect(last!.busy).toBe(0);
    expect(last!.checkpointed).toBeGreaterThan(0);
    expect(last!.checkpointed).toBe(last!.log);
    expect(storage.checkpoints.stats.failures).toBe(0);
    // Every commit appends at least one frame, and the write connection never checkpoints (wal_autocheckpoint = 0):
    // a WAL that is never started over would have grown by more frames than there were commits. Started over after
    // each complete checkpoint, its file (which SQLite does not shrink) stays at the size of its largest stretch.
    expect(baseline).toBeGreaterThan(0);
    expect(maxFrames - baseline).toBeLessThan(names.length / 4);
  });

  it('a checkpoint does not wait for a reader of an older snapshot: it reports busy without copying past the snapshot, the reader keeps its view, writes go on', async () => {
    const { storage, tenant, file } = await openWithTenant();
    await commitStream(storage, tenant, 'a', { batches: 1, perBatch: 10, pauseMs: 0 });
    // The worker starts with the first checkpoint: started here, it is not timed below.
    await storage.checkpoints.checkpoint(file);
    const reader = new Database(file, { fileMustExist: true });
    try {
      reader.exec('BEGIN');
      const countNow = () => (reader.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n;
      expect(countNow()).toBe(10);
      await commitStream(storage, tenant, 'b', { batches: 1, perBatch: 10, pauseMs: 0 });
      const started = performance.now();
      const partial = await storage.checkpoints.checkpoint(file);
      // It comes back while the reader still holds its snapshot (waiting for it, with the worker's busy timeout, would take 1 s).
      expect(performance.now() - started).toBeLessThan(900);
      // It could not finish (busy), and copied none of the frames the reader's snapshot predates.
      expect(partial.busy).toBe(1);
      expect(partial.log).toBeGreaterThan(0);
      expect(partial.checkpointed).toBeLessThan(partial.log);
      // Writes go on meanwhile.
      await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user('c')).execute());
      expect(countNow()).toBe(10);
      reader.exec('COMMIT');
      const full = await storage.checkpoints.checkpoint(file);
      expect(full.busy).toBe(0);
      expect(full.checkpointed).toBe(full.log);
      expect(countNow()).toBe(21);
    } finally {
      if (reader.inTransaction) reader.exec('ROLLBACK');
      reader.close();
    }
    expect(await count(storage, tenant)).toBe(21);
  });

  it('committed data stays intact while checkpoints run: reads see every commit, integrity_check is ok, every row is in the file', async () => {
    const { storage, tenant, file } = await openWithTenant();
    // Reads run alongside the commits (and so alongside the worker's checkpoints) and see at least what was committed before they began.
    let committed = 0;
    let writing = true;
    let reads = 0;
    const reading = (async () => {
      let previous = 0;
      while (writing) {
        const before = committed;
        const n = await count(storage, tenant);
        expect(n).toBeGreaterThanOrEqual(before);
        expect(n).toBeGreaterThanOrEqual(previous);
        previous = n;
        reads++;
        await sleep(1);
      }
    })();
    const names: string[] = [];
    try {
      for (let b = 0; b < 30; b++) {
        for (let i = 0; i < 20; i++) {
          const name = `u-${String(b).padStart(3, '0')}-${String(i).padStart(3, '0')}`;
          await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user(name)).execute());
          names.push(name);
          committed++;
        }
        await sleep(25);
      }
    } finally {
      writing = false;
      await reading;
    }
    await until('a checkpoint', () => storage.checkpoints.stats.runs > 0);
    expect(storage.checkpoints.stats.failures).toBe(0);
    expect(reads).toBeGreaterThan(0);
    expect(await usernames(storage, tenant)).toEqual(names);

    // Once the worker has checkpointed everything, the database file alone (without its WAL) holds every row.
    const final = await storage.checkpoints.checkpoint(file);
    expect(final.checkpointed).toBe(final.log);
    const copy = path.join(env.config.dataDir, 'copy-of-tenant.db');
    copyFileSync(file, copy);
    expect(inspect(copy)).toEqual({ integrity: 'ok', usernames: names });

    await closeSqlite(storage);
    expect(inspect(file)).toEqual({ integrity: 'ok', usernames: names });
  });

  it('a dropped tenant store can be created again under the same id while checkpoints run: empty, usable and checkpointed', async () => {
    const { storage, tenant, file } = await openWithTenant();
    await commitUntil(storage, tenant, 'old', 'checkpoints of the first store', () => storage.checkpoints.stats.runs >= 2);
    await commitStream(storage, tenant, 'old-more', { batches: 2, perBatch: 20, pauseMs: 25 });

    await storage.dropTenantStore(tenant);
    expect(existsSync(file)).toBe(false);
    expect(existsSync(`${file}-wal`)).toBe(false);

    await storage.createTenantStore(tenant);
    expect(await count(storage, tenant)).toBe(0);
    expect(await autoCheckpoint(storage, tenant)).toBe(0);
    const runsBefore = storage.checkpoints.stats.runs;
    const names = await commitStream(storage, tenant, 'new', { batches: 5, perBatch: 20, pauseMs: 25 });
    expect(await usernames(storage, tenant)).toEqual(names);
    await until('checkpoints of the new store', () => storage.checkpoints.stats.runs > runsBefore);
    // The worker checkpoints the new file, not a connection it kept to the removed one: the database file alone has the new rows.
    const final = await storage.checkpoints.checkpoint(file);
    expect(final.busy).toBe(0);
    expect(final.checkpointed).toBe(final.log);
    const copy = path.join(env.config.dataDir, 'copy-of-new-tenant.db');
    copyFileSync(file, copy);
    expect(inspect(copy)).toEqual({ integrity: 'ok', usernames: names });
    expect(storage.checkpoints.stats.failures).toBe(0);
  });

  it('a worker that cannot start: the checkpointer becomes unavailable, transactions go on, and write connections checkpoint in their commits (wal_autocheckpoint = 1000)', async () => {
    const failing = new URL(`data:text/javascript,${encodeURIComponent("throw new Error('this checkpoint worker cannot start');")}`);
    const storage = await openSqlite({ intervalMs: 20, workerUrl: failing });
    const workersBefore = workers.length;
    const tenant = newId();
    await storage.createTenantStore(tenant);
    const file = fileOf(storage, tenant);
    // The worker starts with the first checkpoint; until then the checkpointer counts as available.
    expect(storage.checkpoints.available).toBe(true);
    expect(await autoCheckpoint(storage, tenant)).toBe(0);

    const names: string[] = [];
    const deadline = performance.now() + 10_000;
    while (storage.checkpoints.available) {
      if (performance.now() > deadline) throw new Error('timed out waiting for the worker to fail');
      const name = `u-${String(names.length).padStart(5, '0')}`;
      await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user(name)).execute());
      names.push(name);
      await sleep(5);
    }
    expect(workers.length).toBe(workersBefore + 1);
    await until('the failed worker to exit', () => workers[workersBefore]!.exitCode !== undefined);
    expect(workers[workersBefore]!.exitCode).not.toBe(0);

    // The open write connection checkpoints itself again, as SQLite does by default…
    expect(await autoCheckpoint(storage, tenant)).toBe(1000);
    // …and so does one opened afterwards.
    const other = newId();
    await storage.createTenantStore(other);
    expect(await autoCheckpoint(storage, other)).toBe(1000);

    // Transactions go on; nothing more is sent to a worker.
    for (let i = 0; i < 20; i++) {
      const name = `v-${String(i).padStart(5, '0')}`;
      await storage.tenant(tenant).transaction((db) => db.insertInto('users').values(user(name)).execute());
      names.push(name);
    }
    await storage.tenant(other).transaction((db) => db.insertInto('users').values(user('other')).execute());
    expect(await usernames(storage, tenant)).toEqual(names);
    expect(await usernames(storage, other)).toEqual(['other']);
    await expect(storage.checkpoints.checkpoint(file)).rejects.toThrow(/not running/);
    expect(workers.length).toBe(workersBefore + 1);
    expect(storage.checkpoints.stats.runs).toBe(0);

    const started = performance.now();
    await closeSqlite(storage);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(inspect(file)).toEqual({ integrity: 'ok', usernames: names });
  });

  it('close() stops the worker promptly: no worker left running, checkpoint() rejects, the worker has closed its connections, and a second close() resolves', async () => {
    const storage = await openSqlite();
    const workersBefore = workers.length;
    const tenant = newId();
    await storage.createTenantStore(tenant);
    const file = fileOf(storage, tenant);
    const names = await commitStream(storage, tenant, 'u', { batches: 3, perBatch: 10, pauseMs: 25 });
    await until('a checkpoint', () => storage.checkpoints.stats.runs > 0);
    expect(workers.length).toBe(workersBefore + 1);
    const worker = workers[workersBefore]!;
    expect(worker.exitCode).toBeUndefined();
    expect(existsSync(`${file}-wal`)).toBe(true);

    const started = performance.now();
    await closeSqlite(storage);
    const took = performance.now() - started;
    // Well within the 5 s after which close() would terminate a worker that does not stop.
    expect(took).toBeLessThan(2000);
    // The worker shut down by itself (a terminated worker exits with 1).
    expect(worker.exitCode).toBe(0);
    expect(workers.length).toBe(workersBefore + 1);
    expect(storage.checkpoints.available).toBe(false);
    await expect(storage.checkpoints.checkpoint(file)).rejects.toThrow(/not running/);
    // The last connection to close checkpoints and removes the WAL, which it cannot while another (the worker's) is open.
    expect(existsSync(`${file}-wal`)).toBe(false);
    expect(inspect(file)).toEqual({ integrity: 'ok', usernames: names });
    // Closing again does nothing more, and resolves too.
    const again = await Promise.race([storage.close().then(() => 'closed'), sleep(2000).then(() => 'still closing')]);
    expect(again).toBe('closed');
    expect(workers.length).toBe(workersBefore + 1);
  });
});
