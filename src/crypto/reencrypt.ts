import type { Clock } from '../core/clock.js';
import { failpoint } from '../core/failpoint.js';
import { newId } from '../core/ids.js';
import type { Storage } from '../storage/storage.js';
import type { EncryptedSource } from './encrypted-source.js';
import type { KeyService } from './key-service.js';
import type { ObjectKeys } from './field-cipher.js';

export interface ReencryptProgress {
  jobId: string;
  processed: number;
  total: number;
  resumed: boolean;
}

export interface ReencryptReport extends ReencryptProgress {
  changed: number;
  state: 'finished';
}

export const DEFAULT_REENCRYPT_BATCH = 500;

/**
 * Re-encrypts every encrypted value of a tenant under fresh data keys, as a
 * resumable job. The first step gives every protected object a new data-key
 * generation (old ones are retired, not deleted, so every value stays
 * readable throughout); then each encrypted-data source is walked in batches,
 * one transaction per batch, and the job row records the source and cursor
 * in the same transaction. Killed at any point, the next run resumes from the
 * last committed batch; re-running a finished job's work is harmless because
 * values already under the active generation are skipped.
 */
export async function reencryptTenant(
  deps: { storage: Storage; keys: KeyService; clock: Clock; sources: readonly EncryptedSource[] },
  tenantId: string,
  opts: { batchSize?: number; onProgress?: (p: ReencryptProgress) => void } = {},
): Promise<ReencryptReport> {
  const batchSize = opts.batchSize ?? DEFAULT_REENCRYPT_BATCH;
  const store = deps.storage.tenant(tenantId);

  const { job, resumed } = await store.transaction(async (db) => {
    const running = await db.selectFrom('key_jobs').selectAll().where('kind', '=', 'reencrypt').where('state', '=', 'running').executeTakeFirst();
    if (running) return { job: running, resumed: true };
    const targets = await deps.keys.startNewGenerations(db, tenantId);
    let total = 0;
    for (const source of deps.sources) total += await source.count(db);
    const now = deps.clock.now();
    const row = { id: newId(now), kind: 'reencrypt' as const, state: 'running' as const, targets: JSON.stringify(targets), source_index: 0, cursor: null, processed: 0, total, started_at: now, updated_at: now, finished_at: null };
    await db.insertInto('key_jobs').values(row).execute();
    return { job: row, resumed: false };
  });
  failpoint('reencrypt:after-start');

  let { source_index: sourceIndex, cursor, processed } = job;
  let changed = 0;
  opts.onProgress?.({ jobId: job.id, processed, total: job.total, resumed });

  const keysFor = (db: Parameters<EncryptedSource['reencryptBatch']>[0]) => {
    const memo = new Map<string, Promise<ObjectKeys>>();
    return (objectType: string, objectId: string) => {
      const k = `${objectType}\u0000${objectId}`;
      let p = memo.get(k);
      if (!p) memo.set(k, (p = deps.keys.objectKeys(db, tenantId, objectType, objectId)));
      return p;
    };
  };

  while (sourceIndex < deps.sources.length) {
    const source = deps.sources[sourceIndex]!;
    const step = await store.transaction(async (db) => {
      const r = await source.reencryptBatch(db, keysFor(db), cursor, batchSize);
      const nextIndex = r.cursor === null ? sourceIndex + 1 : sourceIndex;
      await db
        .updateTable('key_jobs')
        .set({ source_index: nextIndex, cursor: r.cursor, processed: processed + r.visited, updated_at: deps.clock.now() })
        .where('id', '=', job.id)
        .execute();
      return { ...r, nextIndex };
    });
    sourceIndex = step.nextIndex;
    cursor = step.cursor;
    processed += step.visited;
    changed += step.changed;
    opts.onProgress?.({ jobId: job.id, processed, total: job.total, resumed });
    failpoint('reencrypt:after-batch');
  }

  // Values written under an older generation by a transaction that began before the job did.
  for (const source of deps.sources) {
    let c: string | null = null;
    do {
      const r = await store.transaction((db) => source.reencryptBatch(db, keysFor(db), c, batchSize));
      changed += r.changed;
      c = r.cursor;
    } while (c !== null);
  }
  await store.transaction((db) =>
    db.updateTable('key_jobs').set({ state: 'finished', finished_at: deps.clock.now(), updated_at: deps.clock.now() }).where('id', '=', job.id).execute(),
  );
  return { jobId: job.id, processed, total: job.total, resumed, changed, state: 'finished' };
}
