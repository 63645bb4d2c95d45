import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { describe, inject } from 'vitest';
import { loadConfig, type Config } from '../../src/core/config.js';
import type { Actor } from '../../src/core/principal.js';
import type { ManualClock} from '../../src/core/clock.js';
import { type Clock } from '../../src/core/clock.js';
import { createLogger } from '../../src/core/logger.js';
import { initDataDir } from '../../src/ops/init.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';

export type StorageKind = 'sqlite' | 'postgres';
export const STORAGE_KINDS: StorageKind[] = ['sqlite', 'postgres'];

export function postgresUrl(): string | null {
  return inject('postgresUrl');
}

/**
 * `describe` once per storage engine. The PostgreSQL variant is skipped only
 * when the global setup found no server and CI is not set.
 */
export function describeEachStorage(name: string, body: (kind: StorageKind) => void): void {
  for (const kind of STORAGE_KINDS) {
    const skip = kind === 'postgres' && postgresUrl() === null;
    (skip ? describe.skip : describe)(`${name} [${kind}]`, () => body(kind));
  }
}

export interface TestEnv {
  dataDir: string;
  /** Environment that points a CLI process at this deployment. */
  env: Record<string, string>;
  config: Config;
  cleanup(): Promise<void>;
}

/** A fresh, initialised deployment: temporary data directory and, for PostgreSQL, a control schema of its own. */
export async function makeTestEnv(kind: StorageKind, extraEnv: Record<string, string> = {}): Promise<TestEnv> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-test-'));
  const env: Record<string, string> = { CUSTOS_DATA_DIR: dataDir, ...extraEnv };
  let schema: string | undefined;
  if (kind === 'postgres') {
    const url = postgresUrl();
    if (!url) throw new Error('PostgreSQL is not available');
    schema = `custos_test_${inject('runPid')}_${randomBytes(6).toString('hex')}`;
    env.CUSTOS_DATABASE_URL = url;
    env.CUSTOS_DATABASE_SCHEMA = schema;
  }
  const loaded = loadConfig({ env });
  await initDataDir(loaded);
  return {
    dataDir,
    env,
    config: loaded.config,
    async cleanup() {
      if (schema) await dropPostgresDeployment(postgresUrl()!, schema);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Drops a test deployment's control schema and every tenant schema and role it lists. */
export async function dropPostgresDeployment(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const tenants = await client.query<{ id: string }>(`SELECT id FROM "${schema}".tenants`).catch(() => ({ rows: [] as { id: string }[] }));
    for (const { id } of tenants.rows) {
      await client.query(`DROP SCHEMA IF EXISTS "t_${id}" CASCADE`);
      const role = await client.query(`SELECT 1 FROM pg_roles WHERE rolname = $1`, [`custos_t_${id}`]);
      if (role.rowCount) {
        await client.query(`DROP OWNED BY "custos_t_${id}"`);
        await client.query(`DROP ROLE "custos_t_${id}"`);
      }
    }
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

export interface TestRuntime extends Runtime {
  env: TestEnv;
  clock: Clock;
}

/** A runtime over a fresh deployment; `close()` also removes the deployment. */
export async function makeRuntime(kind: StorageKind, opts: { clock?: ManualClock } = {}): Promise<TestRuntime & { manualClock: ManualClock | undefined }> {
  const env = await makeTestEnv(kind);
  const rt = await openRuntime(env.config, { logger: createLogger('silent'), clock: opts.clock, migrateTenants: true });
  // Copy property descriptors so getters (the master key) stay live.
  const wrapped = Object.defineProperties({}, Object.getOwnPropertyDescriptors(rt)) as Runtime;
  return Object.defineProperties(wrapped, {
    env: { value: env },
    manualClock: { value: opts.clock },
    close: {
      value: async () => {
        await rt.close();
        await env.cleanup();
      },
    },
  }) as TestRuntime & { manualClock: ManualClock | undefined };
}

/** The provider operator tests act as. */
export const TEST_OPERATOR: Actor = Object.freeze({ principal: Object.freeze({ type: 'operator' as const, id: 'operator@test', name: 'operator' }) });
