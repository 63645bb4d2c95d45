import { Worker } from 'node:worker_threads';
import { CustosError, type ErrorCode } from '../core/errors.js';
import { workerModuleUrl } from '../core/worker-module.js';
import type { ObjectKeys, ObjectKeysTransfer } from '../crypto/field-cipher.js';
import { renderExportPage, type ExportPage, type ExportShape } from './export-format.js';

export interface RenderRequest {
  id: number;
  keys: ObjectKeysTransfer;
  shape: ExportShape;
  page: ExportPage;
}

export type RenderReply = { id: number; text: string } | { id: number; error: { code?: ErrorCode; message?: string } };

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (text: string) => void; reject: (err: Error) => void }>;
}

/**
 * Renders pages of export lines — one AES-GCM open, JSON decoding, redaction
 * and formatting per record, the bulk of an export's CPU — on worker threads,
 * so that the thread reading pages from storage and writing to the network
 * runs beside them. `threads: 0` renders in the calling thread. Workers start
 * on first use, are shared by every export of the process, never keep the
 * process alive, and a worker that fails fails only its own pages (the next
 * page starts a new one).
 */
export class ExportRenderer {
  readonly threads: number;
  readonly #slots: Array<Slot | undefined>;
  #nextId = 1;
  #closed = false;

  constructor(opts: { threads: number }) {
    if (!Number.isInteger(opts.threads) || opts.threads < 0) throw new TypeError('threads must be a whole number ≥ 0');
    this.threads = opts.threads;
    this.#slots = Array.from({ length: opts.threads }, () => undefined);
  }

  /** The export lines of one page. Rejects as decryption does (`decryption_failed`) for a key it does not have. */
  async render(keys: ObjectKeys, shape: ExportShape, page: ExportPage): Promise<string> {
    if (this.#closed) throw new Error('the export renderer is closed');
    if (this.threads === 0) return renderExportPage(keys, shape, page);
    const slot = this.#leastBusy();
    const id = this.#nextId++;
    return new Promise<string>((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ id, keys: keys.toTransfer(), shape, page } satisfies RenderRequest);
    });
  }

  #leastBusy(): Slot {
    let best = -1;
    for (let i = 0; i < this.#slots.length; i++) {
      const s = this.#slots[i];
      if (!s) {
        best = i;
        break;
      }
      if (best < 0 || s.pending.size < this.#slots[best]!.pending.size) best = i;
    }
    return this.#slots[best] ?? this.#start(best);
  }

  #start(index: number): Slot {
    const worker = new Worker(workerModuleUrl(new URL('./export-worker.js', import.meta.url)));
    worker.unref();
    const slot: Slot = { worker, pending: new Map() };
    this.#slots[index] = slot;
    const failAll = (err: Error) => {
      if (this.#slots[index] === slot) this.#slots[index] = undefined;
      for (const p of slot.pending.values()) p.reject(err);
      slot.pending.clear();
    };
    worker.on('message', (m: RenderReply) => {
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      if ('text' in m) p.resolve(m.text);
      else p.reject(m.error.code ? new CustosError(m.error.code) : new Error(m.error.message ?? 'export worker failed'));
    });
    worker.on('error', (err: Error) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`export worker exited with code ${code}`)));
    return slot;
  }

  /** Stops the worker threads; pages still being rendered fail. */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.splice(0);
    await Promise.all(slots.flatMap((s) => (s ? [s.worker.terminate()] : [])));
  }
}
