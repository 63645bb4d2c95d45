import { createHmac, timingSafeEqual } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { Actor } from '../../src/core/principal.js';
import { startWebhookReceiver } from '../helpers/webhook-receiver.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

const admin: Actor = { principal: { type: 'user', id: 'u-admin', name: 'admin' }, source: { ip: '203.0.113.9' } };
const MIN = 60_000;

describeEachStorage('alert rules', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  const clock = new ManualClock(Date.UTC(2026, 10, 1));

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    tenant = (await rt.tenants.create({ name: 'alertco', edition: 'enterprise', adminEmail: 'a@alertco.example' }, TEST_OPERATOR)).id;
  });
  afterAll(async () => rt.close());

  const event = (type: string, details?: Record<string, unknown>, outcome: 'success' | 'failure' | 'denied' = 'success') =>
    rt.audit.record(tenant, { type, outcome, code: outcome === 'failure' ? 'invalid_credentials' : undefined, actor: admin, resource: { type: 'user', id: 'u-7', name: 'jane' }, details });
  const alertMail = async (name: string) => (await rt.mail.list(tenant, { kind: 'alert' })).filter((m) => m.subject === `[Custos] Alert: ${name}`);

  it('fires once when 3 lockouts fall within 10 minutes, stays quiet for the window, then re-arms', async () => {
    const rule = await rt.alerts.create(tenant, { name: 'lockouts', eventTypes: ['auth.lockout'], threshold: 3, windowSeconds: 600, emails: ['secops@alertco.example'] }, admin);
    await event('auth.lockout');
    clock.advance(4 * MIN);
    await event('auth.lockout');
    expect(await alertMail('lockouts')).toHaveLength(0);
    clock.advance(4 * MIN);
    await event('auth.lockout');
    const mails = await alertMail('lockouts');
    expect(mails).toHaveLength(1);
    expect(mails[0]).toMatchObject({ to: 'secops@alertco.example' });
    expect(mails[0]!.text).toMatch(/3 matching events in 600 s/);
    // A fourth lockout inside the window does not page again.
    clock.advance(MIN);
    await event('auth.lockout');
    expect(await alertMail('lockouts')).toHaveLength(1);
    // Old lockouts age out: two new ones after the window are not enough…
    clock.advance(11 * MIN);
    await event('auth.lockout');
    await event('auth.lockout');
    expect(await alertMail('lockouts')).toHaveLength(1);
    // …a third is.
    await event('auth.lockout');
    expect(await alertMail('lockouts')).toHaveLength(2);
    expect((await rt.alerts.firings(tenant, rule.id)).map((f) => f.count)).toEqual([3, 3]);
  });

  it('counts only the outcomes and types it names', async () => {
    await rt.alerts.create(tenant, { name: 'failed logins', eventTypes: ['auth.login.*'], outcomes: ['failure'], threshold: 2, windowSeconds: 300, emails: ['secops@alertco.example'] }, admin);
    await event('auth.login.success');
    await event('auth.login.success');
    await event('auth.login.failure', undefined, 'failure');
    expect(await alertMail('failed logins')).toHaveLength(0);
    await event('auth.login.failure', undefined, 'failure');
    expect(await alertMail('failed logins')).toHaveLength(1);
  });

  it('fires on any grant of Account Administrator, not on other grants', async () => {
    await rt.alerts.create(tenant, { name: 'admin grants', eventTypes: ['iam.user.role.grant'], match: { 'details.role': 'account-administrator' }, emails: ['ciso@alertco.example'] }, admin);
    await event('iam.user.role.grant', { role: 'viewer' });
    expect(await alertMail('admin grants')).toHaveLength(0);
    await event('iam.user.role.grant', { role: 'account-administrator' });
    await event('iam.user.role.grant', { role: 'account-administrator' });
    expect(await alertMail('admin grants')).toHaveLength(2);
  });

  it('delivers a correctly signed alert to a webhook receiver on loopback when a key is disabled', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: receiver.url, description: 'SIEM' }));
      await rt.alerts.create(tenant, { name: 'key disabled', eventTypes: ['keys.disable'], webhookIds: [ep.id] }, admin);
      await event('keys.disable');
      expect(await rt.webhooks.deliverDue(tenant)).toMatchObject({ delivered: 1 });
      expect(receiver.received).toHaveLength(1);
      const { headers, body } = receiver.received[0]!;
      const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(headers['x-custos-signature'] as string)!;
      const expected = createHmac('sha256', ep.secret).update(`${m[1]}.${body}`).digest();
      expect(timingSafeEqual(expected, Buffer.from(m[2]!, 'hex'))).toBe(true);
      const payload = JSON.parse(body);
      expect(payload).toMatchObject({ type: 'alert.fired', alert: { name: 'key disabled' }, count: 1, event: { type: 'keys.disable', tenant, outcome: 'success' } });
      expect(headers['x-custos-event']).toBe('alert.fired');
    } finally {
      await receiver.close();
    }
  });

  it('queues nothing when the event it saw is rolled back with its transaction', async () => {
    await rt.alerts.create(tenant, { name: 'deletes', eventTypes: ['lists.delete'], emails: ['x@alertco.example'] }, admin);
    await expect(
      rt.storage.tenant(tenant).transaction(async (db) => {
        await rt.audit.append(db, tenant, { type: 'lists.delete', outcome: 'success', actor: admin });
        throw new Error('the delete failed');
      }),
    ).rejects.toThrow('the delete failed');
    expect(await alertMail('deletes')).toHaveLength(0);
  });

  it('ignores disabled rules and records rule changes in the activity stream', async () => {
    await rt.alerts.create(tenant, { name: 'quiet', enabled: false, eventTypes: ['*'], emails: ['x@alertco.example'] }, admin);
    await event('anything.at.all');
    expect(await alertMail('quiet')).toHaveLength(0);
    const page = await rt.audit.query(tenant, { types: ['alerts.rule.*'], limit: 50 });
    expect(page.events.map((e) => e.type)).toContain('alerts.rule.create');
    const created = page.events.find((e) => e.resource?.name === 'lockouts')!;
    // Email addresses of a rule are personal data: HMAC'd in the stream.
    expect(JSON.stringify(created)).not.toContain('secops@alertco.example');
  });

  it.each([
    [{ name: 'no channel', eventTypes: ['auth.*'] }, /email address or webhook/],
    [{ name: 'bad pattern', eventTypes: ['Auth Login'], emails: ['a@b.example'] }, /invalid/],
    [{ name: 'bad threshold', eventTypes: ['auth.*'], threshold: 0, emails: ['a@b.example'] }, /threshold/],
    [{ name: 'bad outcome', eventTypes: ['auth.*'], outcomes: ['maybe'], emails: ['a@b.example'] }, /outcomes/],
    [{ name: 'bad email', eventTypes: ['auth.*'], emails: ['not-an-email'] }, /email/],
    [{ name: 'ghost webhook', eventTypes: ['auth.*'], webhookIds: ['01jd0000000000000000000000'] }, /does not exist/],
  ])('refuses an invalid rule %#', async (input, message) => {
    await expect(rt.alerts.create(tenant, input as never, admin)).rejects.toMatchObject({ code: 'validation_failed', message: expect.stringMatching(message) });
  });

  it('refuses a duplicate name and deletes rules', async () => {
    await expect(rt.alerts.create(tenant, { name: 'lockouts', eventTypes: ['x'], emails: ['a@b.example'] }, admin)).rejects.toMatchObject({ code: 'conflict' });
    const rule = (await rt.alerts.list(tenant)).find((r) => r.name === 'quiet')!;
    await rt.alerts.delete(tenant, rule.id, admin);
    expect((await rt.alerts.list(tenant)).map((r) => r.name)).not.toContain('quiet');
    await expect(rt.alerts.delete(tenant, rule.id, admin)).rejects.toMatchObject({ code: 'not_found' });
  });
});
