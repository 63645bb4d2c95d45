import { Worker } from 'node:worker_threads';
import { workerModuleUrl } from '../../core/worker-module.js';

/** How often, at most, a file that keeps receiving commits is checkpointed. */
export const CHECKPOINT_INTERVAL_MS = 1000;

export interface CheckpointResult {
  /** 1 if a lock held by another connection kept the checkpoint from finishing. */
  busy: number;
  /** Frames in the WAL. */
  log: number;
  /** Frames of it now copied into the database file. */
  checkpointed: number;
}

type RequestBody = { op: 'checkpoint' | 'forget'; file: string } | { op: 'shutdown' };
export type CheckpointRequest = RequestBody & { id: number };
export type CheckpointReply = { id: number; result?: CheckpointResult; error?: string };

export interface CheckpointerStats {
  /** Checkpoints run by the worker. */
  runs: number;
  /** Checkpoints that failed (the next interval tries again). */
  failures: number;
  last: CheckpointResult | undefined;
}

export interface WalCheckpointerOptions {
  intervalMs?: number;
  /** The worker module (tests start a failing one); default the checkpoint worker beside this file. */
  workerUrl?: URL;
  /**
   * Called once if the worker cannot be started or dies: the caller turns
   * SQLite's own checkpoints (inside commits) back on, so WAL files stay
   * bounded whatever happens here.
   */
  onUnavailable: (err: Error) => void;
}

interface FileState {
  lastAt: number;
  running: boolean;
}

/**
 * Checkpoints of WAL files on a worker thread, instead of inside commits.
 * In WAL mode SQLite copies committed pages back into the database file once
 * the WAL passes 1,000 pages, synchronously in the commit that crossed the
 * line: on a server that commit's thread is the event loop, and every request
 * of the process waited the checkpoint out (commits of a single-record `GET`'s
 * activity events: p50 0.3 ms, max 28 ms with checkpoints; max 4 ms without).
 * The server's write connections therefore run with `wal_autocheckpoint = 0`
 * and report each commit here; a file that keeps receiving commits is
 * checkpointed at most every {@link CHECKPOINT_INTERVAL_MS}, passively (never
 * waiting for readers or writers, which go on meanwhile), on the worker's own
 * connection, with the same syncs (WAL before, database file after). Commits
 * keep `synchronous = FULL`: what they acknowledge is on disk as before.
 * The worker starts on the first checkpoint and never keeps the process alive.
 */
export class WalCheckpointer {
  readonly #intervalMs: number;
  readonly #workerUrl: URL | undefined;
  readonly #onUnavailable: (err: Error) => void;
  readonly #files = new Map<string, FileState>();
  readonly #pending = new Map<number, { resolve: (r: CheckpointReply) => void; reject: (err: Error) => void }>();
  readonly #stats: CheckpointerStats = { runs: 0, failures: 0, last: undefined };
  #worker: Worker | undefined;
  #exited: Promise<void> | undefined;
  #nextId = 1;
  #unavailable = false;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(opts: WalCheckpointerOptions) {
    this.#intervalMs = opts.intervalMs ?? CHECKPOINT_INTERVAL_MS;
    this.#workerUrl = opts.workerUrl;
    this.#onUnavailable = opts.onUnavailable;
  }

  get stats(): Readonly<CheckpointerStats> {
    return { ...this.#stats };
  }

  /** Whether checkpoints run here (false once the worker failed: SQLite's own then run in commits). */
  get available(): boolean {
    return !this.#unavailable && !this.#closed;
  }

  /** Notes a commit to `file`; starts a checkpoint when the file's interval has passed. Never blocks or throws. */
  afterCommit(file: string): void {
    if (!this.available) return;
    const now = performance.now();
    let s = this.#files.get(file);
    if (!s) {
      // A file's first checkpoint waits one interval: a store that is written once and closed needs none.
      s = { lastAt: now, running: false };
      this.#files.set(file, s);
      return;
    }
    if (s.running || now - s.lastAt < this.#intervalMs) return;
    s.running = true;
    s.lastAt = now;
    const state = s;
    this.checkpoint(file)
      .catch(() => undefined)
      .finally(() => {
        state.running = false;
      });
  }

  /** Checkpoints `file` on the worker now. */
  async checkpoint(file: string): Promise<CheckpointResult> {
    const reply = await this.#send({ op: 'checkpoint', file });
    if (reply.error !== undefined || !reply.result) {
      this.#stats.failures++;
      throw new Error(`checkpoint failed: ${reply.error ?? 'no result'}`);
    }
    this.#stats.runs++;
    this.#stats.last = reply.result;
    return reply.result;
  }

  /** Closes the worker's connection to `file` (before the file is removed or replaced). */
  async forget(file: string): Promise<void> {
    this.#files.delete(file);
    if (!this.#worker) return;
    await this.#send({ op: 'forget', file }).catch(() => undefined);
  }

  /**
   * Closes the worker's connections and stops it. Once: a later call waits for
   * the first (sent again, the shutdown would go to a worker that has exited,
   * and its reply would never come).
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    if (!worker || !this.#exited) return;
    // A worker that does not finish its checkpoint and close its connections in time is stopped.
    const timeout = setTimeout(() => void worker.terminate(), 5000);
    await this.#send({ op: 'shutdown' }, true).catch(() => undefined);
    await this.#exited;
    clearTimeout(timeout);
  }

  #send(request: RequestBody, evenIfClosed = false): Promise<CheckpointReply> {
    if (this.#unavailable || (this.#closed && !evenIfClosed)) return Promise.reject(new Error('the checkpoint worker is not running'));
    const worker = this.#worker ?? this.#start();
    const id = this.#nextId++;
    return new Promise<CheckpointReply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.postMessage({ ...request, id } satisfies CheckpointRequest);
    });
  }

  #start(): Worker {
    const worker = new Worker(this.#workerUrl ?? workerModuleUrl(new URL('./checkpoint-worker.js', import.meta.url)));
    worker.unref();
    this.#worker = worker;
    this.#exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    const fail = (err: Error) => {
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      if (this.#closed || this.#unavailable) return;
      this.#unavailable = true;
      this.#onUnavailable(err);
    };
    worker.on('message', (m: CheckpointReply) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      p.resolve(m);
    });
    worker.on('error', (err: Error) => fail(err));
    worker.on('exit', (code) => fail(new Error(`checkpoint worker exited with code ${code}`)));
    return worker;
  }
}
