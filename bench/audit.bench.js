// Activity stream: durable appends and chain verification, each beside its baseline in the same run.
//
// 1. Appends: PRODUCERS concurrent producers call `audit.record` (group commit) in a loop for DURATION_MS.
//    Baseline: the same producers insert rows of the same shape and size into a plain table of the same
//    tenant store, through the same group committer (same batch size and delay), the same transaction
//    path and the same durability (SQLite WAL + synchronous=FULL; PostgreSQL synchronous_commit=on).
//    So the ratio is the cost of the feature itself: building, redacting and canonicalising the event,
//    hashing it into the chain, the chain-head update and the checkpoints. Target: >= 50 %.
// 2. Verification of a 1,000,000-event chain (SQLite), with all cores and with one. Target: >= 1,000,000/s.
//    Verification of the PostgreSQL chain written by workload 1 is printed too.
//
// Usage: npm run bench -- audit   (PostgreSQL runs when TEST_POSTGRES_URL, or the default test URL, answers.)
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { CompiledQuery, sql } from 'kysely';
import pg from 'pg';
import { prepareEvent } from '../dist/audit/event-builder.js';
import { chainHash } from '../dist/audit/chain-hash.js';
import { GroupCommitter } from '../dist/audit/group-commit.js';
import { loadConfig } from '../dist/core/config.js';
import { createLogger } from '../dist/core/logger.js';
import { initDataDir } from '../dist/ops/init.js';
import { openRuntime } from '../dist/runtime.js';
import { postgresReachable, postgresUrl, removeDeployment } from './http-deployment.js';
import { fmt, machine, report } from './lib.js';

const PRODUCERS = 64;
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 4000);
const ROUNDS = 3;
const VERIFY_EVENTS = 1_000_000;
const OPERATOR = { principal: { type: 'operator', id: 'bench@localhost', name: 'bench' } };

/** What a busy tenant records most: sign-in failures, with source and request. */
function eventInput(i) {
  return {
    type: 'auth.login.failure',
    outcome: 'failure',
    code: 'invalid_credentials',
    actor: {
      principal: { type: 'user', id: `01JD${String(i % 100000).padStart(22, '0')}`, name: `user${i % 100000}@example.com` },
      source: { ip: '203.0.113.7', userAgent: 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0', sessionId: 'c2Vzc2lvbi1pZC0xMjM0NTY3OA' },
      request: { id: `req-${i}`, method: 'POST', path: '/api/v1/auth/login' },
    },
    resource: { type: 'user', name: `user${i % 100000}@example.com` },
    details: { attempt: i % 5, mfa: false },
  };
}

async function deployment(kind) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-bench-'));
  const env = { CUSTOS_DATA_DIR: dataDir };
  let schema;
  if (kind === 'postgres') {
    schema = `custos_bench_${process.pid}`;
    env.CUSTOS_DATABASE_URL = postgresUrl;
    env.CUSTOS_DATABASE_SCHEMA = schema;
  }
  const loaded = loadConfig({ env });
  await initDataDir(loaded);
  const rt = await openRuntime(loaded.config, { logger: createLogger('silent') });
  const tenant = (await rt.tenants.create({ name: `bench-${kind}`, edition: 'enterprise', adminEmail: 'ops@bench.example' }, OPERATOR)).id;
  return {
    rt,
    tenant,
    async close() {
      await rt.storage.dropTenantStore(tenant);
      await rt.close();
      await removeDeployment(schema, dataDir);
    },
  };
}

/** The baseline table: the activity stream's shape with no chain. Created as the store's owner. */
async function createPlainTable(kind, d) {
  const ddl = `CREATE TABLE bench_plain (seq ${kind === 'postgres' ? 'bigserial' : 'integer'} PRIMARY KEY, id text NOT NULL, time bigint NOT NULL, type text NOT NULL, outcome text NOT NULL, principal_type text NOT NULL, principal_id text NOT NULL, resource_type text, resource_id text, body text NOT NULL, prev_hash ${kind === 'postgres' ? 'bytea' : 'blob'} NOT NULL, hash ${kind === 'postgres' ? 'bytea' : 'blob'} NOT NULL)`;
  const idx = ['CREATE INDEX bench_plain_time_idx ON bench_plain (time)', 'CREATE INDEX bench_plain_type_idx ON bench_plain (type, seq)'];
  if (kind === 'sqlite') {
    await d.rt.storage.tenant(d.tenant).transaction(async (db) => {
      for (const s of [ddl, ...idx]) await sql.raw(s).execute(db);
    });
    return;
  }
  const c = new pg.Client({ connectionString: postgresUrl });
  await c.connect();
  await c.query(`SET search_path TO "t_${d.tenant}"`);
  for (const s of [ddl, ...idx]) await c.query(s);
  await c.query(`GRANT SELECT, INSERT ON bench_plain TO "custos_t_${d.tenant}"`);
  await c.query(`GRANT USAGE ON SEQUENCE bench_plain_seq_seq TO "custos_t_${d.tenant}"`);
  await c.end();
}

/** Batched plain inserts, split like the activity stream's (128/32/8/1 rows per statement). */
function plainCommitter(kind, d) {
  const cols = ['id', 'time', 'type', 'outcome', 'principal_type', 'principal_id', 'resource_type', 'resource_id', 'body', 'prev_hash', 'hash'];
  const texts = new Map();
  const text = (rows) => {
    if (!texts.has(rows)) {
      let p = 0;
      const tuples = Array.from({ length: rows }, () => `(${cols.map(() => (kind === 'postgres' ? `$${++p}` : '?')).join(', ')})`);
      texts.set(rows, `INSERT INTO bench_plain (${cols.join(', ')}) VALUES ${tuples.join(', ')}`);
    }
    return texts.get(rows);
  };
  return new GroupCommitter(async (_key, items) => {
    await d.rt.storage.tenant(d.tenant).transaction(async (db) => {
      let done = 0;
      for (const size of [128, 32, 8, 1]) {
        while (items.length - done >= size) {
          await db.executeQuery(CompiledQuery.raw(text(size), items.slice(done, done + size).flat()));
          done += size;
        }
      }
    });
    return items.map(() => undefined);
  });
}

async function producers(fn) {
  let count = 0;
  const end = performance.now() + DURATION_MS;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: PRODUCERS }, async (_, p) => {
      let i = p;
      while (performance.now() < end) {
        await fn(i);
        i += PRODUCERS;
        count++;
      }
    }),
  );
  return (count * 1000) / (performance.now() - start);
}

async function appendBench(kind) {
  const d = await deployment(kind);
  try {
    await createPlainTable(kind, d);
    const plain = plainCommitter(kind, d);
    // A row like the one `record` writes: same columns, same body size, two 32-byte hashes.
    const sample = prepareEvent(d.tenant, eventInput(1), Date.now(), () => Buffer.alloc(32));
    const row = (i) => [sample.event.id, Date.now(), 'auth.login.failure', 'failure', 'user', `u${i}`, 'user', null, sample.bodyText, Buffer.alloc(32, i), Buffer.alloc(32, i + 1)];
    console.log(`[${kind}] body ${sample.body.length} bytes, ${PRODUCERS} producers, ${DURATION_MS} ms per run`);
    const audit = [];
    const base = [];
    for (let r = 0; r < ROUNDS; r++) {
      base.push(await producers((i) => plain.submit('t', row(i))));
      const before = d.rt.audit.groupCommitStats;
      audit.push(await producers((i) => d.rt.audit.record(d.tenant, eventInput(i))));
      const after = d.rt.audit.groupCommitStats;
      if (r === ROUNDS - 1) console.log(`[${kind}] group commit: ${fmt((after.items - before.items) / (after.transactions - before.transactions))} events per transaction on average`);
    }
    await plain.close();
    const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const ratio = report(`[${kind}] audit.record (durable, group commit)`, median(audit), 'plain batched inserts', median(base), 0.5);
    let verify;
    if (kind === 'postgres') {
      const v = await d.rt.audit.verify(d.tenant);
      if (!v.valid) throw new Error('the PostgreSQL chain did not verify');
      verify = (v.events * 1000) / Math.max(1, v.elapsedMs);
      report(`[postgres] verify ${fmt(v.events)} events`, verify);
    }
    return { kind, audit: median(audit), base: median(base), ratio, verify };
  } finally {
    await d.close();
  }
}

/** Writes a valid chain of realistic events straight into the tenant's SQLite file (much faster than recording them). */
function writeChain(file, tenant, n) {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  const head = db.prepare('SELECT seq, hash FROM audit_chain_head WHERE id = 1').get();
  const ins = db.prepare('INSERT INTO audit_events (seq, id, time, type, outcome, principal_type, principal_id, resource_type, resource_id, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)');
  let prev = head.hash;
  let seq = head.seq;
  let bytes = 0;
  const now = Date.UTC(2026, 0, 1);
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      seq++;
      const e = prepareEvent(tenant, eventInput(i), now + i, () => Buffer.alloc(32));
      const h = chainHash(seq, prev, e.body);
      ins.run(seq, e.event.id, e.timeMs, e.event.type, e.event.outcome, e.event.principal.type, e.event.principal.id, 'user', null, e.bodyText, prev, h);
      prev = h;
      bytes += e.body.length;
    }
    db.prepare('UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1').run(seq, prev);
  })();
  // One huge transaction leaves a WAL as large as the table; a live store checkpoints every 1,000 pages
  // (SQLite's default), so fold it in to measure the steady state rather than reads through a giant WAL.
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
  return bytes / n;
}

async function verifyBench() {
  const d = await deployment('sqlite');
  try {
    const file = d.rt.storage.locateTenantStore(d.tenant).file;
    const avg = writeChain(file, d.tenant, VERIFY_EVENTS);
    console.log(`[sqlite] chain of ${fmt(VERIFY_EVENTS)} events, ${Math.round(avg)} bytes per body on average`);
    const runs = { all: [], one: [] };
    for (let r = 0; r < ROUNDS; r++) {
      for (const [k, threads] of [['all', undefined], ['one', 1]]) {
        const v = await d.rt.audit.verify(d.tenant, threads === undefined ? {} : { threads });
        if (!v.valid || v.events < VERIFY_EVENTS) throw new Error('the benchmark chain did not verify');
        runs[k].push((v.events * 1000) / v.elapsedMs);
        if (process.env.BENCH_VERBOSE) console.log(`  run ${r} ${k}: ${fmt((v.events * 1000) / v.elapsedMs)}/s`);
      }
    }
    const best = (xs) => Math.max(...xs);
    const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    report('[sqlite] verify, all cores (median)', median(runs.all));
    report('[sqlite] verify, all cores (best)', best(runs.all));
    report('[sqlite] verify, one thread (median)', median(runs.one));
    const met = median(runs.all) >= 1_000_000;
    console.log(`[sqlite] verify target >= 1,000,000 events/s: ${met ? 'met' : 'NOT met'}`);
    return { all: median(runs.all), one: median(runs.one), avg };
  } finally {
    await d.close();
  }
}


console.log(machine());
// Verification first: the append runs leave the machine busy for a while (SQLite and PostgreSQL write back).
const verify = await verifyBench();
const results = [];
if (!process.env.BENCH_VERIFY_ONLY) {
  results.push(await appendBench('sqlite'));
  if (await postgresReachable()) results.push(await appendBench('postgres'));
  else console.log('PostgreSQL not reachable: its append benchmark is skipped');
}
const failed = results.some((r) => r.ratio < 0.5) || verify.all < 1_000_000;
console.log(failed ? 'Some activity-stream targets were NOT met.' : 'All activity-stream targets met.');
