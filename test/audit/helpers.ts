import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import type { AuditEventInput } from '../../src/audit/audit-types.js';
import type { ManualClock } from '../../src/core/clock.js';
import { createLogger } from '../../src/core/logger.js';
import type { Actor } from '../../src/core/principal.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { makeTestEnv, postgresUrl, TEST_OPERATOR, type StorageKind, type TestEnv } from '../helpers/storage-kinds.js';

export const alice: Actor = {
  principal: { type: 'user', id: '01JUSERALICE0000000000000', name: 'alice' },
  source: { ip: '203.0.113.7', userAgent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', sessionId: 'sess-1' },
  request: { id: 'req-1', method: 'POST', path: '/api/v1/users' },
};

/** A plausible event of the given type. */
export function ev(type = 'iam.user.create', extra: Partial<AuditEventInput> = {}): AuditEventInput {
  return { type, outcome: 'success', actor: alice, resource: { type: 'user', id: 'u1', name: 'bob' }, ...extra };
}

let counter = 0;
/** Creates a tenant with a unique name; returns its id. */
export async function newTenant(rt: Runtime, edition: 'standard' | 'enterprise' = 'standard'): Promise<string> {
  counter++;
  const t = await rt.tenants.create({ name: `audit-${process.pid}-${counter}`, edition, adminEmail: 'ops@example.com' }, TEST_OPERATOR);
  return t.id;
}

/**
 * Runs SQL against a tenant's store as its owner, bypassing Custos: the SQLite
 * file opened directly, or the tenant schema through the PostgreSQL service
 * account. What an intruder with database access can do.
 */
export async function asOwner(rt: Runtime, tenantId: string, statements: string[]): Promise<void> {
  const loc = rt.storage.locateTenantStore(tenantId);
  if (loc.kind === 'sqlite') {
    const db = new Database(loc.file);
    try {
      db.pragma('busy_timeout = 10000');
      for (const s of statements) db.exec(s);
    } finally {
      db.close();
    }
    return;
  }
  const client = new pg.Client({ connectionString: postgresUrl()! });
  await client.connect();
  try {
    await client.query(`SET search_path TO "${loc.schema}"`);
    for (const s of statements) await client.query(s);
  } finally {
    await client.end();
  }
}

/** Runs one query against the provider's control plane as its owner. */
export async function asControlOwner(rt: Runtime, statements: string[]): Promise<void> {
  if (rt.storage.adapter.kind === 'sqlite') {
    const db = new Database(`${rt.config.dataDir}/control.db`);
    try {
      db.pragma('busy_timeout = 10000');
      for (const s of statements) db.exec(s);
    } finally {
      db.close();
    }
    return;
  }
  const client = new pg.Client({ connectionString: postgresUrl()! });
  await client.connect();
  try {
    await client.query(`SET search_path TO "${rt.config.databaseSchema}"`);
    for (const s of statements) await client.query(s);
  } finally {
    await client.end();
  }
}

/** Swaps the positions of two events (rows keep their contents and hashes). */
export function swapStatements(a: number, b: number, table = 'audit_events'): string[] {
  return [`UPDATE ${table} SET seq = -1 WHERE seq = ${a}`, `UPDATE ${table} SET seq = ${a} WHERE seq = ${b}`, `UPDATE ${table} SET seq = ${b} WHERE seq = -1`];
}

/** Every body stored for a tenant, in seq order. */
export async function storedBodies(rt: Runtime, tenantId: string): Promise<{ seq: number; body: string }[]> {
  return rt.storage.tenant(tenantId).transaction((db) => db.selectFrom('audit_events').select(['seq', 'body']).orderBy('seq').execute());
}

/** A runtime whose deployment exports checkpoints to a sink directory outside its data directory. */
export async function makeRuntimeWithSink(kind: StorageKind, clock?: ManualClock): Promise<Runtime & { sinkDir: string; env: TestEnv }> {
  const sinkDir = mkdtempSync(path.join(tmpdir(), 'custos-sink-'));
  const env = await makeTestEnv(kind, { CUSTOS_AUDIT_CHECKPOINT_DIR: sinkDir });
  const rt = await openRuntime(env.config, { logger: createLogger('silent'), clock, migrateTenants: true });
  const wrapped = Object.defineProperties({}, Object.getOwnPropertyDescriptors(rt)) as Runtime;
  return Object.defineProperties(wrapped, {
    sinkDir: { value: sinkDir },
    env: { value: env },
    close: {
      value: async () => {
        await rt.close();
        await env.cleanup();
        rmSync(sinkDir, { recursive: true, force: true });
      },
    },
  }) as Runtime & { sinkDir: string; env: TestEnv };
}
