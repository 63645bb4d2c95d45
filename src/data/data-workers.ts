import { Worker } from 'node:worker_threads';
import { CustosError, type ErrorCode } from '../core/errors.js';
import { workerModuleUrl } from '../core/worker-module.js';
import type { ObjectKeys, ObjectKeysTransfer } from '../crypto/field-cipher.js';
import { renderExportPage, type ExportPage, type ExportShape } from './export-format.js';
import type { FieldDef } from './fields.js';
import { encodeRecord, type EncodedRecord } from './record-codec.js';

/** A record to encode: its id and its checked values after the write (see `encodeRecord`). */
export interface EncodeInput {
  id: string;
  values: ReadonlyMap<string, unknown>;
  presetHashes?: { sha256?: string; md5?: string } | undefined;
}

/** What is encoded: records of one list, written at the same time. */
export interface EncodeJob {
  fields: readonly FieldDef[];
  listKey: number;
  times: { created: number; updated: number };
  records: readonly EncodeInput[];
}

/**
 * An encode job as it crosses to a worker: column by column (the values of
 * each field in an array), which costs the sending thread a fraction of
 * cloning a Map per record.
 */
interface ColumnJob {
  fields: readonly FieldDef[];
  listKey: number;
  times: { created: number; updated: number };
  ids: string[];
  /** Per field of `fields`, in order: each record's value (undefined when absent). */
  columns: unknown[][];
  presetHashes: Array<EncodeInput['presetHashes'] | null>;
}

/**
 * Encoded records as they cross back: strings and numbers in arrays, every
 * blind index and sealed value in one transferred buffer (`bin`), located by
 * `at` (start and length per record: email blind index, mobile blind index,
 * sealed values; length -1 for null). The receiving thread makes Buffers of
 * slices of it, with no copy.
 */
interface EncodedColumns {
  customerId: Array<string | null>;
  sha256: Array<string | null>;
  md5: Array<string | null>;
  keys: Float64Array;
  plain: string[];
  bin: Uint8Array;
  at: Int32Array;
  /** Index rows of indexed custom fields, per record; null when no record has any. */
  index: Array<Array<{ field: string; value: Uint8Array }>> | null;
}

export type WorkerRequest = { id: number; keys: ObjectKeysTransfer } & ({ kind: 'render'; shape: ExportShape; page: ExportPage } | { kind: 'encode'; job: ColumnJob });

export type WorkerReply = { id: number; text: string } | { id: number; encoded: EncodedColumns } | { id: number; error: { code?: ErrorCode; message?: string } };

interface Slot {
  worker: Worker;
  pending: Map<number, { resolve: (reply: WorkerReply) => void; reject: (err: Error) => void }>;
}

/** New records encoded between two turns of the event loop when no worker thread does it (about 10 ms of CPU). */
export const ENCODE_SLICE = 500;

/** Encodes records in this thread. */
export function encodeRecords(keys: ObjectKeys, job: EncodeJob): EncodedRecord[] {
  return job.records.map((r) => encodeRecord(keys, job.fields, job.listKey, r.id, r.values, job.times, r.presetHashes));
}

function toColumns(job: EncodeJob, from: number, to: number): ColumnJob {
  const records = job.records.slice(from, to);
  return {
    fields: job.fields,
    listKey: job.listKey,
    times: job.times,
    ids: records.map((r) => r.id),
    columns: job.fields.map((f) => records.map((r) => r.values.get(f.name))),
    presetHashes: records.map((r) => r.presetHashes ?? null),
  };
}

/** A worker's part: encodes the records of a column job, and packs the result for the way back. */
export function encodeColumns(keys: ObjectKeys, job: ColumnJob): { encoded: EncodedColumns; transfer: ArrayBuffer[] } {
  const n = job.ids.length;
  const out = { customerId: new Array<string | null>(n), sha256: new Array<string | null>(n), md5: new Array<string | null>(n), keys: new Float64Array(n * 3), plain: new Array<string>(n), at: new Int32Array(n * 6) };
  const blobs: Array<Buffer | null> = [];
  let index: EncodedColumns['index'] = null;
  for (let i = 0; i < n; i++) {
    const values = new Map<string, unknown>();
    for (let c = 0; c < job.fields.length; c++) {
      const v = job.columns[c]![i];
      if (v !== undefined) values.set(job.fields[c]!.name, v);
    }
    const e = encodeRecord(keys, job.fields, job.listKey, job.ids[i]!, values, job.times, job.presetHashes[i] ?? undefined);
    const r = e.row;
    out.customerId[i] = r.customer_id;
    out.sha256[i] = r.email_sha256;
    out.md5[i] = r.email_md5;
    out.plain[i] = r.plain;
    out.keys[i * 3] = r.k_sha256 ?? Number.NaN;
    out.keys[i * 3 + 1] = r.k_md5 ?? Number.NaN;
    out.keys[i * 3 + 2] = r.k_mobile ?? Number.NaN;
    blobs.push(r.email_bi, r.mobile_bi, r.protected);
    if (e.index.length > 0) (index ??= Array.from({ length: n }, () => []))[i] = e.index;
  }
  let size = 0;
  for (const b of blobs) size += b?.length ?? 0;
  const bin = Buffer.allocUnsafeSlow(size);
  let pos = 0;
  blobs.forEach((b, j) => {
    out.at[j * 2] = pos;
    out.at[j * 2 + 1] = b === null ? -1 : b.length;
    if (b !== null) pos += b.copy(bin, pos);
  });
  return { encoded: { ...out, bin, index }, transfer: [bin.buffer] };
}

/** Turns a worker's packed result back into encoded records, given the job's part it answers. */
function fromColumns(job: ColumnJob, e: EncodedColumns): EncodedRecord[] {
  const bin = Buffer.from(e.bin.buffer, e.bin.byteOffset, e.bin.byteLength);
  const blob = (j: number) => (e.at[j * 2 + 1]! < 0 ? null : bin.subarray(e.at[j * 2], e.at[j * 2]! + e.at[j * 2 + 1]!));
  const key = (v: number) => (Number.isNaN(v) ? null : v);
  return job.ids.map((id, i) => ({
    row: {
      list_key: job.listKey,
      id,
      customer_id: e.customerId[i]!,
      email_sha256: e.sha256[i]!,
      email_md5: e.md5[i]!,
      email_bi: blob(i * 3),
      mobile_bi: blob(i * 3 + 1),
      k_sha256: key(e.keys[i * 3]!),
      k_md5: key(e.keys[i * 3 + 1]!),
      k_mobile: key(e.keys[i * 3 + 2]!),
      plain: e.plain[i]!,
      protected: blob(i * 3 + 2),
      created_at: job.times.created,
      updated_at: job.times.updated,
    },
    index: (e.index?.[i] ?? []).map((ix) => ({ field: ix.field, value: Buffer.from(ix.value.buffer, ix.value.byteOffset, ix.value.byteLength) })),
  }));
}

/**
 * Worker threads for the bulk cryptography of customer data, so that the
 * thread serving requests and talking to storage runs beside them:
 * - export pages: one AES-GCM open, JSON decoding, redaction and formatting
 *   per record, the bulk of an export's CPU;
 * - new records of an import: one AES-GCM seal, two HMAC blind indexes and
 *   two oHashes per record, the bulk of an import's CPU.
 *
 * `threads: 0` does the work in the calling thread. Workers start on first
 * use, are shared by every request of the process, never keep the process
 * alive, and a worker that fails fails only its own jobs (the next job starts
 * a new one). The data keys of the list concerned cross to the thread with
 * each job and stay in the process.
 */
export class DataWorkers {
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
    if (this.#closed) throw new Error('the data workers are closed');
    if (this.threads === 0) return renderExportPage(keys, shape, page);
    const reply = await this.#post(this.#leastBusy(), { id: 0, kind: 'render', keys: keys.toTransfer(), shape, page });
    if (!('text' in reply)) throw new Error('unexpected reply from a data worker');
    return reply.text;
  }

  /**
   * Encodes new records (`encodeRecord` for each, in order), split over the
   * worker threads; without threads, in this thread, a slice at a time with
   * a turn of the event loop between slices.
   */
  async encode(keys: ObjectKeys, job: EncodeJob): Promise<EncodedRecord[]> {
    if (this.#closed) throw new Error('the data workers are closed');
    if (this.threads === 0) {
      const out: EncodedRecord[] = [];
      for (let i = 0; i < job.records.length; i += ENCODE_SLICE) {
        if (i > 0) await new Promise((resolve) => setImmediate(resolve));
        out.push(...encodeRecords(keys, { ...job, records: job.records.slice(i, i + ENCODE_SLICE) }));
      }
      return out;
    }
    const transfer = keys.toTransfer();
    const parts = Math.min(this.threads, Math.ceil(job.records.length / ENCODE_SLICE));
    const size = Math.ceil(job.records.length / parts);
    const jobs = Array.from({ length: parts }, (_, p) => toColumns(job, p * size, (p + 1) * size));
    const replies = await Promise.all(jobs.map((part) => this.#post(this.#leastBusy(), { id: 0, kind: 'encode', keys: transfer, job: part })));
    return replies.flatMap((reply, p) => {
      if (!('encoded' in reply)) throw new Error('unexpected reply from a data worker');
      return fromColumns(jobs[p]!, reply.encoded);
    });
  }

  #post(slot: Slot, request: WorkerRequest): Promise<WorkerReply> {
    const id = this.#nextId++;
    return new Promise<WorkerReply>((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      slot.worker.postMessage({ ...request, id });
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
    const worker = new Worker(workerModuleUrl(new URL('./data-worker.js', import.meta.url)));
    worker.unref();
    const slot: Slot = { worker, pending: new Map() };
    this.#slots[index] = slot;
    const failAll = (err: Error) => {
      if (this.#slots[index] === slot) this.#slots[index] = undefined;
      for (const p of slot.pending.values()) p.reject(err);
      slot.pending.clear();
    };
    worker.on('message', (m: WorkerReply) => {
      const p = slot.pending.get(m.id);
      if (!p) return;
      slot.pending.delete(m.id);
      if ('error' in m) p.reject(m.error.code ? new CustosError(m.error.code) : new Error(m.error.message ?? 'data worker failed'));
      else p.resolve(m);
    });
    worker.on('error', (err: Error) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`data worker exited with code ${code}`)));
    return slot;
  }

  /** Stops the worker threads; jobs still running fail. */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.splice(0);
    await Promise.all(slots.flatMap((s) => (s ? [s.worker.terminate()] : [])));
  }
}
