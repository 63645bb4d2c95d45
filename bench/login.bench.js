// Sign-in: password logins per second against bare argon2id verifications per second, same run, same concurrency.
//
// Workload: `POST /api/v1/auth/token` for API users (username + password → 1-hour bearer token) over real HTTPS,
// CONCURRENCY keep-alive connections from a load generator in its own process (bench/https-client.js), each
// connection signing in its own API user. A login is the whole route: tenant binding, IP allowlist, body
// validation, the user read, one argon2id verification, the lockout bookkeeping, token issuance (session row,
// last sign-in, the `auth.token.issue` activity event, one durable commit) and the answer.
// Baseline: CONCURRENCY concurrent loops of bare `verify()` from @node-rs/argon2 against a hash made with
// ARGON2ID_OWASP (m=19456 KiB, t=2, p=1), in the server's process, so on the same libuv thread pool.
// Rounds alternate workload and baseline; medians of ROUNDS. Target: logins >= 85 % of bare verifications.
// Also, for reference (no target): the same load against a bare Fastify HTTPS route in this process that does only
// the verification and answers a token — what HTTPS, the load generator and the scheduling of the two cores leave
// of the hash rate before any of Custos's own work (the ceiling a sign-in can reach on this machine).
//
// argon2 runs on libuv's thread pool: UV_THREADPOOL_SIZE is set to the number of cores (each verification is
// single-threaded and memory-bound, so more threads than cores only adds contention); CONCURRENCY is four times
// that, so the pool never idles while requests are between hashes (in SQL, HTTP or JSON). Both are printed.
//
// Usage: npm run bench -- login   (BENCH_DURATION_MS, BENCH_CONCURRENCY; PostgreSQL runs when it answers.)
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';

if (!process.env.UV_THREADPOOL_SIZE) {
  // The pool size is read when the pool starts: set it for a fresh process rather than hope nothing used it yet.
  const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(availableParallelism()) },
  });
  process.exit(r.status ?? 1);
}

const { verify, hash: argon2Hash } = await import('@node-rs/argon2');
const { readFileSync } = await import('node:fs');
const { randomBytes } = await import('node:crypto');
const { default: Fastify } = await import('fastify');
const { ARGON2ID_OWASP, hashPassword } = await import('../dist/crypto/password-hash.js');
const { httpDeployment, load, median, postgresReachable } = await import('./http-deployment.js');
const { machine, report } = await import('./lib.js');
const { loadavg } = await import('node:os');

const POOL = Number(process.env.UV_THREADPOOL_SIZE);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 4 * availableParallelism());
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 6000);
const WARMUP_MS = 1500;
const ROUNDS = 3;
const TARGET = 0.85;

console.log(`${machine()}; load average at start ${loadavg()[0].toFixed(2)}`);
console.log(`argon2id m=${ARGON2ID_OWASP.memoryCost} KiB t=${ARGON2ID_OWASP.timeCost} p=${ARGON2ID_OWASP.parallelism}; UV_THREADPOOL_SIZE=${POOL}; concurrency ${CONCURRENCY}; ${DURATION_MS} ms per round after ${WARMUP_MS} ms warm-up; ${ROUNDS} rounds`);

/** CONCURRENCY loops of bare argon2id verification for `ms` after a warm-up; verifications per second. */
async function bareVerifications(hash, password, ms) {
  let stop = false;
  let count = 0;
  let measuring = false;
  const loops = Array.from({ length: CONCURRENCY }, async () => {
    while (!stop) {
      if (!(await verify(hash, password))) throw new Error('verification failed');
      if (measuring) count++;
    }
  });
  await new Promise((r) => setTimeout(r, WARMUP_MS));
  measuring = true;
  const start = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  measuring = false;
  const seconds = (performance.now() - start) / 1000;
  stop = true;
  await Promise.all(loops);
  return count / seconds;
}

const OVERHEAD_ROUNDS = 3;
/**
 * Busy jiffies of this machine so far: user, nice, system, irq and softirq of /proc/stat's first line. Not idle or
 * iowait; not steal (time the hypervisor gave this VM's vCPUs to others, which on these shared VMs reached a
 * tenth of the machine and tripled the figure); not guest, already counted in user.
 */
function machineJiffies() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6] };
}

/** Sign-ins against a cheap hash: µs of CPU per sign-in, of this process and of the machine, per round. Restores the hashes after. */
async function signInOverhead(d, requests) {
  const store = d.rt.storage.tenant(d.tenant.id);
  const real = await store.read((db) => db.selectFrom('users').select(['id', 'password_hash']).execute());
  const cheap = await argon2Hash(d.password, { algorithm: 2, memoryCost: 256, timeCost: 1, parallelism: 1 });
  await store.transaction((db) => db.updateTable('users').set({ password_hash: cheap }).where('id', 'in', d.users.map((u) => u.id)).execute());
  const out = { process: [], machine: [] };
  try {
    for (let round = 0; round < OVERHEAD_ROUNDS; round++) {
      const m0 = machineJiffies();
      const c0 = process.cpuUsage();
      const r = await load({ url: d.server.url, ca: d.certFile, concurrency: CONCURRENCY, warmupMs: 0, durationMs: 4000, requests });
      const c = process.cpuUsage(c0);
      const m1 = machineJiffies();
      if (r.errors > 0 || Object.keys(r.statuses).some((s) => s !== '200')) throw new Error(`unexpected answers: ${JSON.stringify(r)}`);
      // The machine figure includes the load generator's start-up (a few tens of ms over thousands of sign-ins).
      const n = r.completed;
      out.process.push((c.user + c.system) / n);
      out.machine.push(((m1.busy - m0.busy) * 10_000) / n); // jiffies are 10 ms here (USER_HZ 100)
    }
  } finally {
    await store.transaction(async (db) => {
      for (const u of real) await db.updateTable('users').set({ password_hash: u.password_hash }).where('id', '=', u.id).execute();
    });
  }
  return out;
}

const kinds = ['sqlite', ...((await postgresReachable()) ? ['postgres'] : [])];
if (kinds.length === 1) console.log('PostgreSQL not reachable: its run is skipped');

let allMet = true;
for (const kind of kinds) {
  const d = await httpDeployment(kind, { apiUsers: CONCURRENCY });
  const hash = await hashPassword(d.password);
  const requests = d.users.map((u) => ({ method: 'POST', path: '/api/v1/auth/token', body: { tenant: d.tenant.name, username: u.username, password: d.password } }));
  const rates = { login: [], bare: [], route: [] };
  // The reference route: one verification and a token, nothing else, over the same HTTPS and certificate.
  const route = Fastify({ https: { cert: readFileSync(d.certFile), key: readFileSync(d.keyFile) } });
  route.post('/token', async (req) => {
    if (!(await verify(hash, req.body.password))) throw new Error('verification failed');
    return { token: randomBytes(32).toString('base64url'), expiresAt: new Date(Date.now() + 3_600_000).toISOString() };
  });
  await route.listen({ host: '127.0.0.1', port: 0 });
  const routeUrl = `https://localhost:${route.server.address().port}`;
  const routeRequests = [{ method: 'POST', path: '/token', body: { password: d.password } }];
  for (let round = 0; round < ROUNDS; round++) {
    const r = await load({ url: d.server.url, ca: d.certFile, concurrency: CONCURRENCY, warmupMs: WARMUP_MS, durationMs: DURATION_MS, requests });
    if (r.errors > 0 || Object.keys(r.statuses).some((s) => s !== '200')) throw new Error(`unexpected answers: ${JSON.stringify(r)}`);
    rates.login.push(r.rate);
    rates.bare.push(await bareVerifications(hash, d.password, DURATION_MS));
    const rr = await load({ url: routeUrl, ca: d.certFile, concurrency: CONCURRENCY, warmupMs: WARMUP_MS, durationMs: DURATION_MS, requests: routeRequests });
    if (rr.errors > 0 || Object.keys(rr.statuses).some((st) => st !== '200')) throw new Error(`unexpected answers from the reference route: ${JSON.stringify(rr)}`);
    rates.route.push(rr.rate);
  }
  await route.close();
  // Where the rest goes: the same sign-ins against a cheap hash (argon2id m=256 KiB, t=1, ~0.3 ms), so that the
  // CPU of everything but hashing shows — this process (the server) and the whole machine (which includes the
  // load generator and, on PostgreSQL, the database server), per sign-in, from process.cpuUsage and /proc/stat.
  const overhead = await signInOverhead(d, requests);
  console.log(`  [${kind}] CPU per sign-in apart from hashing (cheap-hash users, ${OVERHEAD_ROUNDS} rounds): server process ${overhead.process.map((x) => x.toFixed(0)).join(', ')} µs; whole machine ${overhead.machine.map((x) => x.toFixed(0)).join(', ')} µs; one argon2id verification ${(1000 / median(rates.bare) * POOL).toFixed(1)} ms of a core`);
  const issued = (await d.rt.audit.query(d.tenant.id, { limit: 1, types: ['auth.token.issue'] })).events.length;
  if (issued === 0) throw new Error('no token was recorded as issued');
  const ratio = report(`[${kind}] password logins (POST /api/v1/auth/token, HTTPS)`, median(rates.login), 'bare argon2id verifications', median(rates.bare), TARGET);
  report(`  [${kind}] reference: bare HTTPS route that only verifies and answers a token`, median(rates.route), 'bare argon2id verifications', median(rates.bare));
  console.log(`  rounds: logins ${rates.login.map((x) => x.toFixed(1)).join(', ')}; bare ${rates.bare.map((x) => x.toFixed(1)).join(', ')}; reference route ${rates.route.map((x) => x.toFixed(1)).join(', ')}`);
  allMet &&= ratio >= TARGET;
  await d.close();
}
process.exitCode = allMet ? 0 : 1;
