import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawnCli, waitFor } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

/** GET over HTTPS, verifying the server against the certificate `custos init` made. */
function get(url: string, ca: Buffer): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      })
      .on('error', reject);
  });
}

describeEachStorage('custos start (first run) and SIGTERM', (kind) => {
  let env: TestEnv;
  beforeAll(async () => {
    env = await makeTestEnv(kind);
  });
  afterAll(async () => env.cleanup());

  const start = () => spawnCli(['start', '--port', '0', '--log-level', 'warn'], { ...env.env, CUSTOS_DATA_DIR: path.join(env.dataDir, 'fresh') });

  it('prints the URL, admin and a temporary password on the first run, serves HTTPS, exits 0 on SIGTERM', async () => {
    const run = start();
    await waitFor(() => run.output().stdout.includes('Press Ctrl+C'), 30000, 'start-up banner');
    const out = run.output().stdout;
    const url = /Custos is running at (https:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
    expect(url).toBeDefined();
    expect(out).toMatch(/Account Administrator: admin </);
    const password = /Temporary password: (\S+)/.exec(out)?.[1];
    expect(password).toMatch(/^\S{24}$/);
    expect(out).toContain(path.join(env.dataDir, 'fresh'));

    const ca = readFileSync(path.join(env.dataDir, 'fresh', 'tls', 'cert.pem'));
    const health = await get(`${url}/healthz`, ca);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toEqual({ status: 'ok' });
    expect(health.headers['strict-transport-security']).toMatch(/max-age=31536000/);
    expect((await get(`${url}/api/v1/auth/options?tenant=demo`, ca)).status).toBe(200);

    run.child.kill('SIGTERM');
    const res = await run.exited;
    expect(res.signal).toBeNull();
    expect(res.code).toBe(0);
    expect(res.stderr).not.toMatch(/error/i);
  });

  it('on the next run keeps the demo tenant and prints no password', async () => {
    const run = start();
    await waitFor(() => run.output().stdout.includes('Press Ctrl+C'), 30000, 'start-up banner');
    expect(run.output().stdout).toMatch(/Tenant "demo" exists/);
    expect(run.output().stdout).not.toMatch(/Temporary password/);
    run.child.kill('SIGINT');
    expect((await run.exited).code).toBe(0);
  });

  it('refuses plain HTTP: the port speaks only TLS', async () => {
    const run = start();
    await waitFor(() => run.output().stdout.includes('Press Ctrl+C'), 30000, 'start-up banner');
    const url = /Custos is running at https:\/\/(127\.0\.0\.1:\d+)/.exec(run.output().stdout)![1]!;
    const plain = await fetch(`http://${url}/healthz`).then(
      (r) => r.status,
      () => 'refused',
    );
    expect(plain).not.toBe(200);
    run.child.kill('SIGTERM');
    expect((await run.exited).code).toBe(0);
  });
});

describeEachStorage('custos serve --workers', (kind) => {
  let env: TestEnv;
  beforeAll(async () => {
    env = await makeTestEnv(kind);
  });
  // A failed test must not leave a cluster behind (its primary would keep restarting workers).
  const runs: Array<ReturnType<typeof spawnCli>> = [];
  afterAll(async () => {
    for (const r of runs) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
    await env.cleanup();
  });

  it('serves from several processes on one port, replaces a dead worker (keeping one scheduler) and stops them all on SIGTERM, exit 0', async () => {
    const { runCli } = await import('../helpers/cli.js');
    expect((await runCli(['init'], env.env)).code).toBe(0);
    const run = spawnCli(['serve', '--workers', '2', '--port', '0'], env.env);
    runs.push(run);
    await waitFor(() => /"workers":2,"msg":"listening"/.test(run.output().stdout), 30000, 'cluster listening');
    const url = /"url":"(https:[^"]+)","workers":2/.exec(run.output().stdout)![1]!;
    // Announced only once both workers listen.
    expect((run.output().stdout.match(/Server listening at/g) ?? []).length).toBe(2);
    const ca = readFileSync(env.config.tlsCert);
    for (let i = 0; i < 10; i++) expect((await get(`${url}/healthz`, ca)).status).toBe(200);
    const children = readFileSync(`/proc/${run.child.pid}/task/${run.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    expect(children).toHaveLength(2);
    // Exactly one worker runs the scheduled work; when it dies, its replacement takes that over.
    const childPids = () => readFileSync(`/proc/${run.child.pid}/task/${run.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    const schedulers = (pids: string[]) => pids.filter((pid) => readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes('CUSTOS_SCHEDULED_WORK=1'));
    const [scheduler] = schedulers(children);
    expect(schedulers(children)).toHaveLength(1);
    process.kill(Number(scheduler), 'SIGKILL');
    await waitFor(() => childPids().length === 2 && !childPids().includes(scheduler!), 30000, 'replacement worker');
    // A child shows its parent's environment until it has exec'd: wait for the replacement to be itself.
    await waitFor(() => schedulers(childPids()).length > 0, 10000, 'the replacement running');
    const now = childPids();
    expect(schedulers(now)).toHaveLength(1);
    expect(schedulers(now)[0]).not.toBe(scheduler);
    // The primary's log line may reach the pipe a moment after the replacement starts; the replacement then listens.
    await waitFor(() => /server worker died; starting another/.test(run.output().stdout), 10000, 'the death logged');
    await waitFor(() => (run.output().stdout.match(/Server listening at/g) ?? []).length >= 3, 30000, 'the replacement listening');
    for (let i = 0; i < 4; i++) expect((await get(`${url}/healthz`, ca)).status).toBe(200);
    children.splice(0, children.length, ...now);
    run.child.kill('SIGTERM');
    const res = await run.exited;
    expect(res.code).toBe(0);
    for (const pid of children) expect(() => process.kill(Number(pid), 0)).toThrow();
  });

  it('stops with exit 1 instead of restarting workers that keep dying at start', async () => {
    const run = spawnCli(['serve', '--workers', '2', '--port', '0'], { ...env.env, CUSTOS_FAILPOINT: 'serve:worker-start' });
    runs.push(run);
    const res = await run.exited;
    expect(res.code).toBe(1);
    expect(run.output().stdout).toMatch(/server workers keep dying; stopping/);
    expect(run.output().stdout).not.toMatch(/"msg":"listening"/);
    expect((run.output().stdout.match(/server worker died; starting another/g) ?? []).length).toBeGreaterThanOrEqual(5);
  });
});
