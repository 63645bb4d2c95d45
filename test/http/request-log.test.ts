import type { DestinationStream } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.js';
import { buildApp } from '../../src/http/app.js';
import type { Runtime } from '../../src/runtime.js';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

/** The runtime with its logger replaced by one writing parsed JSON lines into `lines`. */
function withLog(rt: Runtime, level: string, lines: Array<Record<string, unknown>>): Runtime {
  const sink: DestinationStream = { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) };
  return Object.defineProperties({}, { ...Object.getOwnPropertyDescriptors(rt), logger: { value: createLogger(level, sink) } }) as Runtime;
}

describeEachStorage('request log', (kind) => {
  let rt: TestRuntime;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
    await rt.tenants.create({ name: 'logco', edition: 'standard', adminEmail: 'ops@logco.example' }, TEST_OPERATOR);
  });
  afterAll(async () => {
    await rt.close();
  });

  it('writes one line per request when it completes: request id, method, path without query, address, status, time; never the credentials', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const app = await buildApp({ runtime: withLog(rt, 'info', lines) });
    const secret = 'ct_logco.this-token-must-never-be-logged';
    const res = await app.inject({ method: 'GET', url: '/api/v1/me?tenant=logco&x=1', headers: { authorization: `Bearer ${secret}`, cookie: `custos_session=${secret}`, 'user-agent': 'log-test/1' } });
    expect(res.statusCode).toBe(401);
    const requestLines = lines.filter((l) => l.requestId !== undefined);
    expect(requestLines).toHaveLength(1);
    expect(requestLines[0]).toMatchObject({
      msg: 'request completed',
      level: 30,
      requestId: res.headers['x-request-id'],
      req: { method: 'GET', url: '/api/v1/me', ip: '127.0.0.1', userAgent: 'log-test/1' },
      res: { statusCode: 401 },
    });
    expect(typeof requestLines[0]!.responseTime).toBe('number');
    expect(JSON.stringify(lines)).not.toContain('this-token-must-never-be-logged');
    await app.close();
  });

  it('does not log probes, and writes the arrival line too at debug level', async () => {
    const quiet: Array<Record<string, unknown>> = [];
    const app = await buildApp({ runtime: withLog(rt, 'info', quiet) });
    for (const url of ['/healthz', '/readyz', '/metrics']) expect((await app.inject(url)).statusCode).toBe(200);
    expect(quiet.filter((l) => l.requestId !== undefined)).toEqual([]);
    await app.close();

    const verbose: Array<Record<string, unknown>> = [];
    const debugApp = await buildApp({ runtime: withLog(rt, 'debug', verbose) });
    const res = await debugApp.inject({ method: 'GET', url: '/api/v1/me', headers: { 'x-request-id': 'trace-me-1' } });
    expect(res.headers['x-request-id']).toBe('trace-me-1');
    expect(verbose.filter((l) => l.requestId === 'trace-me-1').map((l) => l.msg)).toEqual(['incoming request', 'request completed']);
    await debugApp.close();
  });
});
