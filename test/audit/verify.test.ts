import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { VerifyReport } from '../../src/audit/audit-types.js';
import { chainHash } from '../../src/audit/chain-hash.js';
import type { Runtime } from '../../src/runtime.js';
import { waitFor } from '../helpers/cli.js';
import { describeEachStorage } from '../helpers/storage-kinds.js';
import { asControlOwner, asOwner, ev, makeRuntimeWithSink, newTenant, storedBodies, swapStatements } from './helpers.js';

const kinds = (r: VerifyReport) => r.problems.map((p) => p.kind);

describeEachStorage('activity stream: verify', (kind) => {
  let rt: Runtime & { sinkDir: string };
  beforeAll(async () => {
    rt = await makeRuntimeWithSink(kind);
  });
  afterAll(async () => rt.close());

  /** A tenant with exactly `n` events (the first ones come from its creation). */
  async function tenantWithEvents(n = 30): Promise<string> {
    const t = await newTenant(rt);
    const have = (await storedBodies(rt, t)).length;
    for (let i = have; i < n; i++) await rt.audit.record(t, ev('iam.user.update', { details: { i } }));
    expect((await storedBodies(rt, t)).length).toBe(n);
    return t;
  }

  it('passes a clean chain, with and without external checkpoints', async () => {
    const t = await tenantWithEvents();
    await rt.audit.checkpoint(t);
    const plain = await rt.audit.verify(t);
    expect(plain).toMatchObject({ valid: true, events: 30, validEvents: 30, firstSeq: 1, lastSeq: 30, problems: [], checkpoints: { store: 1 } });
    expect(plain.notes.join(' ')).toMatch(/truncation .* cannot be detected without external checkpoints/);
    const withDir = await rt.audit.verify(t, { checkpointsDir: rt.sinkDir });
    expect(withDir).toMatchObject({ valid: true, events: 30, problems: [], checkpoints: { store: 1, external: 1 }, notes: [] });
  });

  it('catches a modified event (its body updated in place)', async () => {
    const t = await tenantWithEvents();
    await asOwner(rt, t, [`UPDATE audit_events SET body = replace(body, 'iam.user.update', 'iam.user.read') WHERE seq = 10`]);
    const r = await rt.audit.verify(t);
    expect(r.valid).toBe(false);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'modified', seq: 10, message: expect.stringMatching(/^modified: event 10 \([0-9A-Z]{26}\) does not match its hash/) })]);
    expect(r.validEvents).toBe(29);
    expect(r.events).toBe(30);
  });

  it('catches an event changed and re-hashed: its successor no longer links to it', async () => {
    const t = await tenantWithEvents();
    await rt.storage.tenant(t).transaction(async (db) => {
      const row = await db.selectFrom('audit_events').select(['body', 'prev_hash']).where('seq', '=', 12).executeTakeFirstOrThrow();
      const body = row.body.replace('"outcome":"success"', '"outcome":"denied"');
      await sql`UPDATE audit_events SET body = ${body}, hash = ${chainHash(12, Buffer.from(row.prev_hash), Buffer.from(body))} WHERE seq = 12`.execute(db);
    });
    const r = await rt.audit.verify(t);
    expect(kinds(r)).toEqual(['modified']);
    expect(r.problems[0]!.message).toMatch(/^modified: event 12 .*re-hashed: event 13 no longer links to it/);
  });

  it('catches a deleted event as missing', async () => {
    const t = await tenantWithEvents();
    await asOwner(rt, t, ['DELETE FROM audit_events WHERE seq = 12']);
    const r = await rt.audit.verify(t);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'missing', seq: 12, toSeq: 12, message: 'missing: event 12 is missing' })]);
    expect(r).toMatchObject({ valid: false, events: 29, validEvents: 29 });
  });

  it('catches a deleted range as missing', async () => {
    const t = await tenantWithEvents();
    await asOwner(rt, t, ['DELETE FROM audit_events WHERE seq >= 5 AND seq <= 8']);
    const r = await rt.audit.verify(t);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'missing', seq: 5, toSeq: 8, message: 'missing: events 5-8 (4) are missing' })]);
  });

  it('catches two swapped events as reordered (adjacent and distant), not as modified', async () => {
    const t = await tenantWithEvents();
    await asOwner(rt, t, swapStatements(15, 16));
    const r = await rt.audit.verify(t);
    expect(kinds(r)).toEqual(['reordered', 'reordered']);
    expect(r.problems.map((p) => p.message)).toEqual([
      expect.stringMatching(/^reordered: event 15 \(.+\) is intact but belongs at position 16$/),
      expect.stringMatching(/^reordered: event 16 \(.+\) is intact but belongs at position 15$/),
    ]);
    expect(r.validEvents).toBe(28);

    const t2 = await tenantWithEvents();
    await asOwner(rt, t2, swapStatements(5, 20));
    const r2 = await rt.audit.verify(t2);
    expect(kinds(r2)).toEqual(['reordered', 'reordered']);
    expect(r2.problems.map((p) => [p.seq, p.message.replace(/.*position /, '')])).toEqual([
      [5, '20'],
      [20, '5'],
    ]);
  });

  it('catches a truncated tail with --checkpoints DIR, and says it cannot without', async () => {
    const t = await tenantWithEvents();
    const cp = await rt.audit.checkpoint(t);
    expect(cp?.seq).toBe(30);
    // A careful intruder: deletes the newest events, the stored checkpoint naming them, and rewinds the head.
    await asOwner(rt, t, [
      'DELETE FROM audit_events WHERE seq > 25',
      'DELETE FROM audit_checkpoints WHERE seq > 25',
      'UPDATE audit_chain_head SET seq = 25, hash = (SELECT hash FROM audit_events WHERE seq = 25)',
    ]);
    const without = await rt.audit.verify(t);
    expect(without.valid).toBe(true);
    expect(without.events).toBe(25);
    expect(without.notes).toEqual([expect.stringMatching(/truncation of the newest events cannot be detected without external checkpoints/)]);

    const withDir = await rt.audit.verify(t, { checkpointsDir: rt.sinkDir });
    expect(withDir.valid).toBe(false);
    expect(withDir.problems).toEqual([
      expect.objectContaining({ kind: 'truncated', seq: 26, toSeq: 30, message: expect.stringMatching(/^truncated: .*names event 30, but the stream ends at event 25: events 26-30 \(5\) are gone/) }),
    ]);
  });

  it('catches a careless truncation even without DIR: the chain head still names the deleted events', async () => {
    const t = await tenantWithEvents();
    await asOwner(rt, t, ['DELETE FROM audit_events WHERE seq > 27']);
    const r = await rt.audit.verify(t);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'truncated', seq: 28, toSeq: 30, message: expect.stringMatching(/^truncated: events 28-30 \(3\) are missing at the end of the stream/) })]);
  });

  it('catches a rewritten tail (every hash recomputed) through the signed checkpoint', async () => {
    const t = await tenantWithEvents();
    await rt.audit.checkpoint(t);
    await rt.storage.tenant(t).transaction(async (db) => {
      const rows = await db.selectFrom('audit_events').select(['seq', 'body', 'prev_hash']).where('seq', '>=', 20).orderBy('seq').execute();
      let prev: Buffer = Buffer.from(rows[0]!.prev_hash);
      for (const row of rows) {
        const body = row.body.replace('"name":"bob"', '"name":"mallory"');
        const h = chainHash(Number(row.seq), prev, Buffer.from(body));
        await sql`UPDATE audit_events SET body = ${body}, prev_hash = ${prev}, hash = ${h} WHERE seq = ${row.seq}`.execute(db);
        prev = h;
      }
      await sql`UPDATE audit_chain_head SET hash = ${prev}`.execute(db);
    });
    const r = await rt.audit.verify(t);
    expect(r.valid).toBe(false);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'modified', seq: 30, message: expect.stringMatching(/signed checkpoint/) })]);
  });

  it('catches a bad signature on an edited checkpoint file line and on a forged stored checkpoint', async () => {
    const t = await tenantWithEvents();
    await rt.audit.checkpoint(t);
    const file = path.join(rt.sinkDir, `${t}.jsonl`);
    const line = JSON.parse(readFileSync(file, 'utf8').trim()) as { seq: number; hash: string };
    writeFileSync(file, `${JSON.stringify({ ...line, seq: 31 })}\n`);
    const r = await rt.audit.verify(t, { checkpointsDir: rt.sinkDir });
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'bad-signature', seq: 31, message: expect.stringMatching(/^bad signature: line 1 of .*\.jsonl \(checkpoint at event 31\)/) })]);

    writeFileSync(file, 'this is not json\n');
    expect(kinds(await rt.audit.verify(t, { checkpointsDir: rt.sinkDir }))).toEqual(['bad-signature']);

    const t2 = await tenantWithEvents();
    await rt.audit.checkpoint(t2);
    await asOwner(rt, t2, [`UPDATE audit_checkpoints SET seq = 29 WHERE seq = 30`]);
    const r2 = await rt.audit.verify(t2);
    expect(r2.problems).toEqual([expect.objectContaining({ kind: 'bad-signature', seq: 29, message: expect.stringMatching(/stored checkpoint at event 29/) })]);
  });

  it('copies a checkpoint made inside a caller transaction to the sink once that transaction commits', async () => {
    const t = await newTenant(rt);
    const have = (await storedBodies(rt, t)).length;
    await rt.storage.tenant(t).transaction(async (db) => {
      for (let i = have; i < 1000; i++) await rt.audit.append(db, t, ev('data.record.read'));
    });
    const file = path.join(rt.sinkDir, `${t}.jsonl`);
    await waitFor(() => existsSync(file) && readFileSync(file, 'utf8').includes('"seq":1000'), 10_000, 'the checkpoint in the sink');
    const line = JSON.parse(readFileSync(file, 'utf8').trim()) as { kind: string; seq: number; stream: string };
    expect(line).toMatchObject({ kind: 'checkpoint', seq: 1000, stream: t });
    expect(await rt.audit.verify(t, { checkpointsDir: rt.sinkDir })).toMatchObject({ valid: true, checkpoints: { store: 1, external: 1 } });
  });

  it('verifies the provider stream and catches tampering there too', async () => {
    for (let i = 0; i < 10; i++) await rt.audit.recordProvider({ type: 'backup.create', outcome: 'success', actor: { principal: { type: 'operator', id: 'ops' } }, details: { i } });
    expect((await rt.audit.verify(null)).valid).toBe(true);
    const last = (await rt.audit.query(null, { limit: 1 })).events[0]!.seq;
    await asControlOwner(rt, [`UPDATE provider_audit_events SET body = replace(body, 'backup.create', 'backup.delete') WHERE seq = ${last - 3}`]);
    const r = await rt.audit.verify(null);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'modified', seq: last - 3 })]);
  });

  it('checks large chains in parallel scans with the same verdicts', async () => {
    const t = await tenantWithEvents();
    // 120,000 events by direct insertion of a valid chain (much faster than recording them).
    await rt.storage.tenant(t).transaction(async (db) => {
      const last = await db.selectFrom('audit_events').select(['seq', 'hash']).orderBy('seq', 'desc').limit(1).executeTakeFirstOrThrow();
      let prev: Buffer = Buffer.from(last.hash);
      let seq = Number(last.seq);
      for (let b = 0; b < 240; b++) {
        const rows = [];
        for (let i = 0; i < 500; i++) {
          seq++;
          const body = JSON.stringify({ id: `E${seq}`, outcome: 'success', tenant: t, type: 'data.record.read' });
          const h = chainHash(seq, prev, Buffer.from(body));
          rows.push({ seq, id: `E${seq}`, time: 1, type: 'data.record.read', outcome: 'success', principal_type: 'user', principal_id: 'u', resource_type: null, resource_id: null, body, prev_hash: prev, hash: h });
          prev = h;
        }
        await db.insertInto('audit_events').values(rows).execute();
      }
      await sql`UPDATE audit_chain_head SET seq = ${seq}, hash = ${prev}`.execute(db);
    });
    const clean = await rt.audit.verify(t, { threads: 3 });
    expect(clean).toMatchObject({ valid: true, events: 120_030, validEvents: 120_030 });
    await asOwner(rt, t, [`UPDATE audit_events SET body = replace(body, 'data.record.read', 'data.record.wipe') WHERE seq = 70000`, 'DELETE FROM audit_events WHERE seq = 110000', ...swapStatements(40001, 40002)]);
    const r = await rt.audit.verify(t, { threads: 3 });
    expect(r.problems.map((p) => [p.kind, p.seq])).toEqual([
      ['reordered', 40001],
      ['reordered', 40002],
      ['modified', 70000],
      ['missing', 110000],
    ]);
  });
});
