// A checkpoint worker thread: copies the committed pages of tenant WAL files back into their database files
// (`PRAGMA wal_checkpoint`, PASSIVE then FULL, see `checkpoint`) for the thread that serves requests. Started by WalCheckpointer; talks only
// to its parent. One connection per file, kept until the parent forgets the file or shuts the worker down.
import Database from 'better-sqlite3';
import { parentPort } from 'node:worker_threads';
import type { CheckpointReply, CheckpointRequest } from './wal-checkpointer.js';

const port = parentPort;
if (!port) throw new Error('checkpoint-worker runs as a worker thread');
const connections = new Map<string, Database.Database>();

function connection(file: string): Database.Database {
  let db = connections.get(file);
  if (!db) {
    db = new Database(file, { fileMustExist: true });
    // The checkpoint's syncs follow this setting: the WAL before copying, the database file after.
    db.pragma('synchronous = FULL');
    // Opening the connection may wait for a lock (another process setting up the file); a checkpoint never does.
    db.pragma('busy_timeout = 1000');
    db.pragma('cache_size = -2048');
    connections.set(file, db);
  }
  return db;
}

type CheckpointRow = { busy: number; log: number; checkpointed: number };

/** Attempts at the FULL step of a checkpoint, {@link FULL_RETRY_MS} apart. */
const FULL_ATTEMPTS = 20;
const FULL_RETRY_MS = 5;
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * PASSIVE copies the bulk of the WAL without taking a lock anyone waits for,
 * but leaves behind the frames of commits that came in meanwhile, and SQLite
 * starts a WAL over only in a write transaction that begins when every frame
 * has been copied: under a steady stream of commits that moment never came,
 * and the WAL grew without bound. FULL copies the rest holding the write lock
 * (this process's writers wait for it asynchronously, see `beginImmediate`),
 * so the next commit starts the WAL over. It runs without a busy timeout —
 * never holding the write lock while waiting for a reader of an older
 * snapshot (a chain scan) — and is retried a few times while the write lock
 * is taken: `busy` 1 if it never went through (the next interval tries again).
 */
function checkpoint(db: Database.Database): CheckpointRow {
  db.pragma('wal_checkpoint(PASSIVE)');
  db.pragma('busy_timeout = 0');
  try {
    for (let attempt = 1; ; attempt++) {
      const [row] = db.pragma('wal_checkpoint(FULL)') as CheckpointRow[];
      if (row!.busy === 0 || attempt >= FULL_ATTEMPTS) return row!;
      Atomics.wait(pause, 0, 0, FULL_RETRY_MS);
    }
  } finally {
    db.pragma('busy_timeout = 1000');
  }
}

function close(file: string): void {
  connections.get(file)?.close();
  connections.delete(file);
}

port.on('message', (m: CheckpointRequest) => {
  let reply: CheckpointReply;
  try {
    if (m.op === 'checkpoint') {
      const row = checkpoint(connection(m.file));
      reply = { id: m.id, result: { busy: row.busy, log: row.log, checkpointed: row.checkpointed } };
    } else if (m.op === 'forget') {
      close(m.file);
      reply = { id: m.id };
    } else {
      for (const file of [...connections.keys()]) close(file);
      reply = { id: m.id };
      port.postMessage(reply);
      port.close();
      return;
    }
  } catch (err) {
    reply = { id: m.id, error: err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : 'checkpoint failed' };
  }
  port.postMessage(reply);
});
