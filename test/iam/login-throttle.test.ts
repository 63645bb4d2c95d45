import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { createUser, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

type Tenant = { tenantId: string; name: string; admin: SignedIn };

describeEachStorage('sign-in throttle per client address', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  let t: Tenant;
  let other: Tenant;
  let robotPassword: string;

  const setThrottle = async (tenant: Tenant, loginThrottle: { maxFailures: number; windowMinutes: number }) => {
    const current = structuredClone(await rt.securitySettings.get(tenant.tenantId));
    await rt.storage.tenant(tenant.tenantId).transaction((db) => rt.securitySettings.put(db, tenant.tenantId, { ...current, loginThrottle }));
  };
  const login = (ip: string, password: string, opts: { tenant?: Tenant; username?: string } = {}) => {
    const tenant = opts.tenant ?? t;
    return app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: tenant.name, username: opts.username ?? 'admin', password }, headers: { cookie: tenant.admin.deviceCookie }, remoteAddress: ip });
  };
  const token = (ip: string, password: string) => app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot', password }, remoteAddress: ip });
  const failedAttempts = async (username: string) =>
    (await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('users').select('failed_attempts').where('username', '=', username).executeTakeFirstOrThrow())).failed_attempts;

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'throttleco');
    other = await tenantWithAdmin(app, rt, 'throttleother');
    robotPassword = (await createUser(rt, t, t.admin.cookie, { username: 'robot', kind: 'api', roles: ['viewer'] })).temporaryPassword;
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  it('after the maximum of failures from one address, answers it 429 with Retry-After without checking the password; other addresses and tenants go on; the wait ends with the window', async () => {
    await setThrottle(t, { maxFailures: 3, windowMinutes: 10 });
    const ip = '203.0.113.5';
    expectProblem(await login(ip, 'wrong password one'), 401, 'invalid_credentials');
    expectProblem(await login(ip, 'anything', { username: 'nobody' }), 401, 'invalid_credentials');
    clock.advance(60_000);
    expectProblem(await login(ip, 'wrong password two'), 401, 'invalid_credentials');
    expect(await failedAttempts('admin')).toBe(2);

    const blocked = await login(ip, t.admin.password);
    expectProblem(blocked, 429, 'rate_limited');
    const retryAfter = Number(blocked.headers['retry-after']);
    // The two failures of the first minute leave the window after 10 minutes from then: 9 minutes from now.
    expect(retryAfter).toBeGreaterThan(8 * 60);
    expect(retryAfter).toBeLessThanOrEqual(9 * 60);
    expect(blocked.body).not.toContain(t.admin.password);
    // Refused before the password was checked: the account's own failure count did not move.
    expect(await failedAttempts('admin')).toBe(2);
    expectProblem(await login(ip, 'wrong password three'), 429, 'rate_limited');
    expect(await failedAttempts('admin')).toBe(2);

    expect((await login('203.0.113.6', t.admin.password)).statusCode).toBe(200);
    expect((await login('2001:db8::5', t.admin.password)).statusCode).toBe(200);
    // The same IPv4 address written as IPv4-mapped IPv6 is the same address.
    expectProblem(await login(`::ffff:${ip}`, t.admin.password), 429, 'rate_limited');
    expect((await login(ip, other.admin.password, { tenant: other })).statusCode).toBe(200);

    const events = (await rt.audit.query(t.tenantId, { limit: 100, types: ['auth.login.failure'] })).events;
    const throttled = events.filter((e) => e.code === 'rate_limited');
    expect(throttled).toHaveLength(3);
    expect(throttled[0]).toMatchObject({ outcome: 'failure', details: { reason: 'ip_throttled' } });
    expect(throttled.map((e) => e.source?.ip)).toContain(ip);

    // Retry-After is exact to the second (the clock has not moved since it was given).
    clock.advance((retryAfter - 1) * 1000);
    expectProblem(await login(ip, t.admin.password), 429, 'rate_limited');
    clock.advance(1000);
    expect((await login(ip, t.admin.password)).statusCode).toBe(200);
  });

  it('counts failed API token requests too, is not reset by a success, and is off with maxFailures 0', async () => {
    await setThrottle(t, { maxFailures: 2, windowMinutes: 5 });
    const ip = '198.51.100.20';
    expectProblem(await token(ip, 'not the robot password'), 401, 'invalid_credentials');
    expect((await login(ip, t.admin.password)).statusCode).toBe(200);
    expectProblem(await token(ip, 'still not the robot password'), 401, 'invalid_credentials');
    expectProblem(await token(ip, robotPassword), 429, 'rate_limited');
    expectProblem(await login(ip, t.admin.password), 429, 'rate_limited');
    await setThrottle(t, { maxFailures: 0, windowMinutes: 5 });
    expect((await login(ip, t.admin.password)).statusCode).toBe(200);
    expect((await token(ip, robotPassword)).statusCode).toBe(200);
    await setThrottle(t, { maxFailures: 50, windowMinutes: 15 });
  });

  it('counts IPv6 failures per /64: rotating addresses inside one /64 does not escape, another /64 is not affected', async () => {
    await setThrottle(t, { maxFailures: 2, windowMinutes: 5 });
    expectProblem(await login('2001:db8:aaaa:1::1', 'wrong password ipv6 one'), 401, 'invalid_credentials');
    expectProblem(await login('2001:db8:aaaa:1:ffff::2', 'wrong password ipv6 two'), 401, 'invalid_credentials');
    expectProblem(await login('2001:db8:aaaa:1:1234:5678:9abc:def0', t.admin.password), 429, 'rate_limited');
    expect((await login('2001:db8:aaaa:2::1', t.admin.password)).statusCode).toBe(200);
    await setThrottle(t, { maxFailures: 50, windowMinutes: 15 });
  });

  it('is part of the security settings: defaults for documents stored before it, bounds checked on PUT', async () => {
    await rt.storage.tenant(other.tenantId).transaction(async (db) => {
      const stored = JSON.parse((await db.selectFrom('tenant_settings').select('value').where('key', '=', 'security').executeTakeFirst())?.value ?? '{}') as Record<string, unknown>;
      delete stored.loginThrottle;
      const value = JSON.stringify({ ...(await rt.securitySettings.inTx(db)), ...stored, loginThrottle: undefined });
      await db.insertInto('tenant_settings').values({ key: 'security', value, updated_at: clock.now() }).onConflict((oc) => oc.column('key').doUpdateSet({ value })).execute();
    });
    rt.securitySettings.invalidate(other.tenantId);
    const admin = { ...other.admin.headers, cookie: other.admin.cookie };
    const got = await app.inject({ method: 'GET', url: '/api/v1/settings/security', headers: admin, remoteAddress: '192.0.2.10' });
    expect(got.statusCode, got.body).toBe(200);
    expect(got.json().loginThrottle).toEqual({ maxFailures: 50, windowMinutes: 15 });
    const { loginThrottle: _omitted, ...withoutThrottle } = got.json();
    const put = (body: unknown) => app.inject({ method: 'PUT', url: '/api/v1/settings/security', headers: admin, payload: body as object, remoteAddress: '192.0.2.10' });
    expect((await put(withoutThrottle)).json().loginThrottle).toEqual({ maxFailures: 50, windowMinutes: 15 });
    expectProblem(await put({ ...withoutThrottle, loginThrottle: { maxFailures: -1, windowMinutes: 15 } }), 400, 'validation_failed');
    expectProblem(await put({ ...withoutThrottle, loginThrottle: { maxFailures: 5, windowMinutes: 0 } }), 400, 'validation_failed');
    expectProblem(await put({ ...withoutThrottle, loginThrottle: { maxFailures: 5, windowMinutes: 15, extra: 1 } }), 400, 'validation_failed');
    const ok = await put({ ...withoutThrottle, loginThrottle: { maxFailures: 7, windowMinutes: 30 } });
    expect(ok.statusCode, ok.body).toBe(200);
    expect(ok.json().loginThrottle).toEqual({ maxFailures: 7, windowMinutes: 30 });
  });
});
