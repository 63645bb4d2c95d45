import { readFileSync } from 'node:fs';
import https from 'node:https';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/logger.js';
import { startServer } from '../../src/http/server.js';
import { openRuntime } from '../../src/runtime.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

function get(url: URL, path: string, ca: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get({ host: url.hostname, port: url.port, path, ca, agent: false }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describeEachStorage('graceful shutdown', (kind) => {
  let env: TestEnv;
  beforeAll(async () => {
    env = await makeTestEnv(kind);
  });
  afterAll(async () => env.cleanup());

  it('lets an in-flight request finish, then refuses new connections', async () => {
    const rt = await openRuntime(loadConfig({ env: { ...env.env, CUSTOS_PORT: '0' } }).config, { logger: createLogger('silent') });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    const server = await startServer(rt, (app) => {
      app.get('/test/slow', async () => {
        entered();
        await gate;
        return { finished: true };
      });
    });
    const ca = readFileSync(env.config.tlsCert);
    const url = new URL(server.url);

    const slow = get(url, '/test/slow', ca);
    await inHandler;
    const stopping = server.stop();
    let stopped = false;
    void stopping.then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(stopped).toBe(false); // still waiting for the request in flight
    release();
    const res = await slow;
    await stopping;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ finished: true });
    await expect(get(url, '/healthz', ca)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
