// Authenticated requests: bearer-token `GET /api/v1/me` against a bare Fastify route answering the same JSON,
// both over real HTTPS (same certificate, same TLS options: the server asks for a client certificate),
// measured in the same run with the same load: CONCURRENCY keep-alive connections from a load generator in
// its own process (bench/https-client.js), one request at a time per connection. Rounds alternate workload
// and baseline; medians of ROUNDS. No target ratio is set; the figures go to docs/PERFORMANCE.md. For reference,
// Custos's own GET /healthz (security headers, metrics, request id, logging; no tenant, no authentication).
//
// `/me` does everything a tenant route does: tenant binding (control-plane lookup, cached 1 s), the IP
// allowlist, token authentication (session and user read, roles and permissions), the handler's own read,
// security headers, metrics, request logging (to /dev/null) and response serialisation by schema.
// Also printed: the server process's CPU time per request (process.cpuUsage around each load; warm-up included).
//
// Usage: npm run bench -- me   (BENCH_DURATION_MS, BENCH_CONCURRENCY; PostgreSQL runs when it answers.)
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import Fastify from 'fastify';
import { httpDeployment, load, median, postgresReachable } from './http-deployment.js';
import { machine, report } from './lib.js';

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const WARMUP_MS = 1000;
const ROUNDS = 3;

console.log(`${machine()}; load average at start ${loadavg()[0].toFixed(2)}`);
console.log(`${CONCURRENCY} keep-alive connections, ${DURATION_MS} ms per round after ${WARMUP_MS} ms warm-up, ${ROUNDS} rounds, load generator in its own process`);

const kinds = ['sqlite', ...((await postgresReachable()) ? ['postgres'] : [])];
if (kinds.length === 1) console.log('PostgreSQL not reachable: its run is skipped');

for (const kind of kinds) {
  const d = await httpDeployment(kind);
  const issued = await d.rt.login.issueToken({ id: d.tenant.id, name: d.tenant.name }, { username: d.users[0].username, password: d.password });
  if (issued.status !== 'ok') throw new Error('no token');
  const authorization = `Bearer ${issued.session.token}`;
  const sample = await d.server.app.inject({ url: '/api/v1/me', headers: { authorization } });
  if (sample.statusCode !== 200) throw new Error(`GET /me answered ${sample.statusCode}`);
  const body = sample.json();

  const tls = { cert: readFileSync(d.certFile), key: readFileSync(d.keyFile), requestCert: true, rejectUnauthorized: false };
  const bare = Fastify({ https: tls });
  bare.get('/me', async () => body);
  await bare.listen({ host: '127.0.0.1', port: 0 });
  const bareUrl = `https://127.0.0.1:${bare.server.address().port}`;

  const common = { ca: d.certFile, concurrency: CONCURRENCY, warmupMs: WARMUP_MS, durationMs: DURATION_MS };
  const rates = { me: [], bare: [], health: [] };
  const cpu = { me: [], bare: [], health: [] };
  /** Runs one load and notes the server process's CPU microseconds per answered request. */
  const measured = async (name, opts) => {
    const before = process.cpuUsage();
    const r = await load(opts);
    const used = process.cpuUsage(before);
    cpu[name].push((used.user + used.system) / (r.rate * (WARMUP_MS + DURATION_MS) / 1000));
    return r;
  };
  for (let round = 0; round < ROUNDS; round++) {
    const me = await measured('me', { ...common, url: d.server.url, requests: [{ path: '/api/v1/me', headers: { authorization } }] });
    const base = await measured('bare', { ...common, url: bareUrl, requests: [{ path: '/me' }] });
    const health = await measured('health', { ...common, url: d.server.url, requests: [{ path: '/healthz' }] });
    for (const r of [me, base, health]) if (r.errors > 0 || Object.keys(r.statuses).some((s) => s !== '200')) throw new Error(`unexpected answers: ${JSON.stringify(r)}`);
    rates.me.push(me.rate);
    rates.bare.push(base.rate);
    rates.health.push(health.rate);
  }
  report(`[${kind}] GET /api/v1/me (bearer token)`, median(rates.me), 'bare Fastify route, same JSON', median(rates.bare));
  report(`[${kind}] reference: Custos GET /healthz (global plugins, no tenant or authentication)`, median(rates.health));
  console.log(`  rounds: /me ${rates.me.map(Math.round).join(', ')}; bare ${rates.bare.map(Math.round).join(', ')}; /healthz ${rates.health.map(Math.round).join(', ')}`);
  console.log(`  server CPU per request (median): /me ${Math.round(median(cpu.me))} µs; bare ${Math.round(median(cpu.bare))} µs; /healthz ${Math.round(median(cpu.health))} µs`);
  await bare.close();
  await d.close();
}
