import { readFileSync } from 'node:fs';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { runCli, spawnCli, waitFor } from '../helpers/cli.js';
import { makeTestEnv, postgresUrl, type TestEnv } from '../helpers/storage-kinds.js';

type Server = ReturnType<typeof spawnCli> & { url: string };

/** Starts `custos serve` on a free port and waits for its `listening` log line. */
async function serve(env: TestEnv): Promise<Server> {
  const run = spawnCli(['serve', '--port', '0', '--log-level', 'info'], env.env);
  let url: string | undefined;
  await waitFor(
    () => {
      for (const line of run.output().stdout.split('\n')) {
        if (!line.startsWith('{')) continue;
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === 'listening' && entry.url) url = entry.url;
      }
      return url !== undefined || run.child.exitCode !== null;
    },
    30000,
    'the listening log line',
  );
  if (!url) throw new Error(`custos serve did not start: ${run.output().stderr}`);
  return { ...run, url };
}

function post(agent: https.Agent, url: string, path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const target = new URL(path, url);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(target, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

// About PostgreSQL: two processes share one database, and only its row locks keep the counter exact.
(postgresUrl() === null ? describe.skip : describe)('lockout across two server processes [postgres]', () => {
  let env: TestEnv;
  let servers: Server[] = [];
  let agent: https.Agent;
  let tenant: { id: string; name: string; admin: { username: string; temporaryPassword: string } };

  beforeAll(async () => {
    env = await makeTestEnv('postgres');
    const created = await runCli(['tenant', 'create', 'lockout', '--edition', 'standard', '--admin-email', 'admin@lockout.example', '--json'], env.env);
    expect(created.code, created.stderr).toBe(0);
    tenant = JSON.parse(created.stdout);
    servers = await Promise.all([serve(env), serve(env)]);
    agent = new https.Agent({ ca: readFileSync(env.config.tlsCert), keepAlive: true, maxSockets: 25 });
  });
  afterAll(async () => {
    agent?.destroy();
    for (const s of servers) s.child.kill('SIGTERM');
    for (const s of servers) expect((await s.exited).code).toBe(0);
    await env.cleanup();
  });

  it('ASVS 6.3.1: 50 concurrent wrong passwords split across two processes lock the account at exactly the threshold (5), once', async () => {
    expect(servers[0]!.url).not.toBe(servers[1]!.url);
    const attempts = Array.from({ length: 50 }, (_, i) =>
      post(agent, servers[i % 2]!.url, '/api/v1/auth/login', { tenant: 'lockout', username: 'admin', password: `wrong-password-${i}-of-fifty` }),
    );
    const answers = await Promise.all(attempts);
    for (const a of answers) {
      expect(a.status).toBe(401);
      expect(a.body).toMatchObject({ code: 'invalid_credentials' });
    }

    const rt: Runtime = await openRuntime(env.config, { logger: createLogger('silent') });
    try {
      const store = rt.storage.tenant(tenant.id);
      const user = await store.transaction((db) => db.selectFrom('users').select(['failed_attempts', 'locked_until']).where('username', '=', 'admin').executeTakeFirstOrThrow());
      expect(user.failed_attempts).toBe(5);
      expect(Number(user.locked_until)).toBeGreaterThan(Date.now() + 59 * 60_000);

      const lockouts = (await rt.audit.query(tenant.id, { limit: 100, types: ['auth.lockout'] })).events;
      expect(lockouts).toHaveLength(1);
      expect(lockouts[0]).toMatchObject({ details: { failedAttempts: 5, mode: 'duration', minutes: 60 } });
      const failures = (await rt.audit.query(tenant.id, { limit: 100, types: ['auth.login.failure'] })).events;
      expect(failures).toHaveLength(50);
      expect(failures.filter((e) => e.details?.reason === 'wrong_password')).toHaveLength(5);
      expect(failures.filter((e) => e.details?.reason === 'locked')).toHaveLength(45);
      expect((await rt.mail.list(tenant.id, { kind: 'auth.lockout', limit: 10 })).length).toBe(1);
      // Both processes took part.
      const served = servers.map((s) => (s.output().stdout.match(/"url":"\/api\/v1\/auth\/login"/g) ?? []).length);
      expect(served.every((n) => n >= 25)).toBe(true);

      // The 50 failures also reached the per-address sign-in throttle (default 50 in 15 minutes), counted in
      // the shared database: this address now waits on either process, whatever the password.
      for (const s of servers) {
        const throttled = await post(agent, s.url, '/api/v1/auth/login', { tenant: 'lockout', username: 'admin', password: tenant.admin.temporaryPassword });
        expect(throttled.status).toBe(429);
        expect(throttled.body).toMatchObject({ code: 'rate_limited' });
      }
      const settings = structuredClone(await rt.securitySettings.get(tenant.id));
      await store.transaction((db) => rt.securitySettings.put(db, tenant.id, { ...settings, loginThrottle: { maxFailures: 0, windowMinutes: 15 } }));
      // The servers cache security settings for a second.
      await new Promise((r) => setTimeout(r, 1100));

      // Locked: the right password fails too, on either process, and counts nothing further.
      for (const s of servers) {
        const right = await post(agent, s.url, '/api/v1/auth/login', { tenant: 'lockout', username: 'admin', password: tenant.admin.temporaryPassword });
        expect(right.status).toBe(401);
        expect(right.body).toMatchObject({ code: 'invalid_credentials' });
      }
      const after = await store.transaction((db) => db.selectFrom('users').select('failed_attempts').where('username', '=', 'admin').executeTakeFirstOrThrow());
      expect(after.failed_attempts).toBe(5);
      expect((await rt.audit.query(tenant.id, { limit: 100, types: ['auth.lockout'] })).events).toHaveLength(1);
    } finally {
      await rt.close();
    }
  });
});
