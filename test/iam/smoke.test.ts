import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { makeApp } from '../helpers/app.js';
import { tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

describeEachStorage('sign-in smoke', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  it('first admin signs in through device verification and the password change, then reads /me', async () => {
    const { admin, tenantId } = await tenantWithAdmin(app, rt, 'smoke');
    const me = await app.inject({ url: '/api/v1/me', headers: { cookie: admin.cookie } });
    expect(me.statusCode, me.body).toBe(200);
    expect(me.json()).toMatchObject({ username: 'admin', tenant: 'smoke', roles: ['account-administrator'], via: 'session' });
    expect(me.json().permissions).toContain('account.admin');
    const types = (await rt.audit.query(tenantId, { limit: 50 })).events.map((e) => e.type).reverse();
    expect(types).toEqual(expect.arrayContaining(['auth.device.verify', 'iam.password.change', 'auth.login.success']));
  });
});
