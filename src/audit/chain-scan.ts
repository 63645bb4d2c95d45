/**
 * The hot loop of chain verification, kept free of relative imports so that a
 * worker thread can load this very file (the built `.js`, or the `.ts` source
 * through Node's type stripping when tests run from source).
 *
 * Rows are not read one by one: a query concatenates a range of events into
 * one buffer of records, and the loop hashes slices of it in place. That
 * avoids a JavaScript object per row and per column, which costs more than the
 * SHA-256 itself. Bodies are never parsed.
 *
 * Record layout (built by the SQL below, big-endian):
 *
 * ```
 * u32 n = 40 + len(body) | preimage: u64 seq ‖ prev_hash[32] ‖ body | hash[32]
 * ```
 *
 * so the preimage of `chainHash` (see `chain-hash.ts`) lies contiguous in the
 * buffer and is hashed without copying.
 */
import Database from 'better-sqlite3';
import { hash } from 'node:crypto';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';

/** Events per chunk query: large enough to amortise the query, small enough to keep memory flat. */
export const SCAN_CHUNK = 1024;

/** Anomalies listed per scan; beyond this they are only counted. */
export const MAX_LISTED = 1000;

/**
 * SQLite: the records of events `seq` in [?, ?]. `group_concat` follows the
 * rowid scan order; the scanner checks the order and falls back to
 * {@link sqliteOrderedChunkSql} if it ever differs.
 */
export function sqliteChunkSql(table: string): string {
  return `SELECT CAST(group_concat(concat(unhex(printf('%08x%016x', 40 + octet_length(body), seq)), prev_hash, body, hash), '') AS BLOB) AS chunk FROM ${table} WHERE seq >= ? AND seq <= ?`;
}

export function sqliteOrderedChunkSql(table: string): string {
  return `SELECT CAST(group_concat(concat(unhex(printf('%08x%016x', 40 + octet_length(body), seq)), prev_hash, body, hash), '' ORDER BY seq) AS BLOB) AS chunk FROM ${table} WHERE seq >= ? AND seq <= ?`;
}

/** PostgreSQL: the same records, ordered explicitly. */
export function postgresChunkSql(table: string): string {
  return `SELECT string_agg(int4send(40 + octet_length(convert_to(body, 'UTF8'))) || int8send(seq) || prev_hash || convert_to(body, 'UTF8') || hash, ''::bytea ORDER BY seq) AS chunk FROM ${table} WHERE seq >= $1 AND seq <= $2`;
}

/** What one scan of events [from, to] found. Hashes are hex. */
export interface ScanResult {
  from: number;
  to: number;
  count: number;
  first?: { seq: number; prevHash: string };
  last?: { seq: number; hash: string };
  /** Events whose stored hash is not the hash of their contents and position. */
  selfFail: number[];
  /** Events whose prev_hash is not the hash of the event before them (both present). */
  linkFail: number[];
  /** Ranges of positions with no event. */
  gaps: [number, number][];
  /** Events whose hash differs from the one a checkpoint recorded for them. */
  expectedMismatch: number[];
  /** Anomalies not listed because of {@link MAX_LISTED}. */
  unlisted: number;
}

/** Checkpointed hashes by seq (hex), checked as the scan passes them. */
export type ExpectedHashes = ReadonlyMap<number, readonly string[]>;

function seqAt(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off) * 0x1_0000_0000 + buf.readUInt32BE(off + 4);
}

/** Consumes record buffers for one range and accumulates a {@link ScanResult}. */
export class RecordScanner {
  readonly #r: ScanResult;
  readonly #expected: ExpectedHashes | undefined;
  #next: number;
  #lastHash = Buffer.alloc(32);
  #hasLast = false;

  constructor(from: number, to: number, expected?: ExpectedHashes) {
    this.#r = { from, to, count: 0, selfFail: [], linkFail: [], gaps: [], expectedMismatch: [], unlisted: 0 };
    this.#next = from;
    this.#expected = expected;
  }

  #list(into: number[], seq: number): void {
    if (this.#r.selfFail.length + this.#r.linkFail.length + this.#r.expectedMismatch.length < MAX_LISTED) into.push(seq);
    else this.#r.unlisted++;
  }

  /** True when the records of `chunk` ascend by seq (checked before any is consumed). */
  static ordered(chunk: Buffer): boolean {
    let prev = -1;
    for (let off = 0; off < chunk.length; ) {
      const len = chunk.readUInt32BE(off);
      const seq = seqAt(chunk, off + 4);
      if (seq <= prev || len < 40 || off + 4 + len + 32 > chunk.length) return false;
      prev = seq;
      off += 4 + len + 32;
    }
    return true;
  }

  /** Consumes one chunk whose records ascend (see {@link RecordScanner.ordered}). */
  feed(chunk: Buffer): void {
    const r = this.#r;
    const ab = chunk.buffer;
    const base = chunk.byteOffset;
    const last = this.#lastHash;
    for (let off = 0; off < chunk.length; ) {
      const len = chunk.readUInt32BE(off);
      const p = off + 4;
      const h = p + len;
      const seq = seqAt(chunk, p);
      if (r.count === 0) r.first = { seq, prevHash: chunk.toString('hex', p + 8, p + 40) };
      if (seq > this.#next) {
        if (r.gaps.length < MAX_LISTED) r.gaps.push([this.#next, seq - 1]);
        else r.unlisted++;
      } else if (this.#hasLast) {
        for (let i = 0; i < 32; i++) {
          if (chunk[p + 8 + i] !== last[i]) {
            this.#list(r.linkFail, seq);
            break;
          }
        }
      }
      // 'binary' (latin1) output: one character per byte, and no Buffer allocated per event.
      const digest = hash('sha256', new Uint8Array(ab, base + p, len), 'binary');
      for (let i = 0; i < 32; i++) {
        if (digest.charCodeAt(i) !== chunk[h + i]) {
          this.#list(r.selfFail, seq);
          break;
        }
      }
      if (this.#expected !== undefined) {
        const want = this.#expected.get(seq);
        if (want !== undefined) {
          const got = chunk.toString('hex', h, h + 32);
          if (want.some((w) => w !== got)) this.#list(r.expectedMismatch, seq);
        }
      }
      chunk.copy(last, 0, h, h + 32);
      this.#hasLast = true;
      this.#next = seq + 1;
      r.count++;
      off = h + 32;
    }
  }

  finish(): ScanResult {
    const r = this.#r;
    if (r.count > 0) r.last = { seq: this.#next - 1, hash: this.#lastHash.toString('hex') };
    if (this.#next <= r.to) {
      if (r.gaps.length < MAX_LISTED) r.gaps.push([this.#next, r.to]);
      else r.unlisted++;
    }
    return r;
  }
}

/**
 * Scans events [from, to] of `table` in a SQLite file through a read-only
 * connection of its own, inside one read transaction (one snapshot).
 */
export function scanSqliteFile(file: string, table: string, from: number, to: number, expected?: ExpectedHashes): ScanResult {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 10000');
    const fast = db.prepare<[number, number], Buffer | null>(sqliteChunkSql(table)).pluck();
    const ordered = db.prepare<[number, number], Buffer | null>(sqliteOrderedChunkSql(table)).pluck();
    const scanner = new RecordScanner(from, to, expected);
    db.prepare('BEGIN').run();
    try {
      for (let lo = from; lo <= to; lo += SCAN_CHUNK) {
        const hi = Math.min(lo + SCAN_CHUNK - 1, to);
        let chunk = fast.get(lo, hi);
        if (!chunk) continue;
        if (!RecordScanner.ordered(chunk)) chunk = ordered.get(lo, hi)!;
        scanner.feed(chunk);
      }
    } finally {
      db.prepare('COMMIT').run();
    }
    return scanner.finish();
  } finally {
    db.close();
  }
}

/** What the main thread sends a scanning worker. */
export interface ScanJob {
  custosChainScan: true;
  file: string;
  table: string;
  from: number;
  to: number;
  expected?: [number, string[]][];
}

if (!isMainThread && parentPort && (workerData as Partial<ScanJob> | null)?.custosChainScan === true) {
  const job = workerData as ScanJob;
  parentPort.postMessage(scanSqliteFile(job.file, job.table, job.from, job.to, job.expected ? new Map(job.expected) : undefined));
}
