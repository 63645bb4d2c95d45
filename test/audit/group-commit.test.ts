import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GroupCommitter } from '../../src/audit/group-commit.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';
import { asOwner, ev, newTenant, storedBodies } from './helpers.js';

describe('GroupCommitter', () => {
  it('writes concurrent submissions in batches, one batch per key in flight, results in order', async () => {
    const batches: { key: string; items: number[] }[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const gc = new GroupCommitter<number, string>(
      async (key, items) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        batches.push({ key, items: [...items] });
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        return items.map((i) => `${key}:${i}`);
      },
      { maxBatch: 50, maxDelayMs: 2 },
    );
    const results = await Promise.all(Array.from({ length: 300 }, (_, i) => gc.submit('a', i)));
    expect(results).toEqual(Array.from({ length: 300 }, (_, i) => `a:${i}`));
    expect(maxInFlight).toBe(1);
    expect(batches.length).toBeLessThan(300);
    expect(batches.every((b) => b.items.length <= 50)).toBe(true);
    expect(batches.flatMap((b) => b.items)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(gc.stats).toEqual({ transactions: batches.length, items: 300, failures: 0 });
  });

  it('rejects every item of a failed batch, and keeps serving later ones', async () => {
    let fail = true;
    const gc = new GroupCommitter<number, number>(async (_key, items) => {
      if (fail) throw new Error('disk full');
      return items;
    }, { maxDelayMs: 5 });
    const first = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => gc.submit('k', i)));
    expect(first.every((r) => r.status === 'rejected' && (r.reason as Error).message === 'disk full')).toBe(true);
    fail = false;
    expect(await gc.submit('k', 7)).toBe(7);
    expect(gc.stats.failures).toBeGreaterThan(0);
  });

  it('flushes on close and refuses submissions afterwards', async () => {
    const written: number[] = [];
    const gc = new GroupCommitter<number, number>(async (_k, items) => (written.push(...items), items), { maxDelayMs: 10_000 });
    const p = gc.submit('k', 1);
    await gc.close();
    expect(await p).toBe(1);
    expect(written).toEqual([1]);
    await expect(gc.submit('k', 2)).rejects.toMatchObject({ code: 'audit_unavailable', message: expect.stringMatching(/closing/) });
  });
});

describeEachStorage('activity stream: group commit', (kind) => {
  let rt: TestRuntime;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
  });
  afterAll(async () => rt.close());

  it('writes many concurrent records in fewer transactions than events; each resolves only once durable', async () => {
    const tenant = await newTenant(rt);
    const start = (await storedBodies(rt, tenant)).length;
    const before = rt.audit.groupCommitStats;
    const n = 300;
    const seen = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const e = await rt.audit.record(tenant, ev('auth.login.failure', { outcome: 'failure', code: 'invalid_credentials', details: { i } }));
        // Resolved means committed: a fresh transaction already sees it.
        const rows = await rt.storage.tenant(tenant).transaction((db) => db.selectFrom('audit_events').select('seq').where('seq', '=', e.seq).execute());
        return { e, visible: rows.length };
      }),
    );
    const after = rt.audit.groupCommitStats;
    const transactions = after.transactions - before.transactions;
    expect(after.items - before.items).toBe(n);
    expect(transactions).toBeGreaterThan(0);
    expect(transactions).toBeLessThan(n / 4);
    expect(seen.every((s) => s.visible === 1)).toBe(true);
    const seqs = seen.map((s) => s.e.seq).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: n }, (_, i) => start + i + 1));
    expect((await rt.audit.verify(tenant)).valid).toBe(true);
  });

  it('rejects every waiting caller when the flush fails, and writes nothing of that batch', async () => {
    const tenant = await newTenant(rt);
    const start = (await storedBodies(rt, tenant)).length;
    await asOwner(rt, tenant, ['ALTER TABLE audit_events RENAME TO audit_events_broken']);
    const before = rt.audit.groupCommitStats.failures;
    const results = await Promise.allSettled(Array.from({ length: 25 }, () => rt.audit.record(tenant, ev('data.record.read'))));
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    for (const r of results) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'audit_unavailable' });
    expect(rt.audit.groupCommitStats.failures).toBeGreaterThan(before);
    await asOwner(rt, tenant, ['ALTER TABLE audit_events_broken RENAME TO audit_events']);
    expect((await storedBodies(rt, tenant)).length).toBe(start);
    // The stream works again and stays valid.
    await rt.audit.record(tenant, ev('data.record.read'));
    expect((await rt.audit.verify(tenant)).valid).toBe(true);
  });

  it('rejects an invalid record at once without touching the other callers of its batch', async () => {
    const tenant = await newTenant(rt);
    const good = Array.from({ length: 10 }, () => rt.audit.record(tenant, ev()));
    await expect(rt.audit.record(tenant, { ...ev(), outcome: 'nope' } as never)).rejects.toMatchObject({ code: 'audit_event_invalid' });
    expect((await Promise.all(good)).length).toBe(10);
  });

  it('rejects records for a tenant that does not exist', async () => {
    await expect(rt.audit.record('01aaaaaaaaaaaaaaaaaaaaaaaa', ev())).rejects.toBeTruthy();
  });

  it('group-commits provider events too', async () => {
    const before = (await rt.audit.query(null, { limit: 1000 })).events.length;
    const events = await Promise.all(Array.from({ length: 50 }, () => rt.audit.recordProvider({ type: 'backup.create', outcome: 'success', actor: { principal: { type: 'operator', id: 'ops@host' } } })));
    expect(new Set(events.map((e) => e.seq)).size).toBe(50);
    expect((await rt.audit.query(null, { limit: 1000 })).events.length).toBe(before + 50);
    expect((await rt.audit.verify(null)).valid).toBe(true);
  });

  it('writes what is still queued on close, and refuses records afterwards', async () => {
    const own = await makeRuntime(kind);
    try {
      const tenant = await newTenant(own);
      const start = (await storedBodies(own, tenant)).length;
      const pending = Array.from({ length: 40 }, () => own.audit.record(tenant, ev('data.record.read')));
      await own.audit.close();
      expect((await Promise.all(pending)).length).toBe(40);
      expect((await storedBodies(own, tenant)).length).toBe(start + 40);
      await expect(own.audit.record(tenant, ev())).rejects.toMatchObject({ code: 'audit_unavailable' });
    } finally {
      await own.close();
    }
  });

  it('rolls back the whole batch when an onAppend listener fails inside it', async () => {
    const tenant = await newTenant(rt);
    const start = (await storedBodies(rt, tenant)).length;
    rt.audit.onAppend(async (_db, tenantId, e) => {
      if (tenantId === tenant && e.type === 'alert.trigger') throw new Error('rule failed');
    });
    const results = await Promise.allSettled([rt.audit.record(tenant, ev('iam.user.create')), rt.audit.record(tenant, ev('alert.trigger'))]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect((await storedBodies(rt, tenant)).length).toBe(start);
    // Head and chain untouched: the next event follows on.
    const e = await rt.audit.record(tenant, ev());
    expect(e.seq).toBe(start + 1);
    const head = await rt.storage.tenant(tenant).transaction((db) => sql<{ seq: number }>`SELECT seq FROM audit_chain_head`.execute(db));
    expect(Number(head.rows[0]!.seq)).toBe(start + 1);
  });
});
