import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { keyOperations } from '../../src/ops/key-operations.js';
import { Maintenance } from '../../src/ops/maintenance.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

describeEachStorage('operator actions are visible to the tenant', (kind) => {
  let rt: TestRuntime;
  const clock = new ManualClock(Date.UTC(2026, 10, 1));
  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
  });
  afterAll(async () => rt.close());

  const tenantTypes = async (id: string) => (await rt.audit.query(id, { limit: 200 })).events.map((e) => e.type).reverse();
  const providerEvents = async () => (await rt.audit.query(null, { limit: 500 })).events.reverse();

  it('records tenant creation, the first administrator, suspension and resumption in both streams', async () => {
    const t = await rt.tenants.create({ name: 'watched', edition: 'standard', adminEmail: 'ops@watched.example' }, TEST_OPERATOR);
    await rt.tenants.suspend('watched', TEST_OPERATOR);
    await rt.tenants.resume('watched', TEST_OPERATOR);
    expect(await tenantTypes(t.id)).toEqual(['tenant.create', 'iam.user.create', 'tenant.suspend', 'tenant.resume']);
    const mine = (await rt.audit.query(t.id, { limit: 10 })).events;
    for (const e of mine) expect(e.principal).toMatchObject({ type: 'operator', id: 'operator@test' });
    const userCreate = mine.find((e) => e.type === 'iam.user.create')!;
    expect(JSON.stringify(userCreate)).not.toContain('ops@watched.example'); // email HMAC'd
    expect(JSON.stringify(userCreate)).not.toContain(t.admin.temporaryPassword);
    const provider = (await providerEvents()).filter((e) => e.resource?.id === t.id);
    expect(provider.map((e) => e.type)).toEqual(['tenant.create', 'tenant.suspend', 'tenant.resume']);
    expect((await rt.audit.verify(t.id)).valid).toBe(true);
  });

  it('records key operations of an operator in the tenant stream and the provider stream', async () => {
    const t = await rt.tenants.create({ name: 'keyed', edition: 'enterprise', adminEmail: 'ops@keyed.example' }, TEST_OPERATOR);
    await keyOperations.rotate(rt, t.id, TEST_OPERATOR);
    const params = await rt.keys.importParameters(t.id);
    await keyOperations.importKeyMaterial(rt, t.id, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32)), TEST_OPERATOR);
    await keyOperations.disable(rt, t.id, TEST_OPERATOR);
    await keyOperations.enable(rt, t.id, TEST_OPERATOR);
    await expect(keyOperations.scheduleDeletion(rt, t.id, 3, TEST_OPERATOR)).rejects.toMatchObject({ code: 'validation_failed' });
    await expect(keyOperations.rotate(rt, t.id, TEST_OPERATOR)).rejects.toMatchObject({ code: 'conflict' });
    const types = await tenantTypes(t.id);
    expect(types.slice(2)).toEqual(['keys.rotate', 'keys.import', 'keys.disable', 'keys.enable', 'keys.rotate', 'keys.rotate']);
    const outcomes = (await rt.audit.query(t.id, { types: ['keys.rotate'], limit: 10 })).events.map((e) => e.outcome).reverse();
    expect(outcomes).toEqual(['success', 'success', 'failure']); // the refused rotation is announced, then recorded as failed
    const provider = (await providerEvents()).filter((e) => (e.details as { tenantId?: string } | undefined)?.tenantId === t.id).map((e) => e.type);
    expect(provider).toEqual(['keys.rotate', 'keys.import', 'keys.disable', 'keys.enable']);
  });

  it('records master-key rotation in every tenant stream and in the provider stream', async () => {
    const before = await rt.tenants.list();
    await keyOperations.rotateMaster(rt, TEST_OPERATOR);
    for (const t of before) expect((await tenantTypes(t.id)).at(-1)).toBe('keys.master.rotate');
    expect((await providerEvents()).at(-1)?.type).toBe('keys.master.rotate');
  });

  it('records tenant deletion in the provider stream', async () => {
    const t = await rt.tenants.create({ name: 'gone-soon', edition: 'standard', adminEmail: 'ops@gone.example' }, TEST_OPERATOR);
    await rt.tenants.delete('gone-soon', TEST_OPERATOR);
    expect((await providerEvents()).filter((e) => e.resource?.id === t.id).map((e) => e.type)).toEqual(['tenant.create', 'tenant.delete']);
    expect((await rt.audit.verify(null)).valid).toBe(true);
  });

  it('rotates due keys on schedule as the system, visible to the tenant', async () => {
    const t = await rt.tenants.create({ name: 'scheduled', edition: 'standard', adminEmail: 'ops@scheduled.example' }, TEST_OPERATOR);
    await rt.keys.setRotationPeriod(t.id, 30);
    clock.advance(31 * 24 * 3600 * 1000);
    const report = await new Maintenance(rt).runOnce();
    expect(report.rotated).toContain(t.id);
    expect(report.errors).toEqual([]);
    const last = (await rt.audit.query(t.id, { types: ['keys.rotate'], limit: 1 })).events[0]!;
    expect(last).toMatchObject({ principal: { type: 'system' }, details: { scheduled: true } });
    expect((await rt.keys.describe(t.id)).currentVersion).toBe(2);
  });
});
