import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { generate } from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/logger.js';
import { startServer, type RunningServer } from '../../src/http/server.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { expectProblem } from '../helpers/app.js';
import { authFromCookie, createUser, signIn, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

const DAY = 24 * 3600 * 1000;

interface Pem {
  cert: string;
  key: string;
}

/** A CA certificate (ECDSA P-256, SHA-256), self-signed unless `issuer` is given (then an intermediate). */
async function makeCa(cn: string, issuer?: Pem): Promise<Pem> {
  const now = Date.now();
  const r = await generate([{ name: 'commonName', value: cn }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now - DAY),
    notAfterDate: new Date(now + 365 * DAY),
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
    ...(issuer ? { ca: issuer } : {}),
  });
  return { cert: r.cert, key: r.private };
}

/** A client certificate issued by `issuer` (self-signed without one). */
async function makeClient(cn: string, issuer: Pem | undefined, opts: { from?: number; to?: number; serverAuthOnly?: boolean } = {}): Promise<Pem> {
  const now = Date.now();
  const r = await generate([{ name: 'commonName', value: cn }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(opts.from ?? now - DAY),
    notAfterDate: new Date(opts.to ?? now + 30 * DAY),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true },
      opts.serverAuthOnly ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
    ],
    ...(issuer ? { ca: issuer } : {}),
  });
  return { cert: r.cert, key: r.private };
}

/** PEM certificates one after another (leaf first), as a client sends its chain. */
function chain(...pems: Pem[]): string {
  return pems.map((p) => `${p.cert.trim()}\n`).join('');
}

interface Answer {
  status: number;
  body: Record<string, any>;
}

/** One HTTPS request on a fresh connection, presenting `client` (certificate chain PEM and key) if given. */
function call(server: RunningServer, ca: Buffer, opts: { method?: string; path: string; body?: unknown; bearer?: string; client?: { cert: string; key: string } }): Promise<Answer> {
  const url = new URL(server.url);
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: url.hostname,
        port: url.port,
        path: opts.path,
        method: opts.method ?? 'GET',
        ca,
        agent: false,
        ...(opts.client ? { cert: opts.client.cert, key: opts.client.key } : {}),
        headers: {
          ...(payload ? { 'content-type': 'application/json' } : {}),
          ...(opts.bearer ? { authorization: `Bearer ${opts.bearer}` } : {}),
        },
      },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, any>) : {} }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

describeEachStorage('API users with client certificates', (kind) => {
  let env: TestEnv;
  let rt: Runtime;
  let server: RunningServer;
  let serverCa: Buffer;
  let a: { tenantId: string; name: string; admin: SignedIn };
  let b: { tenantId: string; name: string; admin: SignedIn };
  let robot: { id: string; temporaryPassword: string };
  let robotB: { id: string };
  let clerk: { id: string };

  // Trust material: the tenant's CA and an intermediate under it; an unrelated CA; an impostor CA with the same name.
  let rootCa: Pem;
  let intermediate: Pem;
  let otherCa: Pem;
  let impostorCa: Pem;
  let viaCa: Pem;
  let viaIntermediate: Pem;
  let pinned: Pem;

  beforeAll(async () => {
    env = await makeTestEnv(kind, { CUSTOS_PORT: '0' });
    rt = await openRuntime(loadConfig({ env: env.env }).config, { logger: createLogger('silent'), migrateTenants: true });
    server = await startServer(rt);
    serverCa = readFileSync(env.config.tlsCert);
    a = await tenantWithAdmin(server.app, rt, 'certs-a');
    b = await tenantWithAdmin(server.app, rt, 'certs-b');
    robot = await createUser(rt, a, a.admin.cookie, { username: 'robot', kind: 'api', roles: ['viewer'] });
    clerk = await createUser(rt, a, a.admin.cookie, { username: 'clerk', kind: 'console', roles: ['viewer'] });
    robotB = await createUser(rt, b, b.admin.cookie, { username: 'robot', kind: 'api', roles: ['viewer'] });

    rootCa = await makeCa('Robot Issuing CA');
    intermediate = await makeCa('Robot Intermediate CA', rootCa);
    otherCa = await makeCa('Some Other CA');
    impostorCa = await makeCa('Robot Issuing CA');
    viaCa = await makeClient('robot.example', rootCa);
    viaIntermediate = await makeClient('robot-2.example', intermediate);
    pinned = await makeClient('pinned-robot.example', undefined);

    // Tenant A's robot trusts the root CA and one pinned certificate; tenant B's robot trusts the other CA.
    for (const [t, user, body] of [
      [a, robot.id, { kind: 'ca', name: 'issuing CA', certificate: rootCa.cert }],
      [a, robot.id, { kind: 'fingerprint', name: 'pinned', fingerprint: new X509Certificate(pinned.cert).fingerprint256 }],
      [b, robotB.id, { kind: 'ca', name: 'other CA', certificate: otherCa.cert }],
    ] as const) {
      const res = await server.app.inject({ method: 'POST', url: `/api/v1/users/${user}/credentials`, headers: t.admin.headers, payload: body });
      expect(res.statusCode, res.body).toBe(201);
    }
  });
  afterAll(async () => {
    await server.stop();
    await env.cleanup();
  });

  const token = (client: Pem | { cert: string; key: string } | undefined, tenant = 'certs-a', username = 'robot') =>
    call(server, serverCa, { method: 'POST', path: '/api/v1/auth/token', body: { tenant, username }, client });
  const lastEvent = async (tenantId: string, type: string) => (await rt.audit.query(tenantId, { limit: 1, types: [type] })).events[0]!;
  const expectRefused = async (res: Answer, tenantId: string, reason: string) => {
    expect(res.status, JSON.stringify(res.body)).toBe(401);
    expect(res.body).toMatchObject({ code: 'invalid_credentials' });
    expect(res.body).not.toHaveProperty('accessToken');
    const ev = await lastEvent(tenantId, 'auth.token.failure');
    expect(ev).toMatchObject({ outcome: 'failure', code: 'invalid_credentials', details: { method: 'certificate', reason } });
  };

  describe('token issuance', () => {
    it('ASVS 12.1.3: a certificate issued by a registered CA gets a 1-hour token, and the token works on GET /me with the user\'s roles', async () => {
      const res = await token(viaCa);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect(res.body).toMatchObject({ status: 'ok', tokenType: 'Bearer', expiresIn: 3600 });
      const me = await call(server, serverCa, { path: '/api/v1/me', bearer: res.body.accessToken });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ username: 'robot', kind: 'api', tenant: 'certs-a', roles: ['viewer'], permissions: ['lists.read'], via: 'token' });
      const ev = await lastEvent(a.tenantId, 'auth.token.issue');
      expect(ev).toMatchObject({ outcome: 'success', principal: { type: 'api-user', id: robot.id }, details: { method: 'certificate' } });
      const sessions = await call(server, serverCa, { path: '/api/v1/me/sessions', bearer: res.body.accessToken });
      expect((sessions.body.sessions as { current: boolean }[]).find((s) => s.current)).toMatchObject({ kind: 'api', authMethod: 'certificate' });
    });

    it('ASVS 12.1.3: roles apply to a certificate-authenticated API user as to any user (a viewer may not manage users)', async () => {
      const { body } = await token(viaCa);
      const res = await call(server, serverCa, { path: `/api/v1/users/${robot.id}/credentials`, bearer: body.accessToken });
      expect(res.status).toBe(403);
      expect(res.body).toMatchObject({ code: 'forbidden' });
    });

    it('ASVS 12.1.3: a certificate chaining to a registered CA through an intermediate the client sends is accepted', async () => {
      const res = await token({ cert: chain(viaIntermediate, intermediate), key: viaIntermediate.key });
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect((await call(server, serverCa, { path: '/api/v1/me', bearer: res.body.accessToken })).status).toBe(200);
    });

    it('ASVS 12.1.3: the same certificate without its intermediate is refused (names alone never link a chain)', async () => {
      await expectRefused(await token(viaIntermediate), a.tenantId, 'certificate_untrusted');
    });

    it('ASVS 12.1.3: a certificate matching a pinned SHA-256 fingerprint gets a token', async () => {
      const res = await token(pinned);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      expect((await call(server, serverCa, { path: '/api/v1/me', bearer: res.body.accessToken })).body).toMatchObject({ username: 'robot' });
    });

    it('ASVS 12.1.3: an expired certificate from the registered CA is refused', async () => {
      const expired = await makeClient('robot.example', rootCa, { from: Date.now() - 10 * DAY, to: Date.now() - DAY });
      await expectRefused(await token(expired), a.tenantId, 'certificate_expired');
    });

    it('ASVS 12.1.3: a not-yet-valid certificate from the registered CA is refused', async () => {
      const future = await makeClient('robot.example', rootCa, { from: Date.now() + DAY, to: Date.now() + 10 * DAY });
      await expectRefused(await token(future), a.tenantId, 'certificate_not_yet_valid');
    });

    it('ASVS 12.1.3: an expired pinned certificate is refused although its fingerprint is registered', async () => {
      const old = await makeClient('old-pinned.example', undefined, { from: Date.now() - 10 * DAY, to: Date.now() - DAY });
      const add = await server.app.inject({ method: 'POST', url: `/api/v1/users/${robot.id}/credentials`, headers: a.admin.headers, payload: { kind: 'fingerprint', name: 'old', fingerprint: new X509Certificate(old.cert).fingerprint256.replace(/:/g, '').toLowerCase() } });
      expect(add.statusCode, add.body).toBe(201);
      await expectRefused(await token(old), a.tenantId, 'certificate_expired');
      await server.app.inject({ method: 'DELETE', url: `/api/v1/users/${robot.id}/credentials/${add.json().id}`, headers: a.admin.headers });
    });

    it('ASVS 12.1.3: a certificate from another CA is refused', async () => {
      await expectRefused(await token(await makeClient('robot.example', otherCa)), a.tenantId, 'certificate_untrusted');
    });

    it('ASVS 12.1.3: a certificate from an impostor CA with the same name as the registered one is refused (signature checked)', async () => {
      const forged = await makeClient('robot.example', impostorCa);
      // Same issuer name as a genuine certificate: only the signature tells them apart.
      expect(new X509Certificate(forged.cert).issuer).toBe(new X509Certificate(viaCa.cert).issuer);
      await expectRefused(await token(forged), a.tenantId, 'certificate_untrusted');
      await expectRefused(await token({ cert: chain(forged, impostorCa), key: forged.key }), a.tenantId, 'certificate_untrusted');
    });

    it('ASVS 12.1.3: a self-signed certificate with the same subject as a genuine one is refused', async () => {
      const selfSigned = await makeClient('robot.example', undefined);
      expect(new X509Certificate(selfSigned.cert).subject).toBe(new X509Certificate(viaCa.cert).subject);
      await expectRefused(await token(selfSigned), a.tenantId, 'certificate_untrusted');
    });

    it('ASVS 12.1.3: a certificate whose extended key usage excludes client authentication is refused', async () => {
      await expectRefused(await token(await makeClient('robot.example', rootCa, { serverAuthOnly: true })), a.tenantId, 'certificate_not_for_client_auth');
    });

    it('ASVS 12.1.3: a console user cannot get a token with a certificate', async () => {
      await expectRefused(await token(viaCa, 'certs-a', 'clerk'), a.tenantId, 'wrong_user_kind');
      const add = await server.app.inject({ method: 'POST', url: `/api/v1/users/${clerk.id}/credentials`, headers: a.admin.headers, payload: { kind: 'ca', name: 'x', certificate: rootCa.cert } });
      expectProblem(add, 409, 'conflict');
    });

    it("ASVS 12.1.3: a certificate registered in one tenant does not authenticate another tenant's API user of the same name", async () => {
      await expectRefused(await token(viaCa, 'certs-b'), b.tenantId, 'certificate_untrusted');
      // And tenant B's own CA works for tenant B only.
      const bClient = await makeClient('robot-b.example', otherCa);
      expect((await token(bClient, 'certs-b')).status).toBe(200);
      await expectRefused(await token(bClient, 'certs-a'), a.tenantId, 'certificate_untrusted');
    });

    it('ASVS 12.1.3: another API user of the same tenant cannot use a certificate registered to the robot', async () => {
      await createUser(rt, a, a.admin.cookie, { username: 'robot-two', kind: 'api', roles: ['viewer'] });
      await expectRefused(await token(viaCa, 'certs-a', 'robot-two'), a.tenantId, 'no_registered_credentials');
    });

    it('ASVS 12.1.3: no certificate, or an unknown user, is refused the same way', async () => {
      await expectRefused(await token(undefined), a.tenantId, 'no_certificate');
      await expectRefused(await token(viaCa, 'certs-a', 'nobody'), a.tenantId, 'unknown_user');
    });

    it('ASVS 12.1.3: inject() has no TLS peer, so no certificate: refused', async () => {
      const res = await server.app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: 'certs-a', username: 'robot' } });
      expectProblem(res, 401, 'invalid_credentials');
    });
  });

  describe('lockout and suspension', () => {
    it('ASVS 12.1.3: certificate failures do not count toward the password lockout', async () => {
      const before = await rt.storage.tenant(a.tenantId).transaction((db) => db.selectFrom('users').select('failed_attempts').where('id', '=', robot.id).executeTakeFirstOrThrow());
      const forged = await makeClient('robot.example', impostorCa);
      for (let i = 0; i < 6; i++) expect((await token(forged)).status).toBe(401);
      const after = await rt.storage.tenant(a.tenantId).transaction((db) => db.selectFrom('users').select(['failed_attempts', 'locked_until']).where('id', '=', robot.id).executeTakeFirstOrThrow());
      expect(after).toEqual({ failed_attempts: before.failed_attempts, locked_until: null });
      expect((await token(viaCa)).status).toBe(200);
    });

    it('ASVS 12.1.3: a locked account is refused by certificate too, and a certificate sign-in does not reset the password failure count', async () => {
      const state = () => rt.storage.tenant(a.tenantId).transaction((db) => db.selectFrom('users').select(['failed_attempts', 'locked_until']).where('id', '=', robot.id).executeTakeFirstOrThrow());
      const wrongPassword = () => call(server, serverCa, { method: 'POST', path: '/api/v1/auth/token', body: { tenant: 'certs-a', username: 'robot', password: 'wrong-password-123' } });
      for (let i = 0; i < 3; i++) expect((await wrongPassword()).status).toBe(401);
      expect((await token(viaCa)).status).toBe(200);
      // The three password failures still count: a certificate proves nothing about the password.
      expect(await state()).toEqual({ failed_attempts: 3, locked_until: null });
      for (let i = 0; i < 2; i++) expect((await wrongPassword()).status).toBe(401);
      const locked = await state();
      expect(locked.failed_attempts).toBe(5);
      expect(locked.locked_until).not.toBeNull();
      await expectRefused(await token(viaCa), a.tenantId, 'locked');
      expect(await state()).toEqual(locked);
      // An administrator unlocks: the certificate works again.
      await rt.users.unlock(await authFromCookie(rt, a.tenantId, a.admin.cookie), a.tenantId, robot.id);
      expect((await token(viaCa)).status).toBe(200);
    });

    it('ASVS 12.1.3: a suspended API user gets no token, and its certificate token ends at once', async () => {
      const user = await createUser(rt, a, a.admin.cookie, { username: 'robot-s', kind: 'api', roles: ['viewer'] });
      const add = await server.app.inject({ method: 'POST', url: `/api/v1/users/${user.id}/credentials`, headers: a.admin.headers, payload: { kind: 'ca', name: 'issuing CA', certificate: rootCa.cert } });
      expect(add.statusCode).toBe(201);
      const issued = await token(viaCa, 'certs-a', 'robot-s');
      expect(issued.status).toBe(200);
      const auth = await authFromCookie(rt, a.tenantId, a.admin.cookie);
      await rt.users.suspend(auth, a.tenantId, user.id);
      expect((await call(server, serverCa, { path: '/api/v1/me', bearer: issued.body.accessToken })).status).toBe(401);
      await expectRefused(await token(viaCa, 'certs-a', 'robot-s'), a.tenantId, 'suspended');
    });
  });

  describe('registration (administrators)', () => {
    const url = () => `/api/v1/users/${robot.id}/credentials`;

    it('lists credentials with public data only, and records additions', async () => {
      const res = await server.app.inject({ url: url(), headers: { cookie: a.admin.cookie } });
      expect(res.statusCode).toBe(200);
      const list = res.json().credentials;
      expect(list).toHaveLength(2);
      const root = new X509Certificate(rootCa.cert);
      expect(list[0]).toMatchObject({ kind: 'ca', name: 'issuing CA', fingerprint: root.fingerprint256, subject: 'CN=Robot Issuing CA', notAfter: root.validToDate.toISOString() });
      expect(list[1]).toMatchObject({ kind: 'fingerprint', name: 'pinned', fingerprint: new X509Certificate(pinned.cert).fingerprint256, subject: null });
      const events = (await rt.audit.query(a.tenantId, { limit: 100, types: ['iam.user.credential.add'] })).events;
      expect(events.some((e) => e.resource?.id === robot.id && e.details?.fingerprint === root.fingerprint256 && e.principal.type === 'user')).toBe(true);
    });

    it('refuses malformed, non-CA, multiple and duplicate certificates, bad fingerprints, and unknown users', async () => {
      const post = (payload: unknown, id = robot.id) => server.app.inject({ method: 'POST', url: `/api/v1/users/${id}/credentials`, headers: a.admin.headers, payload: payload as Record<string, unknown> });
      expectProblem(await post({ kind: 'ca', name: 'x', certificate: 'not a certificate' }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'ca', name: 'x', certificate: viaCa.cert }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'ca', name: 'x', certificate: chain(rootCa, otherCa) }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'ca', name: 'again', certificate: rootCa.cert }), 409, 'conflict');
      expectProblem(await post({ kind: 'fingerprint', name: 'x', fingerprint: 'zz'.repeat(32) }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'fingerprint', name: 'x', fingerprint: 'ab'.repeat(31) }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'password', name: 'x', value: 'y' }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'ca', name: 'x', certificate: rootCa.cert, extra: 1 }), 400, 'validation_failed');
      expectProblem(await post({ kind: 'ca', name: 'x', certificate: otherCa.cert }, '0'.repeat(26)), 404, 'not_found');
    });

    it('needs users.manage, and an administrator of another tenant reaches nothing', async () => {
      const viewer = await createUser(rt, a, a.admin.cookie, { username: 'viewer-c', roles: ['viewer'] });
      const v = await signIn(server.app, rt, { tenant: 'certs-a', tenantId: a.tenantId, username: 'viewer-c', password: viewer.temporaryPassword, email: viewer.email });
      expectProblem(await server.app.inject({ url: url(), headers: { cookie: v.cookie } }), 403, 'forbidden');
      expectProblem(await server.app.inject({ method: 'POST', url: url(), headers: v.headers, payload: { kind: 'ca', name: 'x', certificate: otherCa.cert } }), 403, 'forbidden');
      // Tenant B's administrator names tenant A's user id: its own store has no such user.
      expectProblem(await server.app.inject({ url: url(), headers: { cookie: b.admin.cookie } }), 404, 'not_found');
      // Without the CSRF token a cookie-authenticated change is refused.
      expectProblem(await server.app.inject({ method: 'POST', url: url(), headers: { cookie: a.admin.cookie }, payload: { kind: 'ca', name: 'x', certificate: otherCa.cert } }), 403, 'csrf_invalid');
    });

    it('removing a credential stops it working, ends the tokens obtained by certificate, and is recorded', async () => {
      const add = await server.app.inject({ method: 'POST', url: url(), headers: a.admin.headers, payload: { kind: 'ca', name: 'intermediate', certificate: intermediate.cert } });
      expect(add.statusCode, add.body).toBe(201);
      const viaInt = await token(viaIntermediate);
      expect(viaInt.status).toBe(200);
      const del = await server.app.inject({ method: 'DELETE', url: `${url()}/${add.json().id}`, headers: a.admin.headers });
      expect(del.statusCode, del.body).toBe(204);
      expect((await call(server, serverCa, { path: '/api/v1/me', bearer: viaInt.body.accessToken })).status).toBe(401);
      await expectRefused(await token(viaIntermediate), a.tenantId, 'certificate_untrusted');
      const ev = await lastEvent(a.tenantId, 'iam.user.credential.remove');
      expect(ev).toMatchObject({ outcome: 'success', resource: { id: robot.id }, details: { anchorId: add.json().id, kind: 'ca' } });
      expect(ev.details!.endedSessions).toBeGreaterThanOrEqual(1);
      expectProblem(await server.app.inject({ method: 'DELETE', url: `${url()}/${add.json().id}`, headers: a.admin.headers }), 404, 'not_found');
    });
  });
});
