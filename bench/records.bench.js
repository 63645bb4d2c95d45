// Customer-data benchmarks, each beside its baseline in the same run, on SQLite (the embedded default) and, when it
// answers, on PostgreSQL (each engine in a fresh process of this script, BENCH_STORAGE=sqlite|postgres):
//  1. importing N records (3 pii: email, mobile, first name; 3 plain: customer id, city, score) through the
//     batch merge API over HTTPS, 10,000 per request (the first half one request at a time, the second half two
//     at a time; the overall rate is reported against the baselines) — baseline: the same rows inserted unencrypted with plain
//     SQL (better-sqlite3, same durability: WAL + synchronous=FULL, 10,000 per transaction), once into a table with
//     a primary key only and once into Custos's own records table with its indexes and lookup-key tables (written
//     as Custos writes them: through the recent tables, folded by the same rule);
//     target >= 50,000 records/s (on SQLite); on PostgreSQL the baselines are the same rows through `pg`, multi-row
//     inserts of 200, 10,000 per transaction, into a primary-key-only table and into a copy of the tenant's records
//     table (`LIKE … INCLUDING ALL`: the same columns, keys and indexes);
//     then, for reference, a re-import of the first 100,000 records that changes two fields of each (updates);
//  2. single-record GET with a bearer token at 64 concurrent connections (20 s after a 2 s warm-up) — baseline: a bare Fastify HTTPS route
//     returning a record-sized JSON; target >= 5,000 requests/s with p99 <= 20 ms; each run also reports the
//     server's CPU per answered request (its process tree, from /proc), steadier than rates on a shared machine;
//  3. exporting the N records as CSV with a bearer token; target >= 100,000 records/s.
// BENCH_RECORDS sets N (default 1,000,000); BENCH_WORKERS the server processes (default: the number of cores).
// The server runs as `custos serve --workers W` in a child process; load generators in child processes too.
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import pg from 'pg';
import Fastify from 'fastify';
import { Pool } from 'undici';
import { loadConfig } from '../dist/core/config.js';
import { createLogger } from '../dist/core/logger.js';
import { ALL_PERMISSIONS } from '../dist/iam/permissions.js';
import { initDataDir } from '../dist/ops/init.js';
import { DEFAULT_FOLD } from '../dist/data/record-keys.js';
import { openRuntime } from '../dist/runtime.js';
import { postgresReachable, postgresUrl, removeDeployment } from './http-deployment.js';
import { fmt, loadGenerator, machine, report, treeCpuSeconds } from './lib.js';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!process.env.BENCH_STORAGE) {
  // One process per engine, one after the other: each starts from a fresh server and data directory.
  const kinds = ['sqlite', ...((await postgresReachable()) ? ['postgres'] : [])];
  if (kinds.length === 1) console.log('PostgreSQL not reachable: its run is skipped');
  let failed = 0;
  for (const kind of kinds) {
    const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], { stdio: 'inherit', env: { ...process.env, BENCH_STORAGE: kind } });
    if (r.status !== 0) failed++;
  }
  process.exit(failed === 0 ? 0 : 1);
}
const KIND = process.env.BENCH_STORAGE;
const N = Number(process.env.BENCH_RECORDS ?? 1_000_000);
// Children run asynchronously: this process is the server and must keep serving meanwhile.
const child = async (script, arg) => JSON.parse((await promisify(execFile)(process.execPath, [path.join(here, script), JSON.stringify(arg)], { encoding: 'utf8', maxBuffer: 1 << 24 })).stdout.trim().split('\n').at(-1));

console.log(machine());
console.log(`[${KIND}] records: ${fmt(N)}`);
const dir = mkdtempSync(path.join(tmpdir(), 'custos-bench-'));
const WORKERS = Number(process.env.BENCH_WORKERS ?? cpus().length);
const serverEnv = { ...process.env, CUSTOS_DATA_DIR: dir, CUSTOS_PORT: '0', CUSTOS_BODY_LIMIT_BYTES: String(64 << 20), CUSTOS_LOG_LEVEL: 'info' };
const controlSchema = KIND === 'postgres' ? `custos_bench_${randomBytes(4).toString('hex')}` : undefined;
if (controlSchema) Object.assign(serverEnv, { CUSTOS_DATABASE_URL: postgresUrl, CUSTOS_DATABASE_SCHEMA: controlSchema });
const loaded = loadConfig({ env: serverEnv });
await initDataDir(loaded);
const rt = await openRuntime(loaded.config, { logger: createLogger('silent') });
const ca = loaded.config.tlsCert;

/** Starts `custos serve --workers n` on this deployment and resolves with its URL and a stop function. */
async function serve(workers) {
  const child = spawn(process.execPath, [path.join(here, '../dist/cli/main.js'), 'serve', '--workers', String(workers)], { env: serverEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d) => {
      buf += d;
      const m = /"url":"(https:[^"]+)","workers"|"url":"(https:[^"]+)","msg":"listening"/.exec(buf);
      if (!m) return;
      // Then the log (a line per request) is drained and dropped: kept and searched, it cost this process half a
      // core during the GET runs, taken from the server on these two cores.
      child.stdout.off('data', onData);
      child.stdout.resume();
      resolve(m[1] ?? m[2]);
    };
    child.stdout.on('data', onData);
    child.on('exit', (code) => reject(new Error(`server exited ${code}`)));
  });
  return { url, pid: child.pid, stop: () => new Promise((r) => { child.on('exit', r); child.kill('SIGTERM'); }) };
}

// A tenant and a Data Director API user with a token (as an administrator would set it up).
const op = { principal: { type: 'operator', id: 'bench' } };
const t = await rt.tenants.create({ name: 'bench', edition: 'enterprise', adminEmail: 'ops@bench.example' }, op);
const admin = { tenantId: t.id, userId: t.admin.id, username: 'admin', kind: 'console', roles: ['account-administrator'], permissions: new Set(ALL_PERMISSIONS), reachableOrgs: null, credentialPublicId: 'bench', authMethod: 'password', via: 'session', principal: { type: 'user', id: t.admin.id, name: 'admin' } };
const tenant = { id: t.id, name: 'bench' };
await rt.users.create(admin, tenant, { username: 'loader', email: 'loader@bench.example', kind: 'api', roles: ['data-director'] });
const welcome = (await rt.mail.list(t.id, { kind: 'iam.user.welcome' }))[0].text;
const temp = /Temporary password: (\S+)/.exec(welcome)[1];
const first = await rt.login.issueToken(tenant, { username: 'loader', password: temp });
await rt.login.changePasswordInFlow(tenant, { flowToken: first.flowToken, currentPassword: temp, newPassword: 'Bench loader password, long enough!' });
const token = (await rt.login.issueToken(tenant, { username: 'loader', password: 'Bench loader password, long enough!' })).session.token;
const authHeader = { authorization: `Bearer ${token}` };
await rt.close();
console.log(`server: custos serve --workers ${WORKERS}`);
let server = await serve(WORKERS);
let pool = new Pool(server.url, { connect: { ca: readFileSync(ca) } });
const list = JSON.parse(
  await (
    await pool.request({
      method: 'POST',
      path: '/api/v1/lists',
      headers: { ...authHeader, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'customers', fields: [{ name: 'FIRST_NAME', type: 'string', classification: 'pii' }, { name: 'CITY', type: 'string', classification: 'plain' }, { name: 'SCORE', type: 'number', classification: 'plain' }] }),
    })
  ).body.text(),
);

// 1. import
// The first half one request at a time (as `custos records import`), the second half two at a time (an API
// client keeping both server processes busy: one encrypts its batch while the other holds the write lock).
const half = Math.floor(N / 2 / 10000) * 10000 || N;
const imp1 = await child('import-client.js', { url: server.url, ca, token, listId: list.id, records: half, offset: 0, inflight: 1 });
const imp2 = N - half > 0 ? await child('import-client.js', { url: server.url, ca, token, listId: list.id, records: N - half, offset: half, inflight: 2 }) : undefined;
const imp = { rate: N / (imp1.seconds + (imp2?.seconds ?? 0)) };
console.log(`import: records 1-${fmt(half)} one request at a time ${fmt(imp1.rate)}/s; ${imp2 ? `records ${fmt(half + 1)}-${fmt(N)} two at a time ${fmt(imp2.rate)}/s` : ''}`);
// For reference (no target): a re-import that changes stored records, matched on customer id, one request at a
// time: each record is read, decrypted, merged with the new values, sealed again and written back.
const UPDATE_N = Math.min(N, 100_000);
const updCpu0 = treeCpuSeconds(server.pid);
const upd = await child('import-client.js', { url: server.url, ca, token, listId: list.id, records: UPDATE_N, offset: 0, inflight: 1, suffix: '-2' });
const updCpuUs = ((treeCpuSeconds(server.pid) - updCpu0) * 1e6) / UPDATE_N;
console.log(`update re-import (reference, no target): ${fmt(UPDATE_N)} stored records changed through the merge API, one request at a time: ${fmt(upd.rate)}/s, server CPU ${Math.round(updCpuUs)} µs per record`);
const rowOf = (i) => {
  const email = `person${i}@example.org`;
  const mobile = `+1 555 ${String(i).padStart(7, '0')}`;
  const sha = createHash('sha256').update(email).digest();
  const md5 = createHash('md5').update(email).digest();
  const mob = createHash('sha256').update(mobile).digest();
  return [1, String(i).padStart(26, '0'), `C${i}`, sha.toString('hex'), md5.toString('hex'), sha.readIntBE(0, 6), md5.readIntBE(0, 6), mob.readIntBE(0, 6), JSON.stringify({ CITY: 'Paris', SCORE: i % 1000 }), Buffer.from(JSON.stringify({ EMAIL_ADDRESS_: email, MOBILE_NUMBER_: mobile, FIRST_NAME: `Name${i}` })), Date.now(), Date.now()];
};
const personOf = (i) => [String(i).padStart(26, '0'), `person${i}@example.org`, `+1 555 ${String(i).padStart(7, '0')}`, `Name${i}`, `C${i}`, 'Paris', i % 1000];
const SAME_COLUMNS = 'list_key, id, customer_id, email_sha256, email_md5, k_sha256, k_md5, k_mobile, plain, protected, created_at, updated_at';
const { baseRate, sameRate } = KIND === 'postgres' ? await postgresBaselines() : sqliteBaselines();

/**
 * SQLite baselines, same durability (WAL, synchronous=FULL) and 10,000 rows per transaction:
 * A — the rows in a table with a primary key only, one insert statement per row;
 * B — Custos's own records table and indexes, and its lookup-key tables (DDL read from the tenant's store), values
 * unencrypted (personal values as JSON text, oHashes and lookup keys from plain SHA-256/MD5), multi-row inserts of
 * 200 as Custos does, and the key entries per batch, one table at a time in key order, as Custos writes them.
 * The gap between A and B is the price of the lookup keys alone.
 */
function sqliteBaselines() {
  const baselineDb = new Database(path.join(dir, 'baseline.db'));
  baselineDb.pragma('journal_mode = WAL');
  baselineDb.pragma('synchronous = FULL');
  baselineDb.exec('create table people (id text primary key, email text, mobile text, first_name text, customer_id text, city text, score integer)');
  const ins = baselineDb.prepare('insert into people values (?, ?, ?, ?, ?, ?, ?)');
  const insertBatch = baselineDb.transaction((from, to) => {
    for (let i = from; i < to; i++) ins.run(personOf(i));
  });
  let start = performance.now();
  for (let b = 0; b < N; b += 10000) insertBatch(b, Math.min(b + 10000, N));
  const baseRate = N / ((performance.now() - start) / 1000);
  baselineDb.close();
  const storeFile = path.join(dir, 'tenants', `${t.id}.db`);
  // The records table with its indexes, and the lookup-key tables that SQLite stores keep beside it (migrations 0010
  // and 0011: each with its recent table, and their sizes).
  const keyTableNames = ['record_keys_sha256', 'record_keys_md5', 'record_keys_mobile'];
  const ddl = new Database(storeFile, { readonly: true })
    .prepare(`select sql from sqlite_master where tbl_name in ('records', 'record_keys_state', ${keyTableNames.flatMap((n) => [`'${n}'`, `'${n}_recent'`]).join(', ')}) and sql is not null`)
    .all()
    .map((r) => r.sql);
  const sameDb = new Database(path.join(dir, 'baseline-same-schema.db'));
  sameDb.pragma('journal_mode = WAL');
  sameDb.pragma('synchronous = FULL');
  sameDb.pragma('cache_size = -32768');
  for (const sql of ddl) sameDb.exec(sql);
  const ROWS = 200;
  const multi = sameDb.prepare(`insert into records (${SAME_COLUMNS}, seq) values ${Array(ROWS).fill('(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}`);
  const one = sameDb.prepare(`insert into records (${SAME_COLUMNS}, seq) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
  // Key entries as Custos writes them: per batch, one table at a time, in key order, 300 per statement, into the
  // recent tables; after the batch's commit each due recent table is folded into its key table as Custos folds it
  // (`RecordKeys.foldDue`: the same rule, `step` entries per transaction, in key order).
  const KEYS = 300;
  for (const table of keyTableNames) sameDb.prepare('insert into record_keys_state (tbl, folded, added) values (?, 0, 0)').run(table);
  const keyTables = keyTableNames.map((table, j) => ({
    at: 5 + j,
    multi: sameDb.prepare(`insert into ${table}_recent (list_key, k, seq) values ${Array(KEYS).fill('(?, ?, ?)').join(', ')}`),
    one: sameDb.prepare(`insert into ${table}_recent (list_key, k, seq) values (?, ?, ?)`),
    added: sameDb.prepare('update record_keys_state set added = added + ? where tbl = ?'),
    state: sameDb.prepare('select folded, added from record_keys_state where tbl = ?'),
    bound: sameDb.prepare(`select list_key, k, seq from ${table}_recent order by list_key, k, seq limit 1 offset ?`),
    moveBefore: sameDb.prepare(`insert into ${table} (list_key, k, seq) select list_key, k, seq from ${table}_recent where (list_key, k, seq) < (?, ?, ?) order by list_key, k, seq`),
    dropBefore: sameDb.prepare(`delete from ${table}_recent where (list_key, k, seq) < (?, ?, ?)`),
    last: [`insert into ${table} (list_key, k, seq) select list_key, k, seq from ${table}_recent order by list_key, k, seq`, `delete from ${table}_recent`, `update record_keys_state set folded = (select count(*) from ${table}), added = 0 where tbl = '${table}'`].map((q) => sameDb.prepare(q)),
    table,
  }));
  const foldStep = sameDb.transaction((kt) => {
    const b = kt.bound.get(DEFAULT_FOLD.step);
    if (!b) {
      for (const q of kt.last) q.run();
      return true;
    }
    kt.moveBefore.run(b.list_key, b.k, b.seq);
    kt.dropBefore.run(b.list_key, b.k, b.seq);
    return false;
  });
  const foldDue = () => {
    for (const kt of keyTables) {
      const state = kt.state.get(kt.table);
      if (state.added >= Math.max(DEFAULT_FOLD.min, state.folded / DEFAULT_FOLD.ratio)) while (!foldStep(kt));
    }
  };
  const insertSame = sameDb.transaction((from, to) => {
    const rows = [];
    for (let i = from; i < to; i++) rows.push([...rowOf(i), i + 1]);
    for (let b = 0; b < rows.length; b += ROWS) {
      const part = rows.slice(b, b + ROWS);
      if (part.length === ROWS) multi.run(part.flat());
      else for (const r of part) one.run(r);
    }
    for (const kt of keyTables) {
      const entries = rows.map((r) => [1, r[kt.at], r[12]]).sort((a, b) => a[1] - b[1] || a[2] - b[2]);
      for (let b = 0; b < entries.length; b += KEYS) {
        const part = entries.slice(b, b + KEYS);
        if (part.length === KEYS) kt.multi.run(part.flat());
        else for (const e of part) kt.one.run(e);
      }
      kt.added.run(entries.length, kt.table);
    }
  });
  start = performance.now();
  for (let b = 0; b < N; b += 10000) {
    insertSame(b, Math.min(b + 10000, N));
    foldDue();
  }
  const sameRate = N / ((performance.now() - start) / 1000);
  sameDb.close();
  return { baseRate, sameRate };
}

/**
 * PostgreSQL baselines, in a scratch schema of the same database (commit durability as the server's), 10,000 rows
 * per transaction, multi-row inserts of 200 (one row per statement would measure round trips, not the engine):
 * A — a primary-key-only table; B — a copy of the tenant's records table with its keys and indexes.
 */
async function postgresBaselines() {
  const c = new pg.Client({ connectionString: postgresUrl });
  await c.connect();
  const scratch = `bench_base_${randomBytes(4).toString('hex')}`;
  try {
    await c.query(`CREATE SCHEMA ${scratch}`);
    await c.query(`CREATE TABLE ${scratch}.people (id text primary key, email text, mobile text, first_name text, customer_id text, city text, score integer)`);
    await c.query(`CREATE TABLE ${scratch}.records (LIKE "t_${t.id}".records INCLUDING ALL)`);
    const timed = async (table, columns, width, rowAt) => {
      const ROWS = 200;
      const text = (n) => `insert into ${scratch}.${table} (${columns}) values ${Array.from({ length: n }, (_, r) => `(${Array.from({ length: width }, (_, k) => `$${r * width + k + 1}`).join(', ')})`).join(', ')}`;
      const full = text(ROWS);
      const start = performance.now();
      for (let b = 0; b < N; b += 10000) {
        await c.query('BEGIN');
        for (let i = b; i < Math.min(b + 10000, N); i += ROWS) {
          const n = Math.min(ROWS, N - i, b + 10000 - i);
          const params = [];
          for (let j = i; j < i + n; j++) params.push(...rowAt(j));
          await c.query({ text: n === ROWS ? full : text(n), values: params });
        }
        await c.query('COMMIT');
      }
      return N / ((performance.now() - start) / 1000);
    };
    const baseRate = await timed('people', 'id, email, mobile, first_name, customer_id, city, score', 7, personOf);
    const sameRate = await timed('records', SAME_COLUMNS, 12, rowOf);
    return { baseRate, sameRate };
  } finally {
    await c.query(`DROP SCHEMA IF EXISTS ${scratch} CASCADE`);
    await c.end();
  }
}
const importRatio = report(`[${KIND}] import through the merge API (HTTPS, 10,000/request)`, imp.rate, 'plain SQL inserts, unencrypted, primary key only', baseRate);
report(`[${KIND}] import through the merge API (HTTPS, 10,000/request)`, imp.rate, "plain SQL inserts, unencrypted, Custos's records table and indexes", sameRate);
console.log(`  import target >= 50,000 records/s${KIND === 'postgres' ? ' (set for SQLite)' : ''}: ${imp.rate >= 50000 ? 'met' : 'NOT met'}`);

// 2. single-record GET
// A fresh pool: the import's connections sat idle through the baselines, and the server may close one just as it is reused.
await pool.close();
pool = new Pool(server.url, { connect: { ca: readFileSync(ca) } });
const page = JSON.parse(await (await pool.request({ method: 'GET', path: `/api/v1/lists/${list.id}/records?limit=64`, headers: authHeader })).body.text());
const requests = page.records.map((r) => ({ path: `/api/v1/lists/${list.id}/records/${r.id}`, headers: authHeader }));
const sample = JSON.stringify(page.records[0]);
const loader = loadGenerator();
console.log(`load generator: ${loader.name}`);
/**
 * A GET load of 20 s at 64 connections after a 2 s warm-up, with the CPU the server used per answered request
 * (`cpu()`: the server's CPU seconds so far). The measured run opens its own 64 connections (each wrk run does), and
 * their TLS handshakes and set-up slow the server's first ~0.5 s (seen on machine M: server-side p50 18 ms and
 * max 58 ms in the first 250 ms, against p50 11 ms after); in the 6 s window used before, that start held 4.7 % of
 * the requests and alone could lift the p99 past 20 ms. Over 20 s it is under 2 % (and still counted), so the figure
 * is closer to the steady load it is meant to measure.
 */
async function getRun(url, cpu, reqs) {
  await child(loader.script, { url, ca, concurrency: 64, warmupMs: 0, durationMs: 2000, requests: reqs });
  const cpu0 = cpu();
  const r = await child(loader.script, { url, ca, concurrency: 64, warmupMs: 0, durationMs: 20000, requests: reqs });
  return { ...r, cpuUs: ((cpu() - cpu0) * 1e6) / r.completed };
}
const serverCpu = (s) => () => treeCpuSeconds(s.pid);
const get = await getRun(server.url, serverCpu(server), requests);
let get1;
if (WORKERS > 1) {
  await pool.close();
  await server.stop();
  server = await serve(1);
  pool = new Pool(server.url, { connect: { ca: readFileSync(ca) } });
  get1 = await getRun(server.url, serverCpu(server), requests);
}
const bare = Fastify({ https: { cert: readFileSync(ca), key: readFileSync(loaded.config.tlsKey) }, logger: false });
bare.get('/record', async (_req, reply) => reply.type('application/json').send(sample));
await bare.listen({ port: 0, host: '127.0.0.1' });
// The bare route runs in this process, which does nothing else meanwhile but wait for the load generator.
const ownCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };
const bareGet = await getRun(`https://127.0.0.1:${bare.server.address().port}`, ownCpu, [{ path: '/record' }]);
await bare.close();
// Every answer must have been a success: a rate of refusals (an expired token, say) measures nothing.
for (const r of [get, get1, bareGet]) {
  if (r && (r.errors > 0 || Object.entries(r.statuses).some(([k, n]) => !k.startsWith('2') && n > 0))) throw new Error(`GET load saw failures: ${JSON.stringify(r)}`);
}
report(`[${KIND}] GET one record, bearer token, 64 connections, ${WORKERS} server process(es)`, get.rate, 'bare Fastify route (one process), record-sized JSON', bareGet.rate);
console.log(`  p50 ${get.p50Ms.toFixed(1)} ms, p99 ${get.p99Ms.toFixed(1)} ms (baseline p99 ${bareGet.p99Ms.toFixed(1)} ms); statuses ${JSON.stringify(get.statuses)}`);
console.log(`  server CPU per request: ${Math.round(get.cpuUs)} µs (baseline ${Math.round(bareGet.cpuUs)} µs)`);
if (get1) report('  same with 1 server process', get1.rate, 'bare Fastify route (one process)', bareGet.rate);
if (get1) console.log(`  1 process: p50 ${get1.p50Ms.toFixed(1)} ms, p99 ${get1.p99Ms.toFixed(1)} ms, server CPU per request ${Math.round(get1.cpuUs)} µs`);
const getMet = [get, get1].some((g) => g !== undefined && g.rate >= 5000 && g.p99Ms <= 20);
console.log(`  GET target >= 5,000/s with p99 <= 20 ms (either process count): ${getMet ? 'met' : 'NOT met'}`);

// 3. export
const exportStart = performance.now();
const res = await pool.request({ method: 'GET', path: `/api/v1/lists/${list.id}/export?format=csv`, headers: authHeader });
let lines = 0;
// Newlines counted in native code: a byte-by-byte loop here cost this process ~0.5 s of CPU per 100 MB, taken from
// the server on two cores.
for await (const chunk of res.body) for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
const exportRate = (lines - 1) / ((performance.now() - exportStart) / 1000);
report(`[${KIND}] export as CSV with a bearer token`, exportRate);
console.log(`  export target >= 100,000 records/s: ${exportRate >= 100000 ? 'met' : 'NOT met'} (${fmt(lines - 1)} records)`);

await pool.close();
await server.stop();
if (controlSchema) {
  // The tenant's schema and role go through Custos, then the control schema.
  const rt2 = await openRuntime(loaded.config, { logger: createLogger('silent') });
  await rt2.storage.dropTenantStore(t.id);
  await rt2.close();
  await removeDeployment(controlSchema, dir);
}
rmSync(dir, { recursive: true, force: true });
process.exitCode = importRatio === undefined ? 1 : 0;
