import { CustosError } from '../core/errors.js';

/** When a batch is written: at `maxBatch` items, or `maxDelayMs` after the first item arrived at an idle queue. */
export interface GroupCommitOptions {
  /** Default 256: bounds one transaction's size (and its lock time) on a busy stream. */
  maxBatch?: number;
  /** Default 2 ms: long enough to gather concurrent producers, short against a request's latency. */
  maxDelayMs?: number;
}

export interface GroupCommitStats {
  /** Transactions (flushes) run. */
  transactions: number;
  /** Items written by them. */
  items: number;
  /** Flushes that failed (every item of each was rejected). */
  failures: number;
}

interface Pending<T, R> {
  item: T;
  resolve: (r: R) => void;
  reject: (err: unknown) => void;
}

interface Queue<T, R> {
  items: Pending<T, R>[];
  timer: NodeJS.Timeout | undefined;
  flushing: Promise<void> | undefined;
}

/**
 * Group commit: callers submit items and wait; items of one key (one stream)
 * are written together by `write` in one transaction, so a busy node pays one
 * commit (one fsync) per batch instead of per item. At most one batch per key
 * is in flight; what arrives meanwhile forms the next batch, so batches grow
 * with load and an idle stream waits at most `maxDelayMs`.
 *
 * `write` must return one result per item, in order, and resolve only once
 * the batch is durable. If it throws, every item of that batch is rejected
 * with the error.
 */
export class GroupCommitter<T, R> {
  readonly #write: (key: string, items: T[]) => Promise<R[]>;
  readonly #maxBatch: number;
  readonly #maxDelayMs: number;
  readonly #queues = new Map<string, Queue<T, R>>();
  readonly #stats: GroupCommitStats = { transactions: 0, items: 0, failures: 0 };
  #closed = false;

  constructor(write: (key: string, items: T[]) => Promise<R[]>, opts: GroupCommitOptions = {}) {
    this.#write = write;
    this.#maxBatch = opts.maxBatch ?? 256;
    this.#maxDelayMs = opts.maxDelayMs ?? 2;
    if (!(this.#maxBatch >= 1) || !(this.#maxDelayMs >= 0)) throw new TypeError('maxBatch must be ≥ 1 and maxDelayMs ≥ 0');
  }

  get stats(): Readonly<GroupCommitStats> {
    return { ...this.#stats };
  }

  /** Queues `item` for `key`; resolves with its result after its batch committed. */
  submit(key: string, item: T): Promise<R> {
    if (this.#closed) return Promise.reject(new CustosError('audit_unavailable', 'the activity stream is closing; nothing more is recorded'));
    return new Promise<R>((resolve, reject) => {
      let q = this.#queues.get(key);
      if (!q) {
        q = { items: [], timer: undefined, flushing: undefined };
        this.#queues.set(key, q);
      }
      q.items.push({ item, resolve, reject });
      this.#schedule(key, q);
    });
  }

  #schedule(key: string, q: Queue<T, R>): void {
    if (q.flushing || q.items.length === 0) return;
    if (q.items.length >= this.#maxBatch || this.#maxDelayMs === 0) {
      this.#flush(key, q);
    } else {
      q.timer ??= setTimeout(() => this.#flush(key, q), this.#maxDelayMs);
    }
  }

  #flush(key: string, q: Queue<T, R>): void {
    if (q.timer) clearTimeout(q.timer);
    q.timer = undefined;
    if (q.flushing || q.items.length === 0) return;
    const batch = q.items.splice(0, this.#maxBatch);
    q.flushing = this.#run(key, batch)
      // Let the callers just answered run first: under load they submit again at once, and those
      // items should join the next batch now rather than wait out `maxDelayMs` on an idle-looking queue.
      .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
      .finally(() => {
        q.flushing = undefined;
        if (q.items.length === 0) {
          if (this.#queues.get(key) === q) this.#queues.delete(key);
          return;
        }
        // Items that arrived during the flush have waited long enough: write them now.
        this.#flush(key, q);
      });
  }

  async #run(key: string, batch: Pending<T, R>[]): Promise<void> {
    this.#stats.transactions++;
    let results: R[];
    try {
      results = await this.#write(
        key,
        batch.map((p) => p.item),
      );
      if (results.length !== batch.length) throw new Error('group commit writer returned the wrong number of results');
    } catch (err) {
      this.#stats.failures++;
      for (const p of batch) p.reject(err);
      return;
    }
    this.#stats.items += batch.length;
    batch.forEach((p, i) => p.resolve(results[i]!));
  }

  /** Writes everything queued and waits for it; later submissions are refused. */
  async close(): Promise<void> {
    this.#closed = true;
    for (;;) {
      const pending = [...this.#queues.entries()];
      if (pending.length === 0) return;
      for (const [key, q] of pending) this.#flush(key, q);
      await Promise.all(pending.flatMap(([, q]) => (q.flushing ? [q.flushing.catch(() => undefined)] : [])));
      for (const [key, q] of pending) {
        if (!q.flushing && q.items.length === 0 && this.#queues.get(key) === q) this.#queues.delete(key);
      }
    }
  }
}
