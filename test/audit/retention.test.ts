import { afterAll, beforeAll, expect, it } from 'vitest';
import { DAY_MS } from '../../src/audit/retention.js';
import { ManualClock } from '../../src/core/clock.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';
import { asOwner, ev, newTenant, storedBodies } from './helpers.js';

describeEachStorage('activity stream: retention and purge', (kind) => {
  let rt: TestRuntime;
  let clock: ManualClock;
  const T0 = Date.UTC(2026, 0, 1);
  beforeAll(async () => {
    clock = new ManualClock(T0);
    rt = await makeRuntime(kind, { clock });
  });
  afterAll(async () => rt.close());

  /** A tenant with `old` events at `at` and `recent` events `gapDays` later. Returns the seqs of each group. */
  async function tenantAt(edition: 'standard' | 'enterprise', at: number, old: number, gapDays: number, recent: number) {
    clock.set(at);
    const t = await newTenant(rt, edition);
    for (let i = 0; i < old; i++) await rt.audit.record(t, ev('iam.user.update', { details: { group: 'old', i } }));
    const oldThrough = (await storedBodies(rt, t)).length;
    clock.set(at + gapDays * DAY_MS);
    for (let i = 0; i < recent; i++) await rt.audit.record(t, ev('iam.user.update', { details: { group: 'recent', i } }));
    return { t, oldThrough, total: oldThrough + recent };
  }

  const groups = async (t: string) => (await storedBodies(rt, t)).map((b) => (JSON.parse(b.body) as { details?: { group?: string } }).details?.group ?? (JSON.parse(b.body) as { type: string }).type);

  it('standard: purges events older than 32 days, keeps newer ones, and the chain still verifies', async () => {
    const { t, oldThrough, total } = await tenantAt('standard', T0, 5, 10, 3);
    expect(await rt.audit.retention(t)).toMatchObject({ edition: 'standard', defaultDays: 32, effectiveDays: 32, maxDays: 365 });

    clock.set(T0 + 32 * DAY_MS); // exactly 32 days: nothing is older than that yet
    expect(await rt.audit.purge(t)).toEqual({ purged: 0 });

    clock.set(T0 + 33 * DAY_MS);
    const dry = await rt.audit.purge(t, { dryRun: true });
    expect(dry).toEqual({ purged: oldThrough, through: oldThrough });
    expect((await storedBodies(rt, t)).length).toBe(total);

    expect(await rt.audit.purge(t)).toEqual({ purged: oldThrough, through: oldThrough });
    expect(await groups(t)).toEqual(['recent', 'recent', 'recent', 'audit.purge']);
    const report = await rt.audit.verify(t);
    expect(report).toMatchObject({ valid: true, events: 4, firstSeq: oldThrough + 1, anchor: { seq: oldThrough } });
    // Idempotent: nothing more is old enough.
    expect(await rt.audit.purge(t)).toEqual({ purged: 0 });

    // The purge recorded what it did.
    const purgeEvent = (await rt.audit.query(t, { limit: 1, types: ['audit.purge'] })).events[0]!;
    expect(purgeEvent).toMatchObject({ principal: { type: 'system' }, details: { fromSeq: 1, throughSeq: oldThrough, events: oldThrough, retentionDays: 32 } });
  });

  it('still catches deleting the first event after the anchor, or any other deletion', async () => {
    const { t, oldThrough } = await tenantAt('standard', T0, 4, 10, 4);
    clock.set(T0 + 40 * DAY_MS);
    await rt.audit.purge(t);
    expect((await rt.audit.verify(t)).valid).toBe(true);
    await asOwner(rt, t, [`DELETE FROM audit_events WHERE seq = ${oldThrough + 1}`]);
    const r = await rt.audit.verify(t);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'missing', seq: oldThrough + 1, toSeq: oldThrough + 1 })]);

    // Deleting the anchor itself exposes the purged range as missing.
    const other = await tenantAt('standard', T0, 3, 10, 2);
    clock.set(T0 + 40 * DAY_MS);
    await rt.audit.purge(other.t);
    await asOwner(rt, other.t, [`DELETE FROM audit_checkpoints WHERE kind = 'anchor'`]);
    expect((await rt.audit.verify(other.t)).problems).toEqual([expect.objectContaining({ kind: 'missing', seq: 1, toSeq: other.oldThrough })]);
  });

  it('enterprise: keeps 184 days', async () => {
    const { t, oldThrough } = await tenantAt('enterprise', T0, 3, 100, 2);
    expect((await rt.audit.retention(t)).effectiveDays).toBe(184);
    clock.set(T0 + 184 * DAY_MS);
    expect(await rt.audit.purge(t)).toEqual({ purged: 0 });
    clock.set(T0 + 185 * DAY_MS);
    expect(await rt.audit.purge(t)).toEqual({ purged: oldThrough, through: oldThrough });
    expect(await groups(t)).toEqual(['recent', 'recent', 'audit.purge']);
    expect((await rt.audit.verify(t)).valid).toBe(true);
  });

  it('a raised retention keeps events longer; above 365 days (or below the default) is refused', async () => {
    const { t, oldThrough } = await tenantAt('standard', T0, 3, 50, 2);
    clock.set(T0 + 50 * DAY_MS);
    const raised = await rt.audit.setRetention(t, 90, TEST_OPERATOR);
    expect(raised).toMatchObject({ defaultDays: 32, overrideDays: 90, effectiveDays: 90 });
    await expect(rt.audit.setRetention(t, 366, TEST_OPERATOR)).rejects.toMatchObject({ code: 'validation_failed' });
    await expect(rt.audit.setRetention(t, 10, TEST_OPERATOR)).rejects.toMatchObject({ code: 'validation_failed' });
    await expect(rt.audit.setRetention(t, 40.5, TEST_OPERATOR)).rejects.toMatchObject({ code: 'validation_failed' });
    expect((await rt.audit.retention(t)).effectiveDays).toBe(90);

    clock.set(T0 + 60 * DAY_MS); // 60 days: past the default, within the raised 90
    expect(await rt.audit.purge(t)).toEqual({ purged: 0 });
    clock.set(T0 + 91 * DAY_MS);
    expect(await rt.audit.purge(t)).toEqual({ purged: oldThrough, through: oldThrough });

    // The change is in both streams.
    expect((await rt.audit.query(t, { limit: 10, types: ['audit.retention.*'] })).events[0]).toMatchObject({ principal: { type: 'operator' }, change: { before: { days: 32 }, after: { days: 90 } } });
    expect((await rt.audit.query(null, { limit: 10, types: ['audit.retention.update'] })).events.some((e) => e.resource?.id === t)).toBe(true);

    // 365 is allowed; reset goes back to the edition's default.
    expect((await rt.audit.setRetention(t, 365, TEST_OPERATOR)).effectiveDays).toBe(365);
    expect(await rt.audit.setRetention(t, null, TEST_OPERATOR)).toMatchObject({ effectiveDays: 32, defaultDays: 32 });
    expect((await rt.audit.retention(t)).overrideDays).toBeUndefined();
  });

  it('refuses to purge over a damaged segment, so tampering is not laundered by an anchor', async () => {
    const { t, total } = await tenantAt('standard', T0, 4, 10, 2);
    await asOwner(rt, t, [`UPDATE audit_events SET body = replace(body, '"old"', '"OLD"') WHERE seq = 3`]);
    clock.set(T0 + 40 * DAY_MS);
    await expect(rt.audit.purge(t)).rejects.toMatchObject({ code: 'audit_chain_invalid' });
    expect((await storedBodies(rt, t)).length).toBe(total);
    expect((await rt.audit.verify(t)).problems).toEqual([expect.objectContaining({ kind: 'modified', seq: 3 })]);
  });

});

describeEachStorage('activity stream: provider retention', (kind) => {
  const T0 = Date.UTC(2026, 0, 1);
  const clock = new ManualClock(T0);
  let rt: TestRuntime;
  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
  });
  afterAll(async () => rt.close());

  it('purges the provider stream after 365 days', async () => {
    for (let i = 0; i < 3; i++) await rt.audit.recordProvider({ type: 'backup.create', outcome: 'success', actor: TEST_OPERATOR, details: { i } });
    clock.set(T0 + 100 * DAY_MS);
    await rt.audit.recordProvider({ type: 'backup.create', outcome: 'success', actor: TEST_OPERATOR, details: { i: 'kept' } });
    expect((await rt.audit.retention(null)).effectiveDays).toBe(365);
    clock.set(T0 + 365 * DAY_MS);
    expect((await rt.audit.purge(null)).purged).toBe(0);
    clock.set(T0 + 366 * DAY_MS);
    const before = (await rt.audit.query(null, { limit: 1000 })).events;
    const old = before.filter((e) => Date.parse(e.time) < T0 + DAY_MS).length;
    expect(old).toBeGreaterThanOrEqual(3);
    expect(await rt.audit.purge(null)).toMatchObject({ purged: old });
    const remaining = (await rt.audit.query(null, { limit: 1000 })).events;
    expect(remaining.map((e) => e.details?.i ?? e.type)).toEqual(['audit.purge', 'kept']);
    expect((await rt.audit.verify(null)).valid).toBe(true);
  });
});
