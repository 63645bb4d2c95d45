import { createReadStream } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Checkpoint } from './audit-types.js';

/** The sink file of one stream: `<dir>/<tenant id>.jsonl` or `<dir>/provider.jsonl`. */
export function sinkFile(dir: string, stream: string): string {
  if (!/^[0-9a-z]{1,64}$/.test(stream)) throw new TypeError('not a stream name');
  return path.join(dir, `${stream}.jsonl`);
}

/** One line of a sink file, as read back: the parsed checkpoint or why it is unusable. */
export type SinkLine = { line: number; checkpoint: Checkpoint } | { line: number; error: string };

const TAIL_BYTES = 64 * 1024;

/**
 * Copies signed checkpoints to files outside the data directory (another disk,
 * a WORM mount, a directory shipped off-host), one JSON-lines file per stream.
 * Lines are only ever appended, each batch in one write, then fsync'd. An
 * attacker who can rewrite the store cannot rewrite these without the signing
 * key, so `verify --checkpoints DIR` detects a truncated or rewritten stream.
 *
 * The store is the outbox: checkpoints are created in the appending
 * transaction and copied here after commit ({@link CheckpointSink.append}
 * skips what the file already holds, so copying twice is harmless).
 */
export class CheckpointSink {
  readonly dir: string;
  /** Highest seq already in each stream's file. */
  readonly #exported = new Map<string, number>();

  constructor(dir: string) {
    this.dir = dir;
  }

  /** Highest checkpoint seq in the stream's file (0 when none), read from its tail once. */
  async exportedThrough(stream: string): Promise<number> {
    const known = this.#exported.get(stream);
    if (known !== undefined) return known;
    let through = 0;
    let fh;
    try {
      fh = await open(sinkFile(this.dir, stream), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (fh) {
      try {
        const { size } = await fh.stat();
        const start = Math.max(0, size - TAIL_BYTES);
        const buf = Buffer.alloc(size - start);
        await fh.read(buf, 0, buf.length, start);
        for (const line of buf.toString('utf8').split('\n')) {
          try {
            const c = JSON.parse(line) as Partial<Checkpoint>;
            if (c.kind === 'checkpoint' && typeof c.seq === 'number' && c.seq > through) through = c.seq;
          } catch {
            // a partial first line of the tail, or a damaged line: verify reports damage
          }
        }
      } finally {
        await fh.close();
      }
    }
    this.#exported.set(stream, through);
    return through;
  }

  /** Appends the checkpoints the file does not hold yet (by seq), durably. Returns how many were written. */
  async append(stream: string, checkpoints: readonly Checkpoint[]): Promise<number> {
    const through = await this.exportedThrough(stream);
    const fresh = checkpoints.filter((c) => c.kind === 'checkpoint' && c.stream === stream && c.seq > through).sort((a, b) => a.seq - b.seq);
    if (fresh.length === 0) return 0;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const fh = await open(sinkFile(this.dir, stream), 'a', 0o600);
    try {
      await fh.write(fresh.map((c) => `${JSON.stringify(c)}\n`).join(''));
      await fh.sync();
    } finally {
      await fh.close();
    }
    this.#exported.set(stream, fresh[fresh.length - 1]!.seq);
    return fresh.length;
  }

  /** Reads every line of a stream's file in `dir` (undefined when there is no file). */
  static async read(dir: string, stream: string): Promise<SinkLine[] | undefined> {
    const file = sinkFile(dir, stream);
    const input = createReadStream(file, { encoding: 'utf8' });
    const lines: SinkLine[] = [];
    try {
      let n = 0;
      for await (const text of createInterface({ input, crlfDelay: Infinity })) {
        n++;
        if (text.trim() === '') continue;
        lines.push(parseLine(n, text));
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return lines;
  }
}

function parseLine(line: number, text: string): SinkLine {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { line, error: 'not JSON' };
  }
  if (v === null || typeof v !== 'object') return { line, error: 'not a checkpoint' };
  const c = v as Record<string, unknown>;
  const ok =
    c.v === 1 &&
    (c.kind === 'checkpoint' || c.kind === 'anchor') &&
    typeof c.stream === 'string' &&
    Number.isSafeInteger(c.seq) &&
    (c.seq as number) > 0 &&
    typeof c.hash === 'string' &&
    /^[0-9a-f]{64}$/.test(c.hash) &&
    typeof c.time === 'string' &&
    typeof c.keyId === 'string' &&
    typeof c.signature === 'string';
  if (!ok) return { line, error: 'not a checkpoint' };
  return { line, checkpoint: c as unknown as Checkpoint };
}
