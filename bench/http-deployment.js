// A Custos deployment for the HTTP benchmarks: a fresh data directory (and, for PostgreSQL, a control schema of
// its own), one tenant with API users, and the real HTTPS server (`startServer`, the code `custos serve` runs).
// Logging stays at `info` (every request is logged, as in production) but goes to /dev/null.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { pino } from 'pino';
import { loadConfig } from '../dist/core/config.js';
import { newId } from '../dist/core/ids.js';
import { createLogger } from '../dist/core/logger.js';
import { hashPassword } from '../dist/crypto/password-hash.js';
import { startServer } from '../dist/http/server.js';
import { insertUser } from '../dist/iam/users-store.js';
import { initDataDir } from '../dist/ops/init.js';
import { openRuntime } from '../dist/runtime.js';

export const postgresUrl = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const OPERATOR = { principal: { type: 'operator', id: 'bench@localhost', name: 'bench' } };
const CLIENT = fileURLToPath(new URL('./https-client.js', import.meta.url));

export async function postgresReachable() {
  const c = new pg.Client({ connectionString: postgresUrl, connectionTimeoutMillis: 2000 });
  try {
    await c.connect();
    await c.end();
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts a deployment on `kind` with `apiUsers` API users (role viewer) whose password is `password`.
 * Returns the runtime, the server, the tenant and the users, and `close()`.
 */
export async function httpDeployment(kind, { apiUsers = 1, password = 'Bench-Password-For-Api-Users-1' } = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-bench-'));
  const env = { CUSTOS_DATA_DIR: dataDir, CUSTOS_PORT: '0', CUSTOS_LOG_LEVEL: 'info' };
  let schema;
  if (kind === 'postgres') {
    schema = `custos_bench_${randomBytes(4).toString('hex')}`;
    env.CUSTOS_DATABASE_URL = postgresUrl;
    env.CUSTOS_DATABASE_SCHEMA = schema;
  }
  const loaded = loadConfig({ env });
  await initDataDir(loaded);
  const logger = createLogger('info', pino.destination({ dest: '/dev/null', sync: false }));
  const rt = await openRuntime(loaded.config, { logger, migrateTenants: true });
  const tenant = await rt.tenants.create({ name: `bench-${kind}`, edition: 'enterprise', adminEmail: 'ops@bench.example' }, OPERATOR);
  const hash = await hashPassword(password);
  const users = [];
  await rt.storage.tenant(tenant.id).transaction(async (db) => {
    for (let i = 0; i < apiUsers; i++) {
      const now = Date.now();
      const user = { id: newId(now), username: `robot-${i}`, email: `robot-${i}@bench.example`, kind: 'api', status: 'active', password_hash: hash, must_change_password: 0, password_expires_at: null, created_at: now };
      await insertUser(db, user, ['viewer']);
      users.push(user);
    }
  });
  const server = await startServer(rt);
  return {
    rt,
    server,
    tenant,
    users,
    password,
    certFile: loaded.config.tlsCert,
    keyFile: loaded.config.tlsKey,
    async close() {
      await rt.storage.dropTenantStore(tenant.id);
      await server.stop();
      await removeDeployment(schema, dataDir);
    },
  };
}

/**
 * Removes what a bench deployment leaves once its runtime is closed and its
 * tenant stores dropped (`rt.storage.dropTenantStore`): the control schema on
 * PostgreSQL, and the data directory.
 */
export async function removeDeployment(schema, dataDir) {
  if (schema) {
    const c = new pg.Client({ connectionString: postgresUrl });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await c.end();
  }
  rmSync(dataDir, { recursive: true, force: true });
}

/** Runs the load generator (bench/https-client.js) in its own process; resolves with its result line. */
export function load(opts) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLIENT, JSON.stringify(opts)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load generator exited ${code}`))));
  });
}

/** The median of an array of numbers. */
export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
