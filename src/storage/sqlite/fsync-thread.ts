import { fsync } from 'node:fs';
import { Worker } from 'node:worker_threads';

/** `fsync(2)` on libuv's thread pool. */
export function fsyncOnThreadPool(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
}

// The thread: one blocking fsync at a time, in the order asked. CommonJS (an `eval` worker), no imports of ours.
const SOURCE = `
const { parentPort } = require('node:worker_threads');
const { fsyncSync } = require('node:fs');
parentPort.on('message', ({ id, fd }) => {
  try {
    fsyncSync(fd);
    parentPort.postMessage({ id });
  } catch (err) {
    parentPort.postMessage({ id, message: String(err && err.message), code: err && err.code });
  }
});
`;

interface Pending {
  fd: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * `fsync(2)` on a thread of its own, for WAL syncs after a commit (see
 * `WalSync`). Not libuv's thread pool: sign-ins run their argon2id
 * verifications there (each ~10 ms of a core), so under a burst of sign-ins
 * a sync queued behind them would wait out the hashes, and every request
 * whose activity event is in that batch with it. One thread, started on
 * first use, never keeping the process alive; if it fails, syncs go to the
 * thread pool instead (those in flight are sent there again).
 */
export class FsyncThread {
  #worker: Worker | undefined;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #unavailable = false;

  sync(fd: number): Promise<void> {
    if (this.#unavailable) return fsyncOnThreadPool(fd);
    const worker = this.#worker ?? this.#start();
    const id = this.#nextId++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { fd, resolve, reject });
      worker.postMessage({ id, fd });
    });
  }

  /** Stops the thread; a sync still pending is finished on the thread pool, and later ones run there. */
  async close(): Promise<void> {
    this.#unavailable = true;
    await this.#worker?.terminate();
  }

  #start(): Worker {
    const worker = new Worker(SOURCE, { eval: true });
    worker.unref();
    this.#worker = worker;
    worker.on('message', (m: { id: number; message?: string; code?: string }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.message === undefined) p.resolve();
      else p.reject(Object.assign(new Error(m.message), { code: m.code }));
    });
    const fail = () => {
      if (this.#worker !== worker) return;
      this.#worker = undefined;
      this.#unavailable = true;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      for (const p of pending) fsyncOnThreadPool(p.fd).then(p.resolve, p.reject);
    };
    worker.on('error', fail);
    worker.on('exit', fail);
    return worker;
  }
}
