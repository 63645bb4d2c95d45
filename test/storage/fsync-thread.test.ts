import { pbkdf2 } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FsyncThread, fsyncOnThreadPool } from '../../src/storage/sqlite/fsync-thread.js';

describe('FsyncThread: fsync on a thread of its own', () => {
  let dir: string;
  let fd: number;
  let thread: FsyncThread;

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'custos-fsync-'));
    fd = openSync(path.join(dir, 'file'), 'w+');
    writeSync(fd, 'some bytes');
  });
  afterAll(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    await thread.close();
  });

  it('syncs a file, and reports the error of a descriptor that is not open', async () => {
    thread = new FsyncThread();
    await expect(thread.sync(fd)).resolves.toBeUndefined();
    await expect(thread.sync(1_000_000)).rejects.toMatchObject({ code: 'EBADF' });
    // The thread goes on after an error.
    await expect(thread.sync(fd)).resolves.toBeUndefined();
  });

  it("does not wait behind work that fills libuv's thread pool (argon2id sign-ins run there), as a sync on the pool does", async () => {
    thread = new FsyncThread();
    await thread.sync(fd); // started
    const order: string[] = [];
    // Twice as many slow jobs as the pool has threads (4 unless UV_THREADPOOL_SIZE says otherwise).
    const poolSize = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const slow = Array.from({ length: poolSize * 2 }, () => new Promise<void>((resolve, reject) => pbkdf2('pw', 'salt', 300_000, 32, 'sha256', (err) => (err ? reject(err) : (order.push('hash'), resolve())))));
    const onPool = fsyncOnThreadPool(fd).then(() => order.push('sync on the pool'));
    const onThread = thread.sync(fd).then(() => order.push('sync on its thread'));
    await Promise.all([...slow, onPool, onThread]);
    expect(order[0]).toBe('sync on its thread');
    expect(order.indexOf('sync on the pool')).toBeGreaterThan(order.indexOf('hash'));
  });

  it('finishes a sync still pending when it is closed, and syncs on the pool afterwards', async () => {
    thread = new FsyncThread();
    const pending = thread.sync(fd);
    await thread.close();
    await expect(pending).resolves.toBeUndefined();
    await expect(thread.sync(fd)).resolves.toBeUndefined();
  });
});
