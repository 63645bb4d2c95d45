import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

describeEachStorage('http app', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    await rt.tenants.create({ name: 'acme', edition: 'enterprise', adminEmail: 'ops@acme.example' }, TEST_OPERATOR);
    await rt.tenants.create({ name: 'frozen', edition: 'standard', adminEmail: 'ops@frozen.example' }, TEST_OPERATOR);
    await rt.tenants.suspend('frozen', TEST_OPERATOR);
    app = await makeApp(rt, (a) => {
      a.post(
        '/test/echo',
        { schema: { body: Type.Object({ n: Type.Integer(), s: Type.Optional(Type.String({ maxLength: 10 })) }, { additionalProperties: false }) } },
        async (request) => request.body,
      );
      a.get('/test/boom', async () => {
        throw new Error('SELECT secret FROM t_x.users -- internal detail');
      });
    });
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  describe('operations endpoints', () => {
    it('answers /healthz and /readyz', async () => {
      expect((await app.inject('/healthz')).json()).toEqual({ status: 'ok' });
      const ready = await app.inject('/readyz');
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({ status: 'ready' });
    });

    it('serves Prometheus metrics that count requests by route', async () => {
      await app.inject('/api/v1/auth/options?tenant=acme');
      const res = await app.inject('/metrics');
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      expect(res.body).toContain('# TYPE custos_http_requests_total counter');
      expect(res.body).toMatch(/custos_http_requests_total\{method="GET",route="\/api\/v1\/auth\/options",status="200"\} \d+/);
      expect(res.body).toContain('custos_process_cpu_seconds_total');
    });

    it('serves an OpenAPI 3.1 document generated from the route schemas, and its viewer', async () => {
      const doc = (await app.inject('/api/openapi.json')).json();
      expect(doc.openapi).toBe('3.1.0');
      const op = doc.paths['/api/v1/auth/options'].get;
      expect(op.parameters).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'tenant', in: 'query', required: true })]));
      expect(op.responses['200']).toBeDefined();
      expect(op.responses['403']).toBeDefined();
      expect(doc.components.schemas.Problem).toBeDefined();
      const ui = await app.inject('/api/docs/');
      expect([200, 302]).toContain(ui.statusCode);
      const page = ui.statusCode === 302 ? await app.inject(ui.headers.location as string) : ui;
      expect(page.body).toMatch(/swagger/i);
    });
  });

  describe('security headers', () => {
    it('sets HSTS, CSP, nosniff, frame-deny and a request id on every answer', async () => {
      for (const url of ['/healthz', '/nope', '/api/v1/auth/options?tenant=acme']) {
        const res = await app.inject(url);
        expect(res.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
        expect(res.headers['content-security-policy']).toContain("default-src 'self'");
        expect(res.headers['content-security-policy']).toContain("frame-ancestors 'none'");
        expect(res.headers['x-content-type-options']).toBe('nosniff');
        expect(res.headers['x-frame-options']).toBe('DENY');
        expect(res.headers['x-request-id']).toMatch(/^[0-9A-Z]{26}$/);
      }
    });

    it('keeps a sane caller request id and replaces a hostile one', async () => {
      expect((await app.inject({ url: '/healthz', headers: { 'x-request-id': 'abc-123' } })).headers['x-request-id']).toBe('abc-123');
      expect((await app.inject({ url: '/healthz', headers: { 'x-request-id': 'a\u0000b<script>' } })).headers['x-request-id']).toMatch(/^[0-9A-Z]{26}$/);
    });

    it('marks API answers no-store', async () => {
      expect((await app.inject('/api/v1/auth/options?tenant=acme')).headers['cache-control']).toBe('no-store');
    });
  });

  describe('errors are problem documents', () => {
    it('answers unknown routes with 404 not_found', async () => {
      expectProblem(await app.inject('/api/v1/does-not-exist'), 404, 'not_found');
    });

    it.each([
      ['malformed JSON', '{"n": 1', 'application/json', 400, 'bad_request'],
      ['empty JSON body', '', 'application/json', 400, 'bad_request'],
      ['JSON of the wrong type', '"text"', 'application/json', 400, 'validation_failed'],
      ['a missing field', '{}', 'application/json', 400, 'validation_failed'],
      ['an extra field', '{"n":1,"admin":true}', 'application/json', 400, 'validation_failed'],
      ['a wrongly typed field', '{"n":"one"}', 'application/json', 400, 'validation_failed'],
      ['a too long string', '{"n":1,"s":"12345678901"}', 'application/json', 400, 'validation_failed'],
      ['prototype pollution', '{"n":1,"__proto__":{"admin":true}}', 'application/json', 400, 'bad_request'],
      ['a non-JSON content type', 'n=1', 'application/x-www-form-urlencoded', 415, 'unsupported_media_type'],
      ['a body over the limit', `{"n":1,"s":"${'x'.repeat(2 * 1024 * 1024)}"}`, 'application/json', 413, 'payload_too_large'],
    ])('answers %s with a 4xx problem, never 500', async (_what, payload, contentType, status, code) => {
      const res = await app.inject({ method: 'POST', url: '/test/echo', payload, headers: { 'content-type': contentType } });
      expectProblem(res, status, code);
    });

    it('lists each validation problem', async () => {
      const body = expectProblem(await app.inject({ method: 'POST', url: '/test/echo', payload: { n: 'x' } }), 400, 'validation_failed');
      expect(body.errors).toEqual([expect.objectContaining({ location: 'body', path: '/n' })]);
    });

    it('hides the cause of unexpected failures', async () => {
      const res = await app.inject('/test/boom');
      const body = expectProblem(res, 500, 'internal_error');
      expect(res.body).not.toMatch(/SELECT|secret|t_x|stack/i);
      expect(body.requestId).toBe(res.headers['x-request-id']);
    });

    it('answers malformed bodies on every documented route with 4xx, never 500', async () => {
      const doc = (await app.inject('/api/openapi.json')).json();
      for (const [url, ops] of Object.entries<Record<string, unknown>>(doc.paths)) {
        for (const method of Object.keys(ops)) {
          if (!['post', 'put', 'patch'].includes(method)) continue;
          const concrete = url.replace(/\{[^}]+\}/g, '01m83t02vn5gp4qgm7gdvv4mnn');
          for (const payload of ['{"broken', '[]', 'null', '"x"', JSON.stringify({ a: { b: { c: { d: [1, 2, { e: null }] } } } })]) {
            const res = await app.inject({ method: method.toUpperCase() as 'POST', url: concrete, payload, headers: { 'content-type': 'application/json' } });
            expect(res.statusCode, `${method} ${url} ${payload}`).toBeGreaterThanOrEqual(400);
            expect(res.statusCode, `${method} ${url} ${payload}`).toBeLessThan(500);
            expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
          }
        }
      }
    });
  });

  describe('tenant binding', () => {
    it('binds a pre-authentication route to the named tenant', async () => {
      const res = await app.inject('/api/v1/auth/options?tenant=acme');
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({ tenant: 'acme', methods: ['password'] });
    });

    it('answers a suspended tenant with 403 tenant_suspended', async () => {
      expectProblem(await app.inject('/api/v1/auth/options?tenant=frozen'), 403, 'tenant_suspended');
    });

    it('answers an unknown tenant with 404 tenant_not_found and a malformed name with 400', async () => {
      expectProblem(await app.inject('/api/v1/auth/options?tenant=nobody'), 404, 'tenant_not_found');
      expectProblem(await app.inject('/api/v1/auth/options?tenant=..%2F..%2Fetc'), 400, 'validation_failed');
      expectProblem(await app.inject('/api/v1/auth/options'), 400, 'validation_failed');
    });

    it('follows suspension and resumption within the cache lifetime', async () => {
      expect((await app.inject('/api/v1/auth/options?tenant=acme')).statusCode).toBe(200);
      await rt.tenants.suspend('acme', TEST_OPERATOR);
      clock.advance(1001);
      expectProblem(await app.inject('/api/v1/auth/options?tenant=acme'), 403, 'tenant_suspended');
      await rt.tenants.resume('acme', TEST_OPERATOR);
      clock.advance(1001);
      expect((await app.inject('/api/v1/auth/options?tenant=acme')).statusCode).toBe(200);
    });

    it('refuses, at startup, a tenant route that declares no binding rule', async () => {
      const { registerTenantBinding } = await import('../../src/http/plugins/tenant-binding.js');
      const Fastify = (await import('fastify')).default;
      const bare = Fastify();
      await expect(
        bare
          .register(async (scope) => {
            registerTenantBinding(scope, { tenants: rt.tenants, storage: rt.storage, clock: rt.clock, sessions: rt.sessions, settings: rt.securitySettings, audit: rt.audit });
            scope.get('/unbound', async () => 'x');
          })
          .ready(),
      ).rejects.toThrow(/declares no tenant binding rule/);
      await bare.close();
    });
  });
});
