import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import type { Actor } from '../core/principal.js';
import type { AuditEventInput } from './audit-types.js';
import { GENESIS_HASH } from './chain-hash.js';
import { RecordScanner, SCAN_CHUNK } from './chain-scan.js';
import type { ChainDb, ChainStore } from './chain-store.js';
import { DAY_MS } from './retention.js';
import type { AuditSigner } from './signing-key.js';

/** Events purged per transaction: bounds lock time and memory on a large first purge. */
export const PURGE_CHUNK = 50_000;

export interface PurgeOptions {
  /** Tenant id or `provider`. */
  stream: string;
  store: ChainStore;
  /** Runs `fn` in one write transaction of the stream's store. */
  write<T>(fn: (db: ChainDb) => Promise<T>): Promise<T>;
  /** Appends the purge's own event inside that transaction. */
  append(db: ChainDb, event: AuditEventInput): Promise<unknown>;
  signer: AuditSigner;
  now: () => number;
  retentionDays: number;
  actor: Actor;
  dryRun: boolean;
}

/**
 * Deletes the events older than retention — a prefix of the chain: it stops
 * at the first event still retained, even if later ones are older — and, in
 * the same transaction, records a signed anchor (last purged seq and hash) and
 * an `audit.purge` event. The prefix is verified first; a damaged one is not
 * purged (`audit_chain_invalid`), so retention never launders tampering.
 * Works in transactions of at most {@link PURGE_CHUNK} events.
 */
export async function purgeChain(o: PurgeOptions): Promise<{ purged: number; through?: number }> {
  const cutoff = o.now() - o.retentionDays * DAY_MS;
  let purged = 0;
  let through: number | undefined;
  let from: number | undefined;
  for (;;) {
    const step = await o.write(async (db) => {
      const head = await o.store.head(db);
      const anchor = await o.store.latestAnchor(db, o.stream);
      const start = from ?? anchor?.seq ?? 0;
      if (!head || head.seq <= start) return undefined;
      const hi = Math.min(start + PURGE_CHUNK, head.seq);
      const firstKept = await o.store.firstRetained(db, start, hi, cutoff);
      const last = firstKept === undefined ? hi : firstKept - 1;
      if (last <= start) return undefined;
      const more = firstKept === undefined && hi < head.seq;
      if (o.dryRun) return { n: last - start, last, more };

      const scanner = new RecordScanner(start + 1, last);
      for (let lo = start + 1; lo <= last; lo += SCAN_CHUNK) {
        const chunk = await o.store.chunk(db, lo, Math.min(lo + SCAN_CHUNK - 1, last));
        if (chunk) scanner.feed(chunk);
      }
      const r = scanner.finish();
      const links = r.first?.prevHash === (anchor ? anchor.hash : GENESIS_HASH.toString('hex'));
      if (r.count !== last - start || r.selfFail.length + r.linkFail.length + r.gaps.length + r.unlisted > 0 || !links || !r.last) {
        throw new CustosError('audit_chain_invalid', `events ${start + 1}-${last} of the activity stream fail verification; nothing there was purged (run custos audit verify)`);
      }
      const now = o.now();
      await o.store.insertCheckpoint(db, o.signer.sign({ kind: 'anchor', stream: o.stream, seq: last, hash: r.last.hash, time: rfc3339(now) }), now);
      const n = await o.store.deleteThrough(db, last);
      await o.append(db, {
        type: 'audit.purge',
        outcome: 'success',
        actor: o.actor,
        resource: { type: 'activity-stream', id: o.stream },
        details: { fromSeq: start + 1, throughSeq: last, events: n, retentionDays: o.retentionDays, cutoff: rfc3339(cutoff) },
      });
      return { n, last, more };
    });
    if (!step) break;
    purged += step.n;
    through = step.last;
    from = step.last;
    if (!step.more) break;
  }
  return through === undefined ? { purged } : { purged, through };
}
