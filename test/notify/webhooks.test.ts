import { createHmac, timingSafeEqual } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { WEBHOOK_RETRY_DELAYS_MS, checkWebhookUrl, signWebhook } from '../../src/notify/webhook-service.js';
import { startWebhookReceiver } from '../helpers/webhook-receiver.js';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

/** What a receiver does: recompute the HMAC over "t.body" and compare in constant time. */
/** A receiver's check: `t=…` then one or more `v1=…`; accepted if any v1 matches the secret. */
function verifySignature(header: string, secret: string, body: string): boolean {
  const m = /^t=(\d+)((?:,v1=[0-9a-f]{64})+)$/.exec(header);
  if (!m) return false;
  const expected = createHmac('sha256', secret).update(`${m[1]}.${body}`).digest();
  return m[2]!.split(',v1=').slice(1).some((v) => timingSafeEqual(expected, Buffer.from(v, 'hex')));
}

describe('webhook URLs and signatures', () => {
  it('accepts https anywhere and http only to loopback', () => {
    expect(checkWebhookUrl('https://hooks.example.com/x')).toBe('https://hooks.example.com/x');
    expect(checkWebhookUrl('http://127.0.0.1:9000/x')).toBe('http://127.0.0.1:9000/x');
    for (const bad of ['http://hooks.example.com/x', 'ftp://x.example', 'https://user:pw@hooks.example.com', 'not a url', 'file:///etc/passwd']) {
      expect(() => checkWebhookUrl(bad), bad).toThrowError(expect.objectContaining({ code: 'validation_failed' }));
    }
  });

  it('signs timestamp and body with HMAC-SHA256', () => {
    const sig = signWebhook('whsec_test', 1700000000, '{"a":1}');
    expect(sig).toBe(`t=1700000000,v1=${createHmac('sha256', 'whsec_test').update('1700000000.{"a":1}').digest('hex')}`);
    expect(verifySignature(sig, 'whsec_test', '{"a":1}')).toBe(true);
    expect(verifySignature(sig, 'whsec_test', '{"a":2}')).toBe(false);
    expect(verifySignature(sig, 'whsec_other', '{"a":1}')).toBe(false);
  });
});

describeEachStorage('webhooks', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  const clock = new ManualClock(Date.UTC(2026, 10, 1));

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    tenant = (await rt.tenants.create({ name: 'hookco', edition: 'enterprise', adminEmail: 'a@hookco.example' }, TEST_OPERATOR)).id;
  });
  afterAll(async () => rt.close());

  const tx = <T>(fn: Parameters<ReturnType<TestRuntime['storage']['tenant']>['transaction']>[0]) => rt.storage.tenant(tenant).transaction(fn) as Promise<T>;

  it('delivers a signed JSON body that the receiver can verify, and records the attempt', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: receiver.url, description: 'SIEM' }));
      expect(ep.secret).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);
      // The secret is kept encrypted: not in clear in the store.
      const stored = await tx<Array<{ ciphertext: Buffer }>>((db) => db.selectFrom('tenant_secrets').select('ciphertext').execute());
      expect(stored.some((s) => s.ciphertext.includes(Buffer.from(ep.secret)))).toBe(false);
      // …and never listed.
      expect(JSON.stringify(await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.listEndpoints(db)))).not.toContain(ep.secret);

      const id = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'alert.fired', { rule: 'lockouts', count: 3 }));
      expect(await rt.webhooks.deliverDue(tenant)).toEqual({ delivered: 1, retrying: 0, failed: 0 });
      expect(receiver.received).toHaveLength(1);
      const hook = receiver.received[0]!;
      expect(JSON.parse(hook.body)).toEqual({ rule: 'lockouts', count: 3 });
      expect(hook.headers['content-type']).toBe('application/json');
      expect(hook.headers['x-custos-event']).toBe('alert.fired');
      expect(hook.headers['x-custos-delivery']).toBe(id);
      expect(verifySignature(hook.headers['x-custos-signature'] as string, ep.secret, hook.body)).toBe(true);
      expect(verifySignature(hook.headers['x-custos-signature'] as string, 'whsec_wrong', hook.body)).toBe(false);
      const [delivery] = await rt.webhooks.listDeliveries(tenant);
      expect(delivery).toMatchObject({ id, state: 'delivered', attempts: 1, lastStatus: 200 });
      expect(await rt.webhooks.attempts(tenant, id)).toEqual([expect.objectContaining({ attempt: 1, status: 200, error: null })]);
    } finally {
      await receiver.close();
    }
  });

  it('rotates the signing secret: a pending retry and later deliveries are signed with the new one, and for a day also with the old one', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: receiver.url }));
      receiver.respondWith(500);
      await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'alert.fired', { rule: 'rotation' }));
      expect(await rt.webhooks.deliverDue(tenant)).toEqual({ delivered: 0, retrying: 1, failed: 0 });
      const first = receiver.received[0]!.headers['x-custos-signature'] as string;
      expect(first.match(/v1=/g)).toHaveLength(1);
      expect(verifySignature(first, ep.secret, receiver.received[0]!.body)).toBe(true);

      const rotated = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.rotateSecret(db, tenant, ep.id));
      expect(rotated.secret).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);
      expect(rotated.secret).not.toBe(ep.secret);
      expect(rotated).toMatchObject({ id: ep.id, url: ep.url });
      expect(Date.parse(rotated.previousSecretValidUntil)).toBe(clock.now() + 24 * 3600_000);
      // Both secrets are kept encrypted.
      const stored = await tx<Array<{ ciphertext: Buffer }>>((db) => db.selectFrom('tenant_secrets').select('ciphertext').execute());
      expect(stored.some((r) => r.ciphertext.includes(Buffer.from(rotated.secret)) || r.ciphertext.includes(Buffer.from(ep.secret)))).toBe(false);

      clock.advance(WEBHOOK_RETRY_DELAYS_MS[0] + 1000);
      expect(await rt.webhooks.deliverDue(tenant)).toEqual({ delivered: 1, retrying: 0, failed: 0 });
      const retry = receiver.received[1]!;
      const header = retry.headers['x-custos-signature'] as string;
      expect(header.match(/v1=/g)).toHaveLength(2);
      expect(verifySignature(header, rotated.secret, retry.body)).toBe(true);
      expect(verifySignature(header, ep.secret, retry.body)).toBe(true);
      expect(verifySignature(header, 'whsec_neither', retry.body)).toBe(false);

      // A day later the old secret signs nothing.
      clock.advance(24 * 3600_000);
      await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'alert.fired', { rule: 'after the overlap' }));
      expect(await rt.webhooks.deliverDue(tenant)).toEqual({ delivered: 1, retrying: 0, failed: 0 });
      const later = receiver.received[2]!;
      expect((later.headers['x-custos-signature'] as string).match(/v1=/g)).toHaveLength(1);
      expect(verifySignature(later.headers['x-custos-signature'] as string, rotated.secret, later.body)).toBe(true);
      expect(verifySignature(later.headers['x-custos-signature'] as string, ep.secret, later.body)).toBe(false);
      await expect(rt.storage.tenant(tenant).transaction((db) => rt.webhooks.rotateSecret(db, tenant, newId()))).rejects.toMatchObject({ code: 'not_found' });
    } finally {
      await receiver.close();
    }
  });

  it('retries with backoff on errors and records every attempt', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: receiver.url }));
      receiver.respondWith(500, 503);
      const id = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'alert.fired', { n: 1 }));
      expect((await rt.webhooks.deliverDue(tenant)).retrying).toBe(1);
      expect((await rt.webhooks.deliverDue(tenant)).retrying).toBe(0); // not yet due
      clock.advance(WEBHOOK_RETRY_DELAYS_MS[0]);
      expect((await rt.webhooks.deliverDue(tenant)).retrying).toBe(1);
      clock.advance(WEBHOOK_RETRY_DELAYS_MS[1]);
      expect((await rt.webhooks.deliverDue(tenant)).delivered).toBe(1);
      const attempts = await rt.webhooks.attempts(tenant, id);
      expect(attempts.map((a) => [a.attempt, a.status, a.error])).toEqual([
        [1, 500, 'HTTP 500'],
        [2, 503, 'HTTP 503'],
        [3, 200, null],
      ]);
      expect(receiver.received).toHaveLength(3);
      // Every retry is freshly signed and carries the same delivery id.
      expect(new Set(receiver.received.map((r) => r.headers['x-custos-delivery']))).toEqual(new Set([id]));
    } finally {
      await receiver.close();
    }
  });

  it('gives up after the last retry, and does not follow redirects', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: receiver.url }));
      receiver.respondWith(...Array(20).fill(302));
      const id = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'x', {}));
      for (const delay of [0, ...WEBHOOK_RETRY_DELAYS_MS]) {
        clock.advance(delay);
        await rt.webhooks.deliverDue(tenant);
      }
      const d = (await rt.webhooks.listDeliveries(tenant)).find((x) => x.id === id)!;
      expect(d).toMatchObject({ state: 'failed', attempts: WEBHOOK_RETRY_DELAYS_MS.length + 1, lastStatus: 302 });
    } finally {
      await receiver.close();
    }
  });

  it('records a connection failure as an attempt', async () => {
    const gone = await startWebhookReceiver();
    await gone.close(); // a port nothing listens on any more
    const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: gone.url }));
    const id = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'x', {}));
    await rt.webhooks.deliverDue(tenant);
    const [a] = await rt.webhooks.attempts(tenant, id);
    expect(a).toMatchObject({ attempt: 1, status: null });
    expect(a!.error).toMatch(/ECONNREFUSED|connect/i);
  });

  it('deleting an endpoint removes its secret and stops its deliveries', async () => {
    const ep = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: 'https://hooks.example.com/gone' }));
    const id = await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.enqueue(db, tenant, ep.id, 'x', {}));
    await rt.storage.tenant(tenant).transaction((db) => rt.webhooks.deleteEndpoint(db, ep.id));
    expect((await rt.webhooks.listDeliveries(tenant)).find((d) => d.id === id)).toMatchObject({ state: 'failed', lastError: 'endpoint deleted' });
    await expect(rt.storage.tenant(tenant).transaction((db) => rt.webhooks.deleteEndpoint(db, ep.id))).rejects.toMatchObject({ code: 'not_found' });
    await expect(rt.storage.tenant(tenant).transaction((db) => rt.webhooks.createEndpoint(db, tenant, { url: 'http://evil.example/x' }))).rejects.toMatchObject({ code: 'validation_failed' });
  });
});
