import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { DEFAULT_SECURITY_SETTINGS } from '../../src/iam/security-settings.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { lastMail, signIn, temporaryPasswordFrom, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';
import { startWebhookReceiver } from '../helpers/webhook-receiver.js';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

describeEachStorage('tenant admin API', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let tenant: { tenantId: string; name: string; admin: SignedIn; adminEmail: string };
  const clock = new ManualClock(Date.now());

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    tenant = await tenantWithAdmin(app, rt, 'adminco');
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  const call = (who: SignedIn | null, method: Method, url: string, payload?: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> =>
    app.inject({ method, url: `/api/v1${url}`, headers: { ...(who ? who.headers : {}), ...headers }, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });

  const asAdmin = (method: Method, url: string, payload?: unknown, headers?: Record<string, string>) => call(tenant.admin, method, url, payload, headers);

  const types = async (tenantId = tenant.tenantId, limit = 200) => (await rt.audit.query(tenantId, { limit })).events;

  /** Creates a user through the API and signs it in (console) or gets it an API token (api). */
  async function userWith(username: string, roles: string[], opts: { orgIds?: string[]; kind?: 'console' | 'api' } = {}): Promise<SignedIn & { id: string }> {
    const email = `${username}@adminco.example`;
    const res = await asAdmin('POST', '/users', { username, email, roles, ...(opts.orgIds ? { orgIds: opts.orgIds } : {}), ...(opts.kind ? { kind: opts.kind } : {}) });
    expect(res.statusCode, res.body).toBe(201);
    const id = res.json().id as string;
    const temporary = temporaryPasswordFrom((await lastMail(rt, tenant.tenantId, 'iam.user.welcome', email)).text);
    const signed = await signIn(app, rt, { tenant: tenant.name, tenantId: tenant.tenantId, username, password: temporary, email });
    return { ...signed, id };
  }

  describe('users', () => {
    it('creates a user with 201, mails the temporary password and never returns it', async () => {
      const res = await asAdmin('POST', '/users', { username: 'jane', email: 'jane@adminco.example', fullName: 'Jane Doe', roles: ['viewer'] });
      expect(res.statusCode, res.body).toBe(201);
      const user = res.json();
      expect(user).toMatchObject({ username: 'jane', email: 'jane@adminco.example', fullName: 'Jane Doe', kind: 'console', status: 'active', roles: ['viewer'], mustChangePassword: true, locked: false });
      const mail = await lastMail(rt, tenant.tenantId, 'iam.user.welcome', 'jane@adminco.example');
      const temporary = temporaryPasswordFrom(mail.text);
      expect(res.body).not.toContain(temporary);
      expect(res.body).not.toMatch(/"(temporary)?password"/i);
      expect((await asAdmin('GET', `/users/${user.id}`)).json()).toEqual(user);
      expect((await asAdmin('GET', '/users')).json().users.map((u: { username: string }) => u.username)).toEqual(expect.arrayContaining(['admin', 'jane']));
    });

    it('pages the users list in username order with an opaque cursor, also when organizational access control skips users', async () => {
      for (const n of ['pg-a', 'pg-b', 'pg-c', 'pg-d', 'pg-e']) expect((await asAdmin('POST', '/users', { username: n, email: `${n}@adminco.example` })).statusCode).toBe(201);
      const all = (await asAdmin('GET', '/users?limit=1000')).json();
      expect(all.nextCursor).toBeNull();
      const names = all.users.map((u: { username: string }) => u.username);
      expect(names).toEqual([...names].sort());
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page: { users: Array<{ username: string }>; nextCursor: string | null } = (await asAdmin('GET', `/users?limit=2${cursor ? `&cursor=${cursor}` : ''}`)).json();
        expect(page.users.length).toBeLessThanOrEqual(2);
        seen.push(...page.users.map((u: { username: string }) => u.username));
        cursor = page.nextCursor;
        pages++;
      } while (cursor !== null && pages < 100);
      expect(seen).toEqual(names);
      expectProblem(await asAdmin('GET', '/users?cursor=not%20a%20cursor'), 400, 'validation_failed');
      expectProblem(await asAdmin('GET', '/users?limit=0'), 400, 'validation_failed');
      expectProblem(await asAdmin('GET', '/users?limit=1001'), 400, 'validation_failed');
    });

    it('replays a creation for the same Idempotency-Key and body, and refuses the key with another body', async () => {
      const body = { username: 'idem', email: 'idem@adminco.example' };
      const key = { 'idempotency-key': 'create-idem-1' };
      const first = await asAdmin('POST', '/users', body, key);
      expect(first.statusCode, first.body).toBe(201);
      expect(first.headers['idempotent-replayed']).toBeUndefined();
      const again = await asAdmin('POST', '/users', { email: 'idem@adminco.example', username: 'idem' }, key);
      expect(again.statusCode).toBe(201);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.json()).toEqual(first.json());
      expect((await rt.mail.list(tenant.tenantId, { kind: 'iam.user.welcome' })).filter((m) => m.to === 'idem@adminco.example')).toHaveLength(1);
      expectProblem(await asAdmin('POST', '/users', { ...body, fullName: 'Other' }, key), 422, 'idempotency_key_reused');
      // Without the key (or with another), the same body is a second creation: refused as a duplicate.
      expectProblem(await asAdmin('POST', '/users', body, { 'idempotency-key': 'create-idem-2' }), 409, 'conflict');
      // A key is the caller's own: another administrator's identical key is not a replay.
      const other = await userWith('admin2', ['account-administrator']);
      expectProblem(await call(other, 'POST', '/users', body, key), 409, 'conflict');
      // Replays last 24 hours.
      await rt.storage.tenant(tenant.tenantId).transaction((db) => db.updateTable('tenant_settings').set({ updated_at: clock.now() - 24 * 3600 * 1000 }).where('key', 'like', 'idempotency/%').execute());
      expectProblem(await asAdmin('POST', '/users', body, key), 409, 'conflict');
    });

    it.each([
      ['a malformed email', { username: 'bob', email: 'not-an-email' }],
      ['an extra member', { username: 'bob', email: 'bob@adminco.example', password: 'chosen-by-admin' }],
      ['a short username', { username: 'b', email: 'bob@adminco.example' }],
      ['an unknown kind', { username: 'bob', email: 'bob@adminco.example', kind: 'robot' }],
      ['an unknown role', { username: 'bob', email: 'bob@adminco.example', roles: ['overlord'] }],
      ['an unknown organization', { username: 'bob', email: 'bob@adminco.example', orgIds: [newId()] }],
    ])('refuses a user with %s (400) and creates nothing', async (_what, body) => {
      expectProblem(await asAdmin('POST', '/users', body), 400, 'validation_failed');
      expect((await asAdmin('GET', '/users')).json().users.some((u: { username: string }) => u.username === 'bob')).toBe(false);
    });

    it('changes, suspends, activates, unlocks, resets and deletes a user, each recorded', async () => {
      const u = await userWith('walter', ['viewer']);
      let res = await asAdmin('PATCH', `/users/${u.id}`, { fullName: 'Walter W.', email: 'ww@adminco.example' });
      expect(res.json()).toMatchObject({ fullName: 'Walter W.', email: 'ww@adminco.example' });
      expectProblem(await asAdmin('PATCH', `/users/${u.id}`, {}), 400, 'validation_failed');

      res = await asAdmin('PUT', `/users/${u.id}/roles`, { roles: ['marketer', 'viewer'] });
      expect(res.json().roles).toEqual(['marketer', 'viewer']);

      // Suspension ends the user's session at once.
      expect((await call(u, 'GET', '/me')).statusCode).toBe(200);
      res = await asAdmin('POST', `/users/${u.id}/suspend`);
      expect(res.json().status).toBe('suspended');
      expectProblem(await call(u, 'GET', '/me'), 401, 'authentication_required');
      res = await asAdmin('POST', `/users/${u.id}/activate`);
      expect(res.json().status).toBe('active');

      await rt.storage.tenant(tenant.tenantId).transaction((db) => db.updateTable('users').set({ locked_until: clock.now() + 3600_000, failed_attempts: 5 }).where('id', '=', u.id).execute());
      expect((await asAdmin('GET', `/users/${u.id}`)).json().locked).toBe(true);
      expect((await asAdmin('POST', `/users/${u.id}/unlock`)).json()).toMatchObject({ locked: false, lockedUntil: null });

      res = await asAdmin('POST', `/users/${u.id}/password-reset`);
      expect(res.statusCode).toBe(202);
      expect(res.json()).toEqual({ status: 'accepted' });
      expect((await lastMail(rt, tenant.tenantId, 'auth.password-reset', 'ww@adminco.example')).text).toMatch(/reset-password\?tenant=adminco&token=/);

      res = await asAdmin('DELETE', `/users/${u.id}`);
      expect(res.statusCode).toBe(204);
      expect(res.body).toBe('');
      expectProblem(await asAdmin('GET', `/users/${u.id}`), 404, 'not_found');
      expectProblem(await asAdmin('DELETE', `/users/${u.id}`), 404, 'not_found');

      const mine = (await types()).filter((e) => e.resource?.id === u.id).map((e) => e.type);
      expect(mine).toEqual(expect.arrayContaining(['iam.user.create', 'iam.user.update', 'iam.user.roles', 'iam.user.role.grant', 'iam.user.suspend', 'iam.user.activate', 'iam.user.unlock', 'auth.password.reset.request', 'iam.user.delete']));
      const byAdmin = (await types()).find((e) => e.type === 'iam.user.delete' && e.resource?.id === u.id)!;
      expect(byAdmin.principal).toMatchObject({ type: 'user', id: tenant.admin.userId });
      expect(byAdmin.request).toMatchObject({ method: 'DELETE', path: `/api/v1/users/${u.id}` });
    });

    it('refuses self-harm: own roles, own suspension, own deletion', async () => {
      expectProblem(await asAdmin('PUT', `/users/${tenant.admin.userId}/roles`, { roles: ['viewer'] }), 403, 'forbidden');
      expectProblem(await asAdmin('POST', `/users/${tenant.admin.userId}/suspend`), 403, 'forbidden');
      expectProblem(await asAdmin('DELETE', `/users/${tenant.admin.userId}`), 403, 'forbidden');
    });

    it('needs the CSRF token for cookie-authenticated changes', async () => {
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/users', headers: { cookie: tenant.admin.cookie }, payload: { username: 'csrf', email: 'csrf@adminco.example' } }), 403, 'csrf_invalid');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/users', headers: { cookie: tenant.admin.cookie, 'x-csrf-token': `${tenant.tenantId}.${'A'.repeat(43)}` }, payload: { username: 'csrf', email: 'csrf@adminco.example' } }), 403, 'csrf_invalid');
    });

    it('refuses privilege escalation: a custom role with users.manage but not account.admin cannot grant Account Administrator', async () => {
      const role = await asAdmin('POST', '/roles', { name: 'Helpdesk', permissions: ['users.read', 'users.manage', 'lists.read'] });
      expect(role.statusCode, role.body).toBe(201);
      const helpdesk = await userWith('helpdesk', [role.json().id]);
      const victim = await userWith('victim', ['viewer']);
      // It can do its job…
      const made = await call(helpdesk, 'POST', '/users', { username: 'newbie', email: 'newbie@adminco.example', roles: ['viewer'] });
      expect(made.statusCode, made.body).toBe(201);
      // …but not hand out what it does not hold, on a new user or an existing one, nor to itself through a role change.
      expectProblem(await call(helpdesk, 'POST', '/users', { username: 'mole', email: 'mole@adminco.example', roles: ['account-administrator'] }), 403, 'forbidden');
      expectProblem(await call(helpdesk, 'PUT', `/users/${victim.id}/roles`, { roles: ['account-administrator'] }), 403, 'forbidden');
      expectProblem(await call(helpdesk, 'PUT', `/users/${victim.id}/roles`, { roles: ['super-user'] }), 403, 'forbidden');
      expectProblem(await call(helpdesk, 'PUT', `/users/${helpdesk.userId}/roles`, { roles: ['account-administrator'] }), 403, 'forbidden');
      expectProblem(await call(helpdesk, 'POST', '/roles', { name: 'Escalator', permissions: ['account.admin'] }), 403, 'forbidden');
      // Nor take an administrator's role away, or delete an administrator.
      expectProblem(await call(helpdesk, 'DELETE', `/users/${tenant.admin.userId}`), 403, 'forbidden');
      expect((await asAdmin('GET', `/users/${victim.id}`)).json().roles).toEqual(['viewer']);
      expect((await asAdmin('GET', '/users')).json().users.some((u: { username: string }) => u.username === 'mole')).toBe(false);
    });

    describe('least privilege on the target: an administrator with users.manage cannot act on a user holding permissions it lacks', () => {
      // Like the Helpdesk above: users.manage without account administration. Viewers are within its permissions; Account Administrators and Marketers (lists.write) are not.
      let helpdesk: SignedIn & { id: string };
      const fingerprint = (n: number) => n.toString(16).padStart(2, '0').repeat(32);
      const resetMails = async (to: string) => (await rt.mail.list(tenant.tenantId, { kind: 'auth.password-reset', limit: 1000 })).filter((m) => m.to === to).length;
      const resetRows = (userId: string) => rt.storage.tenant(tenant.tenantId).transaction(async (db) => (await db.selectFrom('password_resets').select('user_id').where('user_id', '=', userId).execute()).length);
      const lock = (userId: string) => rt.storage.tenant(tenant.tenantId).transaction((db) => db.updateTable('users').set({ locked_until: clock.now() + 3600_000, failed_attempts: 5 }).where('id', '=', userId).execute());
      /** A user created by the tenant's administrator (not signed in). */
      async function target(username: string, roles: string[], kind: 'console' | 'api' = 'console'): Promise<{ id: string; email: string }> {
        const email = `${username}@adminco.example`;
        const res = await asAdmin('POST', '/users', { username, email, fullName: `${username} Person`, kind, roles });
        expect(res.statusCode, res.body).toBe(201);
        return { id: res.json().id as string, email };
      }
      /** Successful events the helpdesk caused on a user. */
      const helpdeskEventsOn = async (userId: string) => (await types(tenant.tenantId, 1000)).filter((e) => e.resource?.id === userId && e.principal.id === helpdesk.userId && e.outcome === 'success').map((e) => e.type);

      beforeAll(async () => {
        const role = await asAdmin('POST', '/roles', { name: 'Helpdesk (targets)', permissions: ['users.read', 'users.manage', 'lists.read'] });
        expect(role.statusCode, role.body).toBe(201);
        helpdesk = await userWith('helpdesk-t', [role.json().id]);
      });

      it("refuses registering (or removing) a client certificate for an Account Administrator API user: 403, nothing registered, the administrator's own credential stays", async () => {
        const boss = await target('boss-api', ['account-administrator'], 'api');
        expectProblem(await call(helpdesk, 'POST', `/users/${boss.id}/credentials`, { kind: 'fingerprint', name: 'takeover', fingerprint: fingerprint(1) }), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}/credentials`)).json().credentials).toEqual([]);
        const real = await asAdmin('POST', `/users/${boss.id}/credentials`, { kind: 'fingerprint', name: 'real', fingerprint: fingerprint(2) });
        expect(real.statusCode, real.body).toBe(201);
        expectProblem(await call(helpdesk, 'DELETE', `/users/${boss.id}/credentials/${real.json().id}`), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}/credentials`)).json().credentials.map((c: { name: string }) => c.name)).toEqual(['real']);
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it("refuses changing an Account Administrator's email address or name: 403, both unchanged", async () => {
        const boss = await target('boss-mail', ['account-administrator']);
        expectProblem(await call(helpdesk, 'PATCH', `/users/${boss.id}`, { email: 'attacker@evil.example' }), 403, 'forbidden');
        expectProblem(await call(helpdesk, 'PATCH', `/users/${boss.id}`, { fullName: 'Taken over' }), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}`)).json()).toMatchObject({ email: boss.email, fullName: 'boss-mail Person' });
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it('refuses mailing an Account Administrator a password reset: 403, no reset link made or mailed', async () => {
        const boss = await target('boss-reset', ['account-administrator']);
        expectProblem(await call(helpdesk, 'POST', `/users/${boss.id}/password-reset`), 403, 'forbidden');
        expect(await resetMails(boss.email)).toBe(0);
        expect(await resetMails('attacker@evil.example')).toBe(0);
        expect(await resetRows(boss.id)).toBe(0);
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it('refuses suspending an Account Administrator: 403, still active', async () => {
        const boss = await target('boss-active', ['account-administrator']);
        expectProblem(await call(helpdesk, 'POST', `/users/${boss.id}/suspend`), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}`)).json().status).toBe('active');
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it('refuses activating a suspended Account Administrator: 403, still suspended', async () => {
        const boss = await target('boss-suspended', ['account-administrator']);
        expect((await asAdmin('POST', `/users/${boss.id}/suspend`)).json().status).toBe('suspended');
        expectProblem(await call(helpdesk, 'POST', `/users/${boss.id}/activate`), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}`)).json().status).toBe('suspended');
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it('refuses unlocking a locked-out Account Administrator (the lockout guards its password): 403, still locked', async () => {
        const boss = await target('boss-locked', ['account-administrator']);
        await lock(boss.id);
        expectProblem(await call(helpdesk, 'POST', `/users/${boss.id}/unlock`), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}`)).json()).toMatchObject({ status: 'active', locked: true });
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it("refuses changing an Account Administrator's organizations: 403, unchanged", async () => {
        const boss = await target('boss-orgs', ['account-administrator']);
        const org = (await asAdmin('POST', '/orgs', { name: 'Boss org' })).json();
        const inOrg = await asAdmin('PUT', `/users/${boss.id}/orgs`, { orgIds: [org.id] });
        expect(inOrg.statusCode, inOrg.body).toBe(200);
        expectProblem(await call(helpdesk, 'PUT', `/users/${boss.id}/orgs`, { orgIds: [] }), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${boss.id}`)).json().orgIds).toEqual([org.id]);
        expect(await helpdeskEventsOn(boss.id)).toEqual([]);
      });

      it("refuses the same for any role with a permission the actor lacks, not only Account Administrator (a Marketer's lists.write)", async () => {
        const marketer = await target('marketer-t', ['marketer']);
        expectProblem(await call(helpdesk, 'POST', `/users/${marketer.id}/suspend`), 403, 'forbidden');
        expectProblem(await call(helpdesk, 'PATCH', `/users/${marketer.id}`, { email: 'attacker@evil.example' }), 403, 'forbidden');
        expectProblem(await call(helpdesk, 'POST', `/users/${marketer.id}/password-reset`), 403, 'forbidden');
        expect((await asAdmin('GET', `/users/${marketer.id}`)).json()).toMatchObject({ status: 'active', email: marketer.email });
        expect(await resetMails(marketer.email)).toBe(0);
        expect(await helpdeskEventsOn(marketer.id)).toEqual([]);
      });

      it('still lets the same administrator do all of this to users within its own permissions (a Viewer, a user without roles)', async () => {
        const viewer = await target('viewer-t', ['viewer']);
        const changed = await call(helpdesk, 'PATCH', `/users/${viewer.id}`, { email: 'viewer-t-new@adminco.example', fullName: 'Viewer Renamed' });
        expect(changed.statusCode, changed.body).toBe(200);
        expect(changed.json()).toMatchObject({ email: 'viewer-t-new@adminco.example', fullName: 'Viewer Renamed' });
        const reset = await call(helpdesk, 'POST', `/users/${viewer.id}/password-reset`);
        expect(reset.statusCode, reset.body).toBe(202);
        expect(await resetMails('viewer-t-new@adminco.example')).toBe(1);
        expect((await call(helpdesk, 'POST', `/users/${viewer.id}/suspend`)).json().status).toBe('suspended');
        expect((await call(helpdesk, 'POST', `/users/${viewer.id}/activate`)).json().status).toBe('active');
        await lock(viewer.id);
        expect((await call(helpdesk, 'POST', `/users/${viewer.id}/unlock`)).json()).toMatchObject({ locked: false, lockedUntil: null });
        const org = (await asAdmin('POST', '/orgs', { name: 'Viewer org' })).json();
        expect((await call(helpdesk, 'PUT', `/users/${viewer.id}/orgs`, { orgIds: [org.id] })).json().orgIds).toEqual([org.id]);

        const robot = await target('viewer-api-t', ['viewer'], 'api');
        const added = await call(helpdesk, 'POST', `/users/${robot.id}/credentials`, { kind: 'fingerprint', name: 'robot', fingerprint: fingerprint(3) });
        expect(added.statusCode, added.body).toBe(201);
        expect((await asAdmin('GET', `/users/${robot.id}/credentials`)).json().credentials.map((c: { id: string }) => c.id)).toEqual([added.json().id]);
        expect((await call(helpdesk, 'DELETE', `/users/${robot.id}/credentials/${added.json().id}`)).statusCode).toBe(204);

        const plain = await target('plain-t', []);
        expect((await call(helpdesk, 'POST', `/users/${plain.id}/suspend`)).json().status).toBe('suspended');

        expect(await helpdeskEventsOn(viewer.id)).toEqual(expect.arrayContaining(['iam.user.update', 'auth.password.reset.request', 'iam.user.suspend', 'iam.user.activate', 'iam.user.unlock', 'iam.user.orgs']));
        expect(await helpdeskEventsOn(robot.id)).toEqual(expect.arrayContaining(['iam.user.credential.add', 'iam.user.credential.remove']));
      });
    });

    it('under organizational access control, shows an administrator only the users of its organizations (and unassigned ones)', async () => {
      const east = (await asAdmin('POST', '/orgs', { name: 'East' })).json();
      const west = (await asAdmin('POST', '/orgs', { name: 'West' })).json();
      const eastTeam = (await asAdmin('POST', '/orgs', { name: 'East team', parentId: east.id })).json();
      const role = (await asAdmin('POST', '/roles', { name: 'Org admin', permissions: ['users.read', 'users.manage', 'orgs.manage'] })).json();
      const eastAdmin = await userWith('east-admin', [role.id], { orgIds: [east.id] });
      const e1 = (await asAdmin('POST', '/users', { username: 'e1', email: 'e1@adminco.example', orgIds: [eastTeam.id] })).json();
      const w1 = (await asAdmin('POST', '/users', { username: 'w1', email: 'w1@adminco.example', orgIds: [west.id] })).json();
      // Off: everyone is visible.
      expect((await call(eastAdmin, 'GET', '/users')).json().users.map((u: { username: string }) => u.username)).toContain('w1');
      const settings = (await asAdmin('GET', '/settings/security')).json();
      expect((await asAdmin('PUT', '/settings/security', { ...settings, orgAccessControl: true })).statusCode).toBe(200);
      try {
        const seen = (await call(eastAdmin, 'GET', '/users')).json().users.map((u: { username: string }) => u.username);
        expect(seen).toEqual(expect.arrayContaining(['e1', 'east-admin', 'admin']));
        expect(seen).not.toContain('w1');
        // Pages of one: users out of reach are skipped, never counted or leaked through the cursor.
        const paged: string[] = [];
        let cursor: string | null = null;
        do {
          const page: { users: Array<{ username: string }>; nextCursor: string | null } = (await call(eastAdmin, 'GET', `/users?limit=1${cursor ? `&cursor=${cursor}` : ''}`)).json();
          paged.push(...page.users.map((u: { username: string }) => u.username));
          cursor = page.nextCursor;
        } while (cursor !== null);
        expect(paged).toEqual(seen);
        expectProblem(await call(eastAdmin, 'GET', `/users/${w1.id}`), 404, 'not_found');
        expectProblem(await call(eastAdmin, 'PATCH', `/users/${w1.id}`, { fullName: 'Taken over' }), 404, 'not_found');
        expectProblem(await call(eastAdmin, 'POST', `/users/${w1.id}/suspend`), 404, 'not_found');
        expectProblem(await call(eastAdmin, 'PUT', `/users/${e1.id}/orgs`, { orgIds: [west.id] }), 403, 'forbidden');
        expect((await call(eastAdmin, 'GET', `/users/${e1.id}`)).statusCode).toBe(200);
        expect((await call(eastAdmin, 'GET', '/orgs')).json().orgs.map((o: { name: string }) => o.name).sort()).toEqual(['East', 'East team']);
        expectProblem(await call(eastAdmin, 'DELETE', `/orgs/${west.id}`), 404, 'not_found');
      } finally {
        expect((await asAdmin('PUT', '/settings/security', { ...settings, orgAccessControl: false })).statusCode).toBe(200);
      }
      expect((await asAdmin('GET', `/users/${w1.id}`)).json().fullName).toBeNull();
    });

    it('answers 404 for unknown users and 400 for malformed ids', async () => {
      expectProblem(await asAdmin('GET', `/users/${newId()}`), 404, 'not_found');
      expectProblem(await asAdmin('GET', '/users/..%2Fadmin'), 400, 'validation_failed');
      expectProblem(await asAdmin('POST', `/users/${newId()}/unlock`), 404, 'not_found');
    });
  });

  describe('roles and organizations', () => {
    it('lists built-in and custom roles with permissions, and the catalogue', async () => {
      const perms = (await asAdmin('GET', '/permissions')).json().permissions;
      expect(perms).toContainEqual({ name: 'account.admin', description: expect.any(String) });
      const roles = (await asAdmin('GET', '/roles')).json().roles;
      expect(roles.slice(0, 5).map((r: { id: string; builtin: boolean }) => [r.id, r.builtin])).toEqual([
        ['account-administrator', true],
        ['super-user', true],
        ['data-director', true],
        ['marketer', true],
        ['viewer', true],
      ]);
      expect((await asAdmin('GET', '/roles/viewer')).json()).toMatchObject({ name: 'Viewer', permissions: ['lists.read'] });
    });

    it('creates, changes and deletes a custom role; refuses deleting one in use and changing built-in ones', async () => {
      const res = await asAdmin('POST', '/roles', { name: 'Analysts', description: 'Read-only analysts', permissions: ['lists.read', 'activity.read'] });
      expect(res.statusCode, res.body).toBe(201);
      const role = res.json();
      expectProblem(await asAdmin('POST', '/roles', { name: 'analysts', permissions: ['lists.read'] }), 409, 'conflict');
      expectProblem(await asAdmin('POST', '/roles', { name: 'Bad', permissions: ['lists.read', 'everything'] }), 400, 'validation_failed');
      expectProblem(await asAdmin('POST', '/roles', { name: 'Empty', permissions: [] }), 400, 'validation_failed');
      const changed = await asAdmin('PATCH', `/roles/${role.id}`, { permissions: ['lists.read', 'activity.read', 'keys.read'] });
      expect(changed.json().permissions).toEqual(['lists.read', 'activity.read', 'keys.read']);
      expectProblem(await asAdmin('PATCH', '/roles/viewer', { name: 'Watchers' }), 403, 'forbidden');
      expectProblem(await asAdmin('DELETE', '/roles/super-user'), 403, 'forbidden');

      const holder = await userWith('analyst', [role.id]);
      expect((await call(holder, 'GET', '/keys')).statusCode).toBe(200);
      expectProblem(await asAdmin('DELETE', `/roles/${role.id}`), 409, 'conflict');
      // Taking the permission away applies at the holder's next request.
      await asAdmin('PATCH', `/roles/${role.id}`, { permissions: ['lists.read'] });
      expectProblem(await call(holder, 'GET', '/keys'), 403, 'forbidden');
      await asAdmin('PUT', `/users/${holder.id}/roles`, { roles: [] });
      expect((await asAdmin('DELETE', `/roles/${role.id}`)).statusCode).toBe(204);
      expectProblem(await asAdmin('GET', `/roles/${role.id}`), 404, 'not_found');
    });

    it('manages the organization tree without cycles, and refuses deleting an organization in use', async () => {
      const root = (await asAdmin('POST', '/orgs', { name: 'Holding' })).json();
      const sub = await asAdmin('POST', '/orgs', { name: 'Subsidiary', parentId: root.id });
      expect(sub.statusCode, sub.body).toBe(201);
      expect(sub.json()).toMatchObject({ name: 'Subsidiary', parentId: root.id, childCount: 0, userCount: 0 });
      expectProblem(await asAdmin('PATCH', `/orgs/${root.id}`, { parentId: sub.json().id }), 400, 'validation_failed');
      expectProblem(await asAdmin('POST', '/orgs', { name: 'Orphan', parentId: newId() }), 400, 'validation_failed');
      expect((await asAdmin('PATCH', `/orgs/${sub.json().id}`, { name: 'Subsidiary SA' })).json().name).toBe('Subsidiary SA');
      expectProblem(await asAdmin('DELETE', `/orgs/${root.id}`), 409, 'conflict');
      const member = (await asAdmin('POST', '/users', { username: 'member', email: 'member@adminco.example', orgIds: [sub.json().id] })).json();
      expect((await asAdmin('GET', `/orgs/${sub.json().id}`)).json().userCount).toBe(1);
      expectProblem(await asAdmin('DELETE', `/orgs/${sub.json().id}`), 409, 'conflict');
      await asAdmin('PUT', `/users/${member.id}/orgs`, { orgIds: [] });
      expect((await asAdmin('DELETE', `/orgs/${sub.json().id}`)).statusCode).toBe(204);
      expect((await asAdmin('DELETE', `/orgs/${root.id}`)).statusCode).toBe(204);
      expectProblem(await asAdmin('GET', `/orgs/${root.id}`), 404, 'not_found');
    });
  });

  describe('security settings', () => {
    it('reads the defaults and replaces the whole document, recording before and after in the same transaction', async () => {
      const res = await asAdmin('GET', '/settings/security');
      expect(res.json()).toEqual(DEFAULT_SECURITY_SETTINGS);
      const next = { ...DEFAULT_SECURITY_SETTINGS, password: { ...DEFAULT_SECURITY_SETTINGS.password, minLength: 14, requireDigit: true }, session: { idleTimeoutMinutes: 15 }, ipAllowlist: ['127.0.0.0/8', '2001:db8::/32'] };
      const put = await asAdmin('PUT', '/settings/security', next);
      expect(put.statusCode, put.body).toBe(200);
      expect(put.json()).toEqual(next);
      expect((await asAdmin('GET', '/settings/security')).json()).toEqual(next);
      const ev = (await types()).find((e) => e.type === 'iam.settings.security.update')!;
      expect(ev.principal.id).toBe(tenant.admin.userId);
      expect(ev.change!.before).toMatchObject({ pwPolicy: { minLength: 12 }, session: { idleTimeoutMinutes: 30 }, ipAllowlist: [] });
      expect(ev.change!.after).toMatchObject({ pwPolicy: { minLength: 14, requireDigit: true }, session: { idleTimeoutMinutes: 15 }, ipAllowlist: ['127.0.0.0/8', '2001:db8::/32'] });
      expect((await asAdmin('PUT', '/settings/security', DEFAULT_SECURITY_SETTINGS)).statusCode).toBe(200);
    });

    it.each([
      ['an idle timeout of 45 minutes', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, session: { idleTimeoutMinutes: 45 } })],
      ['a minimum password length of 5', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, password: { ...s.password, minLength: 5 } })],
      ['a maximum length below the minimum', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, password: { ...s.password, minLength: 100, maxLength: 64 } })],
      ['a malformed CIDR', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, ipAllowlist: ['10.0.0.0/33'] })],
      ['a host name for a CIDR', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, ipAllowlist: ['intranet.example'] })],
      ['an allowlist that shuts out the caller', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, ipAllowlist: ['192.0.2.0/24'] })],
      ['an unknown MFA role', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, mfa: { required: 'roles', roles: ['overlord'] } })],
      ['a missing member', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, lockout: undefined })],
      ['an unknown member', (s: typeof DEFAULT_SECURITY_SETTINGS) => ({ ...s, sso: true })],
    ])('refuses %s with 400 and changes nothing', async (_what, mutate) => {
      const before = (await asAdmin('GET', '/settings/security')).json();
      const events = (await types()).length;
      expectProblem(await asAdmin('PUT', '/settings/security', JSON.parse(JSON.stringify(mutate(DEFAULT_SECURITY_SETTINGS)))), 400, 'validation_failed');
      expect((await asAdmin('GET', '/settings/security')).json()).toEqual(before);
      expect((await types()).length).toBe(events);
    });

    it('is for account administrators only', async () => {
      const su = await userWith('superuser', ['super-user']);
      expectProblem(await call(su, 'GET', '/settings/security'), 403, 'forbidden');
      expectProblem(await call(su, 'PUT', '/settings/security', DEFAULT_SECURITY_SETTINGS), 403, 'forbidden');
    });
  });

  describe('activity stream', () => {
    it('pages newest first with an opaque cursor, without gaps or repeats', async () => {
      for (let i = 0; i < 5; i++) await asAdmin('POST', '/orgs', { name: `Paged ${i}` });
      const seen: number[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 3; page++) {
        const res = await asAdmin('GET', `/activity?type=iam.org.create&limit=2${cursor ? `&cursor=${cursor}` : ''}`);
        expect(res.statusCode, res.body).toBe(200);
        const body = res.json();
        seen.push(...body.events.map((e: { seq: number }) => e.seq));
        expect(body.events.every((e: { type: string }) => e.type === 'iam.org.create')).toBe(true);
        cursor = body.nextCursor;
      }
      expect(seen).toHaveLength(6);
      expect([...seen].sort((a, b) => b - a)).toEqual(seen);
      expect(new Set(seen).size).toBe(seen.length);
      const all = (await asAdmin('GET', '/activity?type=iam.org.create&limit=1000')).json();
      expect(all.nextCursor).toBeUndefined();
      expect(all.events.slice(0, 6).map((e: { seq: number }) => e.seq)).toEqual(seen);
      expect(all.events[0].details ?? {}).toBeTypeOf('object');
      expect(all.events[0].change.after).toMatchObject({ name: 'Paged 4' });
    });

    it('filters by time, type pattern and outcome', async () => {
      const t0 = new Date(clock.now()).toISOString();
      clock.advance(1000);
      await asAdmin('POST', '/orgs', { name: 'Filtered' });
      await app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: tenant.name, username: 'admin', password: 'wrong-password-for-sure' } });
      const since = (await asAdmin('GET', `/activity?since=${encodeURIComponent(new Date(clock.now()).toISOString())}&type=iam.*`)).json().events;
      expect(since.map((e: { type: string }) => e.type)).toEqual(['iam.org.create']);
      const failures = (await asAdmin('GET', `/activity?since=${encodeURIComponent(t0)}&outcome=failure`)).json().events;
      expect(failures.length).toBeGreaterThan(0);
      expect(failures.every((e: { outcome: string }) => e.outcome === 'failure')).toBe(true);
      const until = (await asAdmin('GET', `/activity?until=${encodeURIComponent(t0)}&type=iam.org.create&limit=1000`)).json().events;
      expect(until.some((e: { change: { after: { name: string } } }) => e.change.after.name === 'Filtered')).toBe(false);
      const two = (await asAdmin('GET', '/activity?type=iam.org.create&type=auth.login.*&limit=1000')).json().events.map((e: { type: string }) => e.type);
      expect(new Set(two)).toEqual(new Set(['iam.org.create', 'auth.login.success', 'auth.login.failure']));
    });

    it.each([
      ['a malformed cursor', '/activity?cursor=not-a-cursor'],
      ['a malformed time', '/activity?since=yesterday'],
      ['an unknown outcome', '/activity?outcome=maybe'],
      ['an oversized page', '/activity?limit=5000'],
      ['a type with SQL in it', "/activity?type=x'%20OR%201=1"],
      ['an unknown format', '/activity/export?format=xml'],
      ['a malformed export time', '/activity/export?since=tomorrow'],
    ])('refuses %s with 400', async (_what, url) => {
      const before = (await rt.audit.query(tenant.tenantId, { types: ['audit.export'], limit: 1000 })).events.length;
      expectProblem(await asAdmin('GET', url), 400, 'validation_failed');
      expect((await rt.audit.query(tenant.tenantId, { types: ['audit.export'], limit: 1000 })).events).toHaveLength(before);
    });

    it('exports JSON Lines and CSV as a stream, and records each export first', async () => {
      const res = await asAdmin('GET', '/activity/export?format=jsonl&type=iam.org.*');
      expect(res.statusCode, res.body).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/x-ndjson/);
      expect(res.headers['content-disposition']).toBe('attachment; filename="activity-adminco.jsonl"');
      const lines = res.body.trimEnd().split('\n').map((l) => JSON.parse(l) as { type: string; seq: number });
      expect(lines.length).toBeGreaterThan(5);
      expect(lines.every((e: { type: string }) => e.type.startsWith('iam.org.'))).toBe(true);
      expect(lines.map((e: { seq: number }) => e.seq)).toEqual([...lines.map((e: { seq: number }) => e.seq)].sort((a, b) => a - b));
      const csv = await asAdmin('GET', '/activity/export?format=csv&type=iam.org.create');
      expect(csv.headers['content-type']).toMatch(/^text\/csv/);
      expect(csv.body.split('\r\n')[0]).toMatch(/^seq,id,time,type,outcome/);
      const exports = (await rt.audit.query(tenant.tenantId, { types: ['audit.export'], limit: 10 })).events;
      expect(exports[0]).toMatchObject({ principal: { id: tenant.admin.userId }, details: { format: 'csv', filter: { types: ['iam.org.create'] } } });
      expect(exports[1]).toMatchObject({ details: { format: 'jsonl' } });
      // Queries are not recorded.
      const n = (await rt.audit.query(tenant.tenantId, { limit: 1000 })).events.length;
      await asAdmin('GET', '/activity?limit=5');
      expect((await rt.audit.query(tenant.tenantId, { limit: 1000 })).events).toHaveLength(n);
    });

    it('needs activity.read', async () => {
      const marketer = await userWith('marketer', ['marketer']);
      expectProblem(await call(marketer, 'GET', '/activity'), 403, 'forbidden');
      expectProblem(await call(marketer, 'GET', '/activity/export?format=jsonl'), 403, 'forbidden');
    });
  });

  describe('keys', () => {
    let keyAdmin: SignedIn;
    let keyTenant: string;
    beforeAll(async () => {
      const t = await tenantWithAdmin(app, rt, 'keyco');
      keyAdmin = t.admin;
      keyTenant = t.tenantId;
    });
    const asKeyAdmin = (method: Method, url: string, payload?: unknown) => call(keyAdmin, method, url, payload);

    it('shows the ring, rotates it, and refuses what only customer-managed keys do', async () => {
      const ring = (await asKeyAdmin('GET', '/keys')).json();
      expect(ring).toMatchObject({ tenantId: keyTenant, mode: 'provider', state: 'enabled', currentVersion: 1 });
      expect(JSON.stringify(ring)).not.toMatch(/wrapped|material|private/i);
      const rotated = await asKeyAdmin('POST', '/keys/rotate');
      expect(rotated.json()).toEqual({ version: 2, rewrapped: expect.any(Number) });
      expect((await asKeyAdmin('GET', '/keys')).json().currentVersion).toBe(2);
      expectProblem(await asKeyAdmin('POST', '/keys/disable'), 409, 'conflict');
      expectProblem(await asKeyAdmin('POST', '/keys/schedule-deletion', { days: 7 }), 409, 'conflict');
      const ev = (await types(keyTenant)).find((e) => e.type === 'keys.rotate')!;
      expect(ev.principal).toMatchObject({ type: 'user', id: keyAdmin.userId });
      expect(ev.request).toMatchObject({ method: 'POST', path: '/api/v1/keys/rotate' });
    });

    it('imports customer key material, disables, enables, schedules and cancels deletion', async () => {
      const params = (await asKeyAdmin('POST', '/keys/import-params')).json();
      expect(params).toMatchObject({ wrappingAlgorithm: 'RSAES_OAEP_SHA_256', keySpec: 'AES_256' });
      expectProblem(await asKeyAdmin('POST', '/keys/import', { wrappedKeyMaterial: 'not base64!' }), 400, 'validation_failed');
      expectProblem(await asKeyAdmin('POST', '/keys/import', { wrappedKeyMaterial: randomBytes(384).toString('base64') }), 400, 'key_import_invalid');
      const wrapped = publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32));
      const imported = await asKeyAdmin('POST', '/keys/import', { wrappedKeyMaterial: wrapped.toString('base64') });
      expect(imported.statusCode, imported.body).toBe(200);
      expect((await asKeyAdmin('GET', '/keys')).json()).toMatchObject({ mode: 'customer', state: 'enabled' });
      expectProblem(await asKeyAdmin('POST', '/keys/rotate'), 409, 'conflict');

      expect((await asKeyAdmin('POST', '/keys/disable')).json().state).toBe('disabled');
      expect((await asKeyAdmin('POST', '/keys/enable')).json().state).toBe('enabled');
      expectProblem(await asKeyAdmin('POST', '/keys/schedule-deletion', { days: 3 }), 400, 'validation_failed');
      expectProblem(await asKeyAdmin('POST', '/keys/schedule-deletion', { days: 31 }), 400, 'validation_failed');
      const scheduled = (await asKeyAdmin('POST', '/keys/schedule-deletion', { days: 7 })).json();
      expect(scheduled).toMatchObject({ state: 'pending_deletion', deletionDueAt: new Date(clock.now() + 7 * 86400_000).toISOString() });
      expectProblem(await asKeyAdmin('POST', '/keys/enable'), 409, 'conflict');
      expect((await asKeyAdmin('POST', '/keys/cancel-deletion')).json()).toMatchObject({ state: 'disabled', deletionDueAt: null });
      expect((await asKeyAdmin('POST', '/keys/enable')).json().state).toBe('enabled');

      const kinds = (await types(keyTenant)).filter((e) => e.type.startsWith('keys.')).map((e) => `${e.type}:${e.outcome}`);
      expect(kinds).toEqual(
        expect.arrayContaining(['keys.import.params:success', 'keys.import:success', 'keys.import:failure', 'keys.disable:success', 'keys.enable:success', 'keys.deletion.schedule:success', 'keys.deletion.cancel:success']),
      );
      expect((await types(keyTenant)).filter((e) => e.type.startsWith('keys.')).every((e) => e.principal.id === keyAdmin.userId)).toBe(true);
    });

    it('lets keys.read see the ring but not act on it', async () => {
      const t = { tenantId: keyTenant, name: 'keyco' };
      const email = 'su@keyco.example';
      const created = await call(keyAdmin, 'POST', '/users', { username: 'su', email, roles: ['super-user'] });
      expect(created.statusCode).toBe(201);
      const su = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'su', password: temporaryPasswordFrom((await lastMail(rt, keyTenant, 'iam.user.welcome', email)).text), email });
      expect((await call(su, 'GET', '/keys')).statusCode).toBe(200);
      for (const action of ['rotate', 'import-params', 'disable', 'enable', 'cancel-deletion']) expectProblem(await call(su, 'POST', `/keys/${action}`), 403, 'forbidden');
    });
  });

  describe('alerts and webhooks', () => {
    it('creates a webhook (secret once), a rule that uses it, lists deliveries, and deletes both', async () => {
      const receiver = await startWebhookReceiver();
      try {
        const created = await asAdmin('POST', '/alerts/webhooks', { url: `${receiver.url}/hooks/T0123/s3cr3t-path`, description: 'SIEM' });
        expect(created.statusCode, created.body).toBe(201);
        const hook = created.json();
        expect(hook.secret).toMatch(/^whsec_/);
        const listed = (await asAdmin('GET', '/alerts/webhooks')).json().webhooks;
        expect(listed).toContainEqual({ id: hook.id, url: hook.url, description: 'SIEM', enabled: true, createdAt: hook.createdAt });
        expect(JSON.stringify(listed)).not.toContain(hook.secret);
        const ev = (await types()).find((e) => e.type === 'alerts.webhook.create')!;
        expect(JSON.stringify(ev)).not.toContain('s3cr3t-path');
        expect(ev.change!.after!.url).toMatch(/^hmac-sha256:/);

        const rule = await asAdmin('POST', '/alerts/rules', { name: 'New orgs', eventTypes: ['iam.org.create'], webhookIds: [hook.id], emails: ['secops@adminco.example'] });
        expect(rule.statusCode, rule.body).toBe(201);
        expect(rule.json()).toMatchObject({ name: 'New orgs', enabled: true, threshold: 1, windowSeconds: 600, webhookIds: [hook.id] });
        expect((await asAdmin('GET', `/alerts/rules/${rule.json().id}`)).json().name).toBe('New orgs');
        expect((await asAdmin('GET', '/alerts/rules')).json().rules.map((r: { id: string }) => r.id)).toContain(rule.json().id);

        await asAdmin('POST', '/orgs', { name: 'Alerting org' });
        const deliveries = (await asAdmin('GET', '/alerts/deliveries?limit=10')).json().deliveries;
        expect(deliveries[0]).toMatchObject({ endpointId: hook.id, eventType: 'alert.fired', state: 'pending', attempts: 0 });
        const firings = (await asAdmin('GET', `/alerts/rules/${rule.json().id}/firings`)).json().firings;
        expect(firings).toHaveLength(1);

        const rotated = await asAdmin('POST', `/alerts/webhooks/${hook.id}/rotate-secret`);
        expect(rotated.statusCode, rotated.body).toBe(200);
        expect(rotated.json()).toMatchObject({ id: hook.id, url: hook.url, description: 'SIEM' });
        expect(rotated.json().secret).toMatch(/^whsec_/);
        expect(rotated.json().secret).not.toBe(hook.secret);
        const rotation = (await types()).find((e) => e.type === 'alerts.webhook.secret.rotate')!;
        expect(rotation.resource).toMatchObject({ type: 'webhook', id: hook.id });
        expect(JSON.stringify(rotation)).not.toContain(rotated.json().secret);
        expectProblem(await asAdmin('POST', `/alerts/webhooks/${newId()}/rotate-secret`), 404, 'not_found');

        expect((await asAdmin('DELETE', `/alerts/rules/${rule.json().id}`)).statusCode).toBe(204);
        expectProblem(await asAdmin('GET', `/alerts/rules/${rule.json().id}`), 404, 'not_found');
        expect((await asAdmin('DELETE', `/alerts/webhooks/${hook.id}`)).statusCode).toBe(204);
        expectProblem(await asAdmin('DELETE', `/alerts/webhooks/${hook.id}`), 404, 'not_found');
        expect((await asAdmin('GET', '/alerts/deliveries')).json().deliveries.find((d: { id: string }) => d.id === deliveries[0].id)).toMatchObject({ state: 'failed', lastError: 'endpoint deleted' });
        expect((await types()).map((e) => e.type)).toEqual(expect.arrayContaining(['alerts.rule.create', 'alerts.rule.delete', 'alerts.webhook.delete']));
      } finally {
        await receiver.close();
      }
    });

    it('replaces a rule: a paused rule does not fire, a resumed one does with its new threshold; names stay unique; recorded with before and after', async () => {
      const rule = (await asAdmin('POST', '/alerts/rules', { name: 'Org churn', eventTypes: ['iam.org.create'], emails: ['secops@adminco.example'] })).json();
      const other = (await asAdmin('POST', '/alerts/rules', { name: 'Other rule', eventTypes: ['matrix.never'], emails: ['secops@adminco.example'] })).json();
      const firings = async () => (await asAdmin('GET', `/alerts/rules/${rule.id}/firings`)).json().firings.length as number;

      const paused = await asAdmin('PUT', `/alerts/rules/${rule.id}`, { name: 'Org churn', eventTypes: ['iam.org.create'], emails: ['secops@adminco.example'], enabled: false });
      expect(paused.statusCode, paused.body).toBe(200);
      expect(paused.json()).toMatchObject({ id: rule.id, enabled: false, createdAt: rule.createdAt });
      await asAdmin('POST', '/orgs', { name: 'Churn org 1' });
      expect(await firings()).toBe(0);

      const resumed = await asAdmin('PUT', `/alerts/rules/${rule.id}`, { name: 'Org churn (2 in 10 min)', eventTypes: ['iam.org.create'], emails: ['secops@adminco.example'], threshold: 2, windowSeconds: 600 });
      expect(resumed.json()).toMatchObject({ id: rule.id, name: 'Org churn (2 in 10 min)', enabled: true, threshold: 2 });
      expect((await asAdmin('GET', `/alerts/rules/${rule.id}`)).json()).toEqual(resumed.json());
      await asAdmin('POST', '/orgs', { name: 'Churn org 2' });
      // The org created while paused is in the window: two in ten minutes, so this one fires.
      expect(await firings()).toBe(1);

      expectProblem(await asAdmin('PUT', `/alerts/rules/${other.id}`, { name: 'Org churn (2 in 10 min)', eventTypes: ['matrix.never'], emails: ['secops@adminco.example'] }), 409, 'conflict');
      expectProblem(await asAdmin('PUT', `/alerts/rules/${other.id}`, { name: 'No recipients', eventTypes: ['matrix.never'] }), 400, 'validation_failed');
      expectProblem(await asAdmin('PUT', `/alerts/rules/${newId()}`, { name: 'Ghost', eventTypes: ['matrix.never'], emails: ['secops@adminco.example'] }), 404, 'not_found');
      const updates = (await types()).filter((e) => e.type === 'alerts.rule.update' && e.resource?.id === rule.id);
      expect(updates).toHaveLength(2);
      expect(updates.some((e) => e.change?.before?.enabled === false && e.change?.after?.enabled === true)).toBe(true);
      expect(JSON.stringify(updates)).not.toContain('secops@adminco.example');
      await asAdmin('DELETE', `/alerts/rules/${rule.id}`);
      await asAdmin('DELETE', `/alerts/rules/${other.id}`);
    });

    it.each([
      ['a plain-http webhook to another host', 'POST', '/alerts/webhooks', { url: 'http://hooks.example.com/x' }],
      ['a webhook URL with credentials', 'POST', '/alerts/webhooks', { url: 'https://user:pw@hooks.example.com/x' }],
      ['a rule without recipients', 'POST', '/alerts/rules', { name: 'Nobody', eventTypes: ['auth.*'] }],
      ['a rule naming an unknown webhook', 'POST', '/alerts/rules', { name: 'Ghost', eventTypes: ['auth.*'], webhookIds: [newId()] }],
      ['a rule with a bad pattern', 'POST', '/alerts/rules', { name: 'Bad', eventTypes: ['AUTH LOGIN'], emails: ['a@adminco.example'] }],
      ['a rule with a bad email', 'POST', '/alerts/rules', { name: 'Bad mail', eventTypes: ['auth.*'], emails: ['nobody'] }],
    ])('refuses %s with 400', async (_what, method, url, body) => {
      expectProblem(await asAdmin(method as Method, url, body), 400, 'validation_failed');
    });

    it('needs alerts.manage', async () => {
      const dd = await userWith('director', ['data-director']);
      expectProblem(await call(dd, 'GET', '/alerts/rules'), 403, 'forbidden');
      expectProblem(await call(dd, 'POST', '/alerts/webhooks', { url: 'https://hooks.example.com/x' }), 403, 'forbidden');
      expectProblem(await call(dd, 'POST', `/alerts/webhooks/${newId()}/rotate-secret`), 403, 'forbidden');
    });
  });

  describe('OpenAPI', () => {
    it('documents request and response schemas and the permission of every administration route', async () => {
      const doc = (await app.inject('/api/openapi.json')).json();
      const admin = Object.entries<Record<string, Record<string, unknown>>>(doc.paths)
        .flatMap(([path, ops]) => Object.entries(ops).map(([method, op]) => ({ path, method, op })))
        .filter((o) => /^\/api\/v1\/(users|roles|permissions|orgs|settings|activity|keys|alerts)\b/.test(o.path) && !o.path.includes('/credentials'));
      expect(admin.length).toBeGreaterThanOrEqual(43);
      for (const { path, method, op } of admin) {
        const label = `${method} ${path}`;
        expect(op['x-custos-permission'], label).toEqual(expect.any(String));
        expect(op.security, label).toEqual([{ session: [] }, { bearer: [] }]);
        const responses = op.responses as Record<string, { content?: unknown }>;
        const ok = Object.keys(responses).find((s) => s.startsWith('2'))!;
        expect(ok, label).toBeDefined();
        if (ok !== '204' && ok !== '202') expect(responses[ok]!.content, label).toBeDefined();
        expect(responses['403'], label).toBeDefined();
        if (['post', 'put', 'patch'].includes(method) && !/\/(suspend|activate|unlock|password-reset|rotate|rotate-secret|import-params|disable|enable|cancel-deletion)$/.test(path)) {
          expect((op.requestBody as { content?: unknown } | undefined)?.content, label).toBeDefined();
        }
      }
    });
  });
});
