import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { workerModuleUrl } from '../core/worker-module.js';
import type { Checkpoint, VerifyProblem, VerifyReport } from './audit-types.js';
import { GENESIS_HASH, chainHash } from './chain-hash.js';
import { RecordScanner, SCAN_CHUNK, scanSqliteFile, type ScanJob, type ScanResult } from './chain-scan.js';
import type { ChainDb, ChainHead, ChainStore } from './chain-store.js';
import { CheckpointSink, sinkFile } from './checkpoint-sink.js';
import type { AuditSigner } from './signing-key.js';

/** Problems listed in a report; the rest are counted in `moreProblems`. */
export const MAX_PROBLEMS = 200;

/** Below this many events a scan runs in one thread: starting workers would cost more than it saves. */
const PARALLEL_MIN_EVENTS = 100_000;

/** Where a stream's events are read from. */
export interface ChainSource {
  /** Tenant id, or `provider`. */
  stream: string;
  store: ChainStore;
  /** Runs `fn` in one read snapshot of the store. */
  read<T>(fn: (db: ChainDb) => Promise<T>): Promise<T>;
  /** The SQLite file holding the stream, when scans may open it read-only themselves (and in parallel). */
  file?: string;
}

export interface VerifyOptions {
  checkpointsDir?: string;
  /** Threads to scan with (default: the machine's available parallelism). */
  threads?: number;
}

class Problems {
  readonly list: VerifyProblem[] = [];
  more = 0;
  add(p: VerifyProblem): void {
    if (this.list.length < MAX_PROBLEMS) this.list.push(p);
    else this.more++;
  }
}

function scanInWorker(job: ScanJob): Promise<ScanResult> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerModuleUrl(new URL('./chain-scan.js', import.meta.url)), { workerData: job });
    let settled = false;
    worker.once('message', (r: ScanResult) => {
      settled = true;
      resolve(r);
    });
    worker.once('error', (err: Error) => {
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`chain scan worker exited with code ${code}`));
    });
  });
}

/** Scans [from, to]: in parallel workers over the SQLite file when it is large, else in this thread. */
async function scan(src: ChainSource, from: number, to: number, expected: Map<number, string[]>, threads: number): Promise<ScanResult[]> {
  if (to < from) return [];
  const total = to - from + 1;
  if (src.file !== undefined) {
    const file = src.file;
    if (threads > 1 && total >= PARALLEL_MIN_EVENTS) {
      const per = Math.ceil(total / threads / SCAN_CHUNK) * SCAN_CHUNK;
      const jobs: ScanJob[] = [];
      for (let lo = from; lo <= to; lo += per) {
        const hi = Math.min(lo + per - 1, to);
        const exp = [...expected].filter(([s]) => s >= lo && s <= hi);
        jobs.push({ custosChainScan: true, file, table: src.store.tables.events, from: lo, to: hi, expected: exp });
      }
      return Promise.all(jobs.map(scanInWorker));
    }
    return [scanSqliteFile(file, src.store.tables.events, from, to, expected)];
  }
  return src.read(async (db) => {
    const scanner = new RecordScanner(from, to, expected);
    // Ask for the next chunk before hashing this one, so the database and the hashing overlap.
    let pending = src.store.chunk(db, from, Math.min(from + SCAN_CHUNK - 1, to));
    for (let lo = from; lo <= to; lo += SCAN_CHUNK) {
      const chunk = await pending;
      const next = lo + SCAN_CHUNK;
      if (next <= to) pending = src.store.chunk(db, next, Math.min(next + SCAN_CHUNK - 1, to));
      if (chunk) scanner.feed(chunk);
    }
    return [scanner.finish()];
  });
}

function addExpected(expected: Map<number, string[]>, seq: number, hash: string): void {
  const list = expected.get(seq);
  if (!list) expected.set(seq, [hash]);
  else if (!list.includes(hash)) list.push(hash);
}

function range(a: number, b: number): string {
  return a === b ? `event ${a} is` : `events ${a}-${b} (${b - a + 1}) are`;
}

/**
 * Walks a stream's hash chain and checks it against its signed checkpoints and
 * anchor (and, with `checkpointsDir`, the copies exported there). Reports each
 * problem by kind: modified, missing, reordered, truncated, bad-signature.
 */
export async function verifyChain(src: ChainSource, signer: AuditSigner, opts: VerifyOptions = {}): Promise<VerifyReport> {
  // A measurement, not a decision: wall time is fine here.
  const started = performance.now();
  const problems = new Problems();
  const notes: string[] = [];

  const meta = await src.read(async (db) => ({
    head: await src.store.head(db),
    maxSeq: await src.store.maxSeq(db),
    anchor: await src.store.latestAnchor(db, src.stream),
    checkpoints: await src.store.checkpoints(db, src.stream, 'checkpoint'),
  }));

  let anchor: { seq: number; hash: Buffer } = { seq: 0, hash: GENESIS_HASH };
  if (meta.anchor) {
    if (!signer.verify(meta.anchor)) {
      problems.add({ kind: 'bad-signature', seq: meta.anchor.seq, message: `bad signature: the purge anchor at event ${meta.anchor.seq} is not signed by this deployment's key` });
    }
    anchor = { seq: meta.anchor.seq, hash: Buffer.from(meta.anchor.hash, 'hex') };
  }

  let head: ChainHead;
  if (meta.head) {
    head = meta.head;
    if (meta.maxSeq > head.seq) {
      problems.add({ kind: 'modified', seq: head.seq + 1, toSeq: meta.maxSeq, message: `modified: events ${head.seq + 1}-${meta.maxSeq} are not part of the chain (its head ends at event ${head.seq})` });
    }
  } else {
    problems.add({ kind: 'modified', message: 'modified: the chain head row is missing' });
    head = { seq: Math.max(meta.maxSeq, anchor.seq), hash: GENESIS_HASH };
  }
  const end = head.seq;

  const expected = new Map<number, string[]>();
  let beyondEnd: { seq: number; where: string } | undefined;
  const noteBeyond = (c: Checkpoint, where: string): void => {
    if (c.seq > end && (!beyondEnd || c.seq > beyondEnd.seq)) beyondEnd = { seq: c.seq, where };
  };
  for (const c of meta.checkpoints) {
    if (!signer.verify(c)) {
      problems.add({ kind: 'bad-signature', seq: c.seq, message: `bad signature: the stored checkpoint at event ${c.seq} is not signed by this deployment's key` });
      continue;
    }
    if (c.seq > anchor.seq) addExpected(expected, c.seq, c.hash);
    noteBeyond(c, 'a stored checkpoint');
  }

  let external: number | undefined;
  if (opts.checkpointsDir !== undefined) {
    const file = sinkFile(opts.checkpointsDir, src.stream);
    const lines = await CheckpointSink.read(opts.checkpointsDir, src.stream);
    external = 0;
    if (!lines) {
      notes.push(`${file} does not exist: no external checkpoints to compare with, so a truncated stream cannot be detected`);
    } else {
      for (const l of lines) {
        if ('error' in l) {
          problems.add({ kind: 'bad-signature', message: `bad signature: line ${l.line} of ${file} is not a signed checkpoint (${l.error})` });
          continue;
        }
        const c = l.checkpoint;
        if (c.stream !== src.stream || !signer.verify(c)) {
          problems.add({ kind: 'bad-signature', seq: c.seq, message: `bad signature: line ${l.line} of ${file} (checkpoint at event ${c.seq}) does not carry a valid signature for this stream` });
          continue;
        }
        external++;
        if (c.seq === anchor.seq && c.hash !== anchor.hash.toString('hex')) {
          problems.add({ kind: 'modified', seq: c.seq, message: `modified: checkpoint at event ${c.seq} (line ${l.line} of ${file}) disagrees with the purge anchor` });
        } else if (c.seq > anchor.seq) {
          addExpected(expected, c.seq, c.hash);
          noteBeyond(c, `${file} line ${l.line}`);
        }
      }
    }
  } else {
    notes.push('truncation of the newest events cannot be detected without external checkpoints: run with --checkpoints DIR (the auditCheckpointDir sink)');
  }

  const threads = Math.max(1, opts.threads ?? availableParallelism());
  const results = await scan(src, anchor.seq + 1, end, expected, threads);

  // Merge segments: links across their boundaries, and everything they listed.
  let events = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  const selfFail: number[] = [];
  const linkFail: number[] = [];
  const mismatch: number[] = [];
  const gaps: [number, number][] = [];
  let unlisted = 0;
  let prev: { seq: number; hash: string } = { seq: anchor.seq, hash: anchor.hash.toString('hex') };
  for (const r of results) {
    events += r.count;
    selfFail.push(...r.selfFail);
    linkFail.push(...r.linkFail);
    mismatch.push(...r.expectedMismatch);
    gaps.push(...r.gaps);
    unlisted += r.unlisted;
    if (r.first) {
      firstSeq ??= r.first.seq;
      if (r.first.seq === prev.seq + 1 && r.first.prevHash !== prev.hash) linkFail.push(r.first.seq);
    }
    if (r.last) {
      prev = r.last;
      lastSeq = r.last.seq;
    }
  }
  linkFail.sort((a, b) => a - b);

  // Diagnose hash failures: an intact event at the wrong position is "reordered", anything else "modified".
  const modified = new Set<number>();
  const reordered = new Map<number, number>();
  const suspects = selfFail.slice(0, MAX_PROBLEMS);
  const linkOnly = linkFail.filter((s) => !selfFail.includes(s)).slice(0, MAX_PROBLEMS);
  const ids = new Map<number, string>();
  await src.read(async (db) => {
    const rows = await src.store.rows(db, [...new Set([...suspects, ...linkOnly.map((s) => s - 1)])]);
    for (const r of rows) ids.set(r.seq, r.id);
    const bad = rows.filter((r) => suspects.includes(r.seq));
    const where = await src.store.seqsByHash(db, bad.map((r) => r.prev_hash));
    for (const r of bad) {
      // Where could this event have come from? After its predecessor's position (if that did not move
      // too), or from the position of another failing event (two swapped events trade places).
      const candidates = new Set<number>();
      if (r.prev_hash.equals(anchor.hash)) candidates.add(anchor.seq + 1);
      if (r.prev_hash.equals(GENESIS_HASH)) candidates.add(1);
      const at = where.get(r.prev_hash.toString('hex'));
      if (at !== undefined) candidates.add(at + 1);
      for (const s of suspects) candidates.add(s);
      candidates.delete(r.seq);
      const body = Buffer.from(r.body, 'utf8');
      const origin = [...candidates].find((c) => c > 0 && chainHash(c, r.prev_hash, body).equals(r.hash));
      if (origin !== undefined) reordered.set(r.seq, origin);
      else modified.add(r.seq);
    }
  });
  const idOf = (seq: number): string => (ids.has(seq) ? ` (${ids.get(seq)})` : '');

  for (const seq of suspects) {
    const origin = reordered.get(seq);
    if (origin !== undefined) {
      problems.add({ kind: 'reordered', seq, message: `reordered: event ${seq}${idOf(seq)} is intact but belongs at position ${origin}` });
    } else {
      problems.add({ kind: 'modified', seq, message: `modified: event ${seq}${idOf(seq)} does not match its hash (its contents were changed)` });
    }
  }
  for (const seq of linkOnly) {
    // Explained already: the event before it moved or was modified (and reported).
    if (reordered.has(seq) || reordered.has(seq - 1) || modified.has(seq - 1)) continue;
    modified.add(seq - 1);
    problems.add({ kind: 'modified', seq: seq - 1, message: `modified: event ${seq - 1}${idOf(seq - 1)} was changed and re-hashed: event ${seq} no longer links to it` });
  }
  for (const [a, b] of gaps) {
    if (b === end && meta.head) {
      problems.add({ kind: 'truncated', seq: a, toSeq: b, message: `truncated: ${range(a, b)} missing at the end of the stream (the chain head records event ${end})` });
    } else {
      problems.add({ kind: 'missing', seq: a, toSeq: b, message: `missing: ${range(a, b)} missing` });
    }
  }
  for (const seq of mismatch) {
    problems.add({ kind: 'modified', seq, message: `modified: event ${seq} no longer has the hash a signed checkpoint recorded for it (the stream was rewritten up to there)` });
  }
  if (meta.head && prev.seq === end && prev.hash !== head.hash.toString('hex')) {
    problems.add({ kind: 'modified', seq: end, message: `modified: the chain head's hash does not match event ${end}` });
  }
  if (beyondEnd) {
    problems.add({
      kind: 'truncated',
      seq: end + 1,
      toSeq: beyondEnd.seq,
      message: `truncated: ${beyondEnd.where} names event ${beyondEnd.seq}, but the stream ends at event ${end}: ${range(end + 1, beyondEnd.seq)} gone`,
    });
  }
  problems.more += unlisted;

  const invalid = modified.size + reordered.size + Math.max(0, selfFail.length - suspects.length);
  const report: VerifyReport = {
    stream: src.stream,
    valid: problems.list.length === 0 && problems.more === 0,
    events,
    validEvents: Math.max(0, events - invalid),
    checkpoints: { store: meta.checkpoints.length, ...(external !== undefined ? { external } : {}) },
    problems: problems.list,
    moreProblems: problems.more,
    notes,
    elapsedMs: Math.round(performance.now() - started),
  };
  if (firstSeq !== undefined) report.firstSeq = firstSeq;
  if (lastSeq !== undefined) report.lastSeq = lastSeq;
  if (meta.anchor) report.anchor = { seq: anchor.seq, hash: anchor.hash.toString('hex') };
  return report;
}
