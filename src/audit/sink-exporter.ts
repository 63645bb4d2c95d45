import type { Logger } from '../core/logger.js';
import type { Checkpoint } from './audit-types.js';
import type { CheckpointSink } from './checkpoint-sink.js';

/** Delays before copying a checkpoint made in a caller's transaction (whose commit time is unknown). */
const RETRY_MS = [100, 500, 2_000, 10_000, 60_000];

/**
 * Copies stored checkpoints to the external sink after they commit. When this
 * process controls the commit (group commit, `checkpoint()`), it copies right
 * after it; when a checkpoint was made inside a caller's transaction, it
 * retries with back-off until the sink holds it (or gives up, leaving it to
 * the next copy: the hourly checkpoint, the next batch, or `close()`).
 */
export class SinkExporter {
  readonly #sink: CheckpointSink | undefined;
  readonly #stored: (stream: string, afterSeq: number) => Promise<Checkpoint[]>;
  readonly #logger: Logger;
  readonly #pending = new Map<string, { seq: number; attempt: number; timer: NodeJS.Timeout | undefined }>();

  constructor(sink: CheckpointSink | undefined, stored: (stream: string, afterSeq: number) => Promise<Checkpoint[]>, logger: Logger) {
    this.#sink = sink;
    this.#stored = stored;
    this.#logger = logger;
  }

  /** Copies the stream's stored checkpoints the sink lacks. Returns the highest seq the sink holds (0 without a sink). */
  async exportNow(stream: string): Promise<number> {
    const sink = this.#sink;
    if (!sink) return 0;
    const through = await sink.exportedThrough(stream);
    await sink.append(stream, await this.#stored(stream, through));
    return sink.exportedThrough(stream);
  }

  /** {@link SinkExporter.exportNow}, logging instead of throwing: the events are committed whatever the sink does. */
  async exportQuietly(stream: string): Promise<void> {
    await this.exportNow(stream).catch((err: unknown) => this.#failed(stream, err));
  }

  #failed(stream: string, err: unknown): void {
    this.#logger.error({ err, stream, dir: this.#sink?.dir }, 'could not copy activity-stream checkpoints to the sink; will retry');
  }

  /** A checkpoint at `seq` was made in a transaction that commits later: copy it once it has. */
  exportLater(stream: string, seq: number): void {
    if (!this.#sink) return;
    const pending = this.#pending.get(stream);
    if (pending) {
      pending.seq = Math.max(pending.seq, seq);
      return;
    }
    const entry = { seq, attempt: 0, timer: undefined as NodeJS.Timeout | undefined };
    this.#pending.set(stream, entry);
    const schedule = (): void => {
      if (entry.attempt >= RETRY_MS.length) {
        this.#pending.delete(stream);
        return;
      }
      entry.timer = setTimeout(attempt, RETRY_MS[entry.attempt++]);
      entry.timer.unref();
    };
    const attempt = (): void => {
      entry.timer = undefined;
      this.exportNow(stream).then(
        (through) => {
          if (through >= entry.seq) this.#pending.delete(stream);
          else schedule();
        },
        (err: unknown) => {
          this.#failed(stream, err);
          schedule();
        },
      );
    };
    schedule();
  }

  /** Stops retrying and makes one last copy of every stream still waiting. */
  async close(): Promise<void> {
    const pending = [...this.#pending.entries()];
    this.#pending.clear();
    for (const [stream, entry] of pending) {
      if (entry.timer) clearTimeout(entry.timer);
      await this.exportQuietly(stream);
    }
  }
}
