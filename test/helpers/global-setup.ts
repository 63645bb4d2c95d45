import pg from 'pg';
import type { TestProject } from 'vitest/node';

export const DEFAULT_TEST_POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/test';

declare module 'vitest' {
  export interface ProvidedContext {
    postgresUrl: string | null;
    /** The pid of this test run: its PostgreSQL schemas carry it, so concurrent runs leave each other's alone. */
    runPid: number;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Drops what test runs left in PostgreSQL: control schemas named
 * custos_test_<pid>_*, their tenants' schemas and roles — those of this run,
 * and of runs whose process is gone (another run in progress keeps its own).
 */
async function cleanPostgres(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const schemas = await client.query<{ nspname: string }>(`SELECT nspname FROM pg_namespace WHERE nspname LIKE 'custos\\_test\\_%'`);
    for (const { nspname } of schemas.rows) {
      const pid = Number(/^custos_test_(\d+)_/.exec(nspname)?.[1] ?? 0);
      if (pid !== 0 && pid !== process.pid && alive(pid)) continue;
      const tenants = await client
        .query<{ id: string }>(`SELECT id FROM "${nspname}".tenants`)
        .catch(() => ({ rows: [] as { id: string }[] }));
      for (const { id } of tenants.rows) {
        await client.query(`DROP SCHEMA IF EXISTS "t_${id}" CASCADE`);
        const role = await client.query(`SELECT 1 FROM pg_roles WHERE rolname = $1`, [`custos_t_${id}`]);
        if (role.rowCount) {
          await client.query(`DROP OWNED BY "custos_t_${id}"`);
          await client.query(`DROP ROLE "custos_t_${id}"`);
        }
      }
      await client.query(`DROP SCHEMA "${nspname}" CASCADE`);
    }
  } finally {
    await client.end();
  }
}

/**
 * Decides once whether the PostgreSQL suites run. With CI=true they must:
 * an unreachable server fails the run instead of skipping.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const url = process.env.TEST_POSTGRES_URL ?? DEFAULT_TEST_POSTGRES_URL;
  let reachable = true;
  try {
    await cleanPostgres(url);
  } catch (err) {
    reachable = false;
    if (process.env.CI === 'true') {
      throw new Error(`CI=true and PostgreSQL at TEST_POSTGRES_URL is unreachable: ${(err as Error).message}`, { cause: err });
    }
    console.warn(`PostgreSQL unreachable (${(err as Error).message}); PostgreSQL suites are skipped. Set CI=true to make this an error.`);
  }
  project.provide('postgresUrl', reachable ? url : null);
  project.provide('runPid', process.pid);
  return async () => {
    if (reachable) await cleanPostgres(url);
  };
}
