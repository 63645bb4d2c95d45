import type { FastifyInstance, InjectOptions } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { createUser, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

type Tenant = { tenantId: string; name: string; admin: SignedIn; adminEmail: string };

async function setAllowlist(rt: Runtime, tenantId: string, cidrs: string[]): Promise<void> {
  const current = structuredClone(await rt.securitySettings.get(tenantId));
  await rt.storage.tenant(tenantId).transaction((db) => rt.securitySettings.put(db, tenantId, { ...current, ipAllowlist: cidrs }));
}

async function deniedEvents(rt: Runtime, tenantId: string) {
  return (await rt.audit.query(tenantId, { limit: 1000, types: ['auth.ip.denied'] })).events;
}

async function failedAttempts(rt: Runtime, tenantId: string, username: string): Promise<number> {
  const row = await rt.storage.tenant(tenantId).transaction((db) => db.selectFrom('users').select('failed_attempts').where('username', '=', username).executeTakeFirstOrThrow());
  return row.failed_attempts;
}

/** A runtime and app over a fresh deployment, with the given extra environment (e.g. trusted proxies). */
async function deployment(kind: 'sqlite' | 'postgres', env: Record<string, string> = {}): Promise<{ env: TestEnv; rt: Runtime; app: FastifyInstance; close(): Promise<void> }> {
  const testEnv = await makeTestEnv(kind, env);
  const rt = await openRuntime(testEnv.config, { logger: createLogger('silent'), migrateTenants: true });
  const app = await makeApp(rt);
  return {
    env: testEnv,
    rt,
    app,
    async close() {
      await app.close();
      await rt.close();
      await testEnv.cleanup();
    },
  };
}

describeEachStorage('tenant IP allowlist', (kind) => {
  describe('direct clients (no trusted proxies)', () => {
    let d: Awaited<ReturnType<typeof deployment>>;
    let t: Tenant;
    let open: Tenant;
    let apiPassword: string;

    beforeAll(async () => {
      d = await deployment(kind);
      t = await tenantWithAdmin(d.app, d.rt, 'ipallow');
      open = await tenantWithAdmin(d.app, d.rt, 'ipopen');
      apiPassword = (await createUser(d.rt, t, t.admin.cookie, { username: 'robot', kind: 'api', roles: ['viewer'] })).temporaryPassword;
      await setAllowlist(d.rt, t.tenantId, ['10.0.0.0/8', '2001:db8::/32', '198.51.100.7']);
    });
    afterAll(async () => d.close());

    const me = (remoteAddress: string, extra: Partial<InjectOptions> = {}) => d.app.inject({ url: '/api/v1/me', headers: { cookie: t.admin.cookie, ...(extra.headers ?? {}) }, remoteAddress });

    it('serves addresses inside the IPv4 and IPv6 ranges and a single listed address', async () => {
      for (const ip of ['10.0.0.1', '10.255.255.254', '198.51.100.7', '2001:db8::1', '2001:db8:ffff:1::42']) {
        const res = await me(ip);
        expect(res.statusCode, `${ip}: ${res.body}`).toBe(200);
      }
    });

    it('refuses IPv4 and IPv6 addresses outside the list with 403 ip_not_allowed and records each refusal', async () => {
      const before = (await deniedEvents(d.rt, t.tenantId)).length;
      for (const ip of ['11.0.0.1', '192.0.2.1', '198.51.100.8', '2001:db9::1', '::1', 'fe80::1']) {
        expectProblem(await me(ip), 403, 'ip_not_allowed');
      }
      const events = await deniedEvents(d.rt, t.tenantId);
      expect(events.length - before).toBe(6);
      expect(events[0]).toMatchObject({
        type: 'auth.ip.denied',
        outcome: 'denied',
        code: 'ip_not_allowed',
        source: { ip: 'fe80::1' },
        request: { method: 'GET', path: '/api/v1/me' },
      });
    });

    it('treats IPv4-mapped IPv6 peers as their IPv4 address', async () => {
      expect((await me('::ffff:10.1.2.3')).statusCode).toBe(200);
      expectProblem(await me('::ffff:192.0.2.1'), 403, 'ip_not_allowed');
    });

    it('refuses console sign-in from outside before the password is checked (the lockout counter does not move)', async () => {
      const before = await failedAttempts(d.rt, t.tenantId, 'admin');
      const loginEvents = (await d.rt.audit.query(t.tenantId, { limit: 1000, types: ['auth.login.*'] })).events.length;
      const res = await d.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'admin', password: t.admin.password }, remoteAddress: '192.0.2.1' });
      expectProblem(res, 403, 'ip_not_allowed');
      expect(res.cookies.find((c) => c.name === 'custos_session')).toBeUndefined();
      const wrong = await d.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'admin', password: 'not-the-password' }, remoteAddress: '192.0.2.1' });
      expectProblem(wrong, 403, 'ip_not_allowed');
      expect(await failedAttempts(d.rt, t.tenantId, 'admin')).toBe(before);
      expect((await d.rt.audit.query(t.tenantId, { limit: 1000, types: ['auth.login.*'] })).events.length).toBe(loginEvents);
      expect((await deniedEvents(d.rt, t.tenantId))[0]).toMatchObject({ source: { ip: '192.0.2.1' }, request: { method: 'POST', path: '/api/v1/auth/login' } });
      // From inside, the same sign-in works.
      const inside = await d.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'admin', password: t.admin.password }, headers: { cookie: t.admin.deviceCookie }, remoteAddress: '10.0.0.9' });
      expect(inside.statusCode, inside.body).toBe(200);
      t.admin = { ...t.admin, cookie: `custos_session=${inside.cookies.find((c) => c.name === 'custos_session')!.value}` };
    });

    it('refuses API token requests, the other pre-sign-in routes and bearer tokens from outside', async () => {
      const token = (remoteAddress: string) => d.app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot', password: apiPassword }, remoteAddress });
      expectProblem(await token('192.0.2.1'), 403, 'ip_not_allowed');
      expectProblem(await token('2001:db9::1'), 403, 'ip_not_allowed');
      expect(await failedAttempts(d.rt, t.tenantId, 'robot')).toBe(0);
      // From inside, the API user's sign-in proceeds (to its first-use password change).
      const inside = await token('2001:db8::7');
      expect(inside.statusCode, inside.body).toBe(200);
      expect(inside.json()).toMatchObject({ status: 'challenge', challenge: 'password_change_required' });
      expectProblem(await d.app.inject({ method: 'POST', url: '/api/v1/auth/password/forgot', payload: { tenant: t.name, username: 'admin' }, remoteAddress: '192.0.2.1' }), 403, 'ip_not_allowed');
      expectProblem(await d.app.inject({ url: `/api/v1/auth/options?tenant=${t.name}`, remoteAddress: '192.0.2.1' }), 403, 'ip_not_allowed');
    });

    it("does not affect another tenant, and an empty list allows every address", async () => {
      expect((await d.app.inject({ url: '/api/v1/me', headers: { cookie: open.admin.cookie }, remoteAddress: '192.0.2.1' })).statusCode).toBe(200);
      expect(await deniedEvents(d.rt, open.tenantId)).toHaveLength(0);
      await setAllowlist(d.rt, t.tenantId, []);
      expect((await me('192.0.2.1')).statusCode).toBe(200);
      await setAllowlist(d.rt, t.tenantId, ['10.0.0.0/8', '2001:db8::/32', '198.51.100.7']);
      expectProblem(await me('192.0.2.1'), 403, 'ip_not_allowed');
    });

    it('ignores X-Forwarded-For when no proxy is trusted', async () => {
      expectProblem(await me('192.0.2.1', { headers: { 'x-forwarded-for': '10.0.0.1' } }), 403, 'ip_not_allowed');
      expect((await deniedEvents(d.rt, t.tenantId))[0]).toMatchObject({ source: { ip: '192.0.2.1' } });
      // And a forged header cannot make an allowed peer look like another address either.
      expect((await me('10.0.0.1', { headers: { 'x-forwarded-for': '192.0.2.1' } })).statusCode).toBe(200);
    });

    it('refuses malformed entries when the list is set', async () => {
      const current = await d.rt.securitySettings.get(t.tenantId);
      // Non-standard IPv4 notations are refused rather than read the way inet_aton would (010.0.0.1 is 8.0.0.1 there).
      for (const bad of ['10.0.0.0/33', 'not-an-ip', '2001:db8::/129', '10.0.0', '167772161', '010.0.0.1', '0xa.0.0.1', '10.0.0.0/8/8', '10.0.0.0/']) {
        await expect(d.rt.storage.tenant(t.tenantId).transaction((db) => d.rt.securitySettings.put(db, t.tenantId, { ...current, ipAllowlist: [bad] }))).rejects.toMatchObject({ code: 'validation_failed' });
      }
      expect((await d.rt.securitySettings.get(t.tenantId)).ipAllowlist).toEqual(['10.0.0.0/8', '2001:db8::/32', '198.51.100.7/32']);
    });
  });

  describe('behind trusted proxies', () => {
    let d: Awaited<ReturnType<typeof deployment>>;
    let t: Tenant;

    beforeAll(async () => {
      d = await deployment(kind, { CUSTOS_TRUSTED_PROXIES: '10.9.9.9,2001:db8:aaaa::/48' });
      t = await tenantWithAdmin(d.app, d.rt, 'ipproxy');
      await setAllowlist(d.rt, t.tenantId, ['10.0.0.0/8', '203.0.113.0/24', '2001:db8::/32']);
    });
    afterAll(async () => d.close());

    const me = (remoteAddress: string, xff?: string) => d.app.inject({ url: '/api/v1/me', headers: { cookie: t.admin.cookie, ...(xff ? { 'x-forwarded-for': xff } : {}) }, remoteAddress });

    it('honours X-Forwarded-For from a trusted proxy: the client address decides', async () => {
      expect((await me('10.9.9.9', '203.0.113.5')).statusCode).toBe(200);
      // The proxy itself is inside the allowlist; the client behind it is not.
      expectProblem(await me('10.9.9.9', '192.0.2.44'), 403, 'ip_not_allowed');
      expect((await deniedEvents(d.rt, t.tenantId))[0]).toMatchObject({ source: { ip: '192.0.2.44' } });
      // An IPv6 proxy from the trusted range, an IPv6 client.
      expect((await me('2001:db8:aaaa::1', '2001:db8:1::1')).statusCode).toBe(200);
      expectProblem(await me('2001:db8:aaaa::1', '2001:db9::1'), 403, 'ip_not_allowed');
    });

    it('ignores X-Forwarded-For from a peer that is not a trusted proxy', async () => {
      expectProblem(await me('192.0.2.50', '203.0.113.5'), 403, 'ip_not_allowed');
      expect((await deniedEvents(d.rt, t.tenantId))[0]).toMatchObject({ source: { ip: '192.0.2.50' } });
      // An allowed but untrusted peer is judged by its own address, whatever it claims.
      expect((await me('10.1.1.1', '192.0.2.50')).statusCode).toBe(200);
      // An address next to the trusted proxy is not trusted: judged by itself (allowed), not by what it forwards.
      expect((await me('10.9.9.10', '192.0.2.50')).statusCode).toBe(200);
    });

    it('takes the address the trusted proxy saw, not one the client prepended', async () => {
      // The client sent "X-Forwarded-For: 203.0.113.5"; the proxy appended the real peer 192.0.2.60.
      expectProblem(await me('10.9.9.9', '203.0.113.5, 192.0.2.60'), 403, 'ip_not_allowed');
      expect((await deniedEvents(d.rt, t.tenantId))[0]).toMatchObject({ source: { ip: '192.0.2.60' } });
    });

    it('refuses the sign-in routes by the forwarded address too', async () => {
      const res = await d.app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'nobody', password: 'whatever-password' }, headers: { 'x-forwarded-for': '192.0.2.70' }, remoteAddress: '10.9.9.9' });
      expectProblem(res, 403, 'ip_not_allowed');
      const login = await d.app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'admin', password: t.admin.password }, headers: { 'x-forwarded-for': '192.0.2.70' }, remoteAddress: '10.9.9.9' });
      expectProblem(login, 403, 'ip_not_allowed');
    });
  });
});
