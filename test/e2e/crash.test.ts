import { afterAll, beforeAll, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { runCli, spawnCli } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, postgresUrl, type TestEnv } from '../helpers/storage-kinds.js';
import pg from 'pg';

describeEachStorage('crash in the middle of tenant create', (kind) => {
  let env: TestEnv;
  const cli = (args: string[], extra: Record<string, string> = {}) => runCli(args, { ...env.env, ...extra });
  const listed = async () => (JSON.parse((await cli(['tenant', 'list', '--json'])).stdout) as { name: string; id: string }[]);

  /** Every tenant store that exists on disk or in PostgreSQL. */
  const stores = async (): Promise<string[]> => {
    if (kind === 'sqlite') {
      return readdirSync(path.join(env.dataDir, 'tenants')).filter((f) => f.endsWith('.db')).map((f) => f.slice(0, -3)).sort();
    }
    const client = new pg.Client({ connectionString: postgresUrl()! });
    await client.connect();
    try {
      const ids = await client.query<{ id: string }>(`SELECT id FROM "${env.config.databaseSchema}".tenants`);
      const known = new Set(ids.rows.map((r) => r.id));
      const schemas = await client.query<{ nspname: string }>(`SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'`);
      const roles = await client.query<{ rolname: string }>(`SELECT rolname FROM pg_roles WHERE rolname LIKE 'custos\\_t\\_%'`);
      // Only this deployment's: rows it knows plus anything named after an id it once created is checked by the caller.
      return [...schemas.rows.map((r) => r.nspname.slice(2)), ...roles.rows.map((r) => `role:${r.rolname.slice(9)}`)].filter(
        (x) => known.has(x.replace(/^role:/, '')) || createdIds.has(x.replace(/^role:/, '')),
      ).sort();
    } finally {
      await client.end();
    }
  };
  const createdIds = new Set<string>();

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    expect((await cli(['init'])).code).toBe(0);
  });
  afterAll(async () => env.cleanup());

  it.each(['tenant-create:after-row', 'tenant-create:after-store', 'tenant-create:after-admin', 'migrate:after:0001_users'])(
    'killed with SIGKILL at %s: the half tenant is never listed and the next start removes it',
    async (point) => {
      const name = `crash-${point.replace(/[^a-z0-9]+/g, '-').replace(/-+$/, '')}`.slice(0, 40);
      const r = await cli(['tenant', 'create', name, '--edition', 'standard', '--admin-email', 'c@x.example', '--json'], { CUSTOS_FAILPOINT: point });
      expect(r.signal).toBe('SIGKILL');
      expect(r.stdout).toBe('');
      // The next command starts, recovers, and lists nothing half-made.
      expect((await listed()).map((t) => t.name)).not.toContain(name);
      expect(await stores()).toEqual((await listed()).map((t) => t.id).sort().flatMap((id) => (kind === 'sqlite' ? [id] : [id, `role:${id}`])).sort());
      // The name is free: creating it again works.
      const again = await cli(['tenant', 'create', name, '--edition', 'standard', '--admin-email', 'c@x.example', '--json']);
      expect(again.code, again.stderr).toBe(0);
      createdIds.add(JSON.parse(again.stdout).id);
    },
  );

  it('killed with SIGKILL while deleting: the next start finishes the deletion', async () => {
    const made = await cli(['tenant', 'create', 'to-delete', '--edition', 'standard', '--admin-email', 'd@x.example', '--json']);
    const id = JSON.parse(made.stdout).id as string;
    createdIds.add(id);
    const r = await cli(['tenant', 'delete', 'to-delete', '--yes'], { CUSTOS_FAILPOINT: 'tenant-delete:after-mark' });
    expect(r.signal).toBe('SIGKILL');
    expect((await listed()).map((t) => t.name)).not.toContain('to-delete');
    expect(await stores()).not.toContain(id);
  });

  it('killed at random moments: every tenant is either whole and listed, or gone without a trace', async () => {
    for (let i = 0; i < 6; i++) {
      const name = `random-kill-${i}`;
      const run = spawnCli(['tenant', 'create', name, '--edition', 'standard', '--admin-email', 'r@x.example', '--json'], env.env);
      await new Promise((r) => setTimeout(r, 150 + Math.floor(Math.random() * 500)));
      run.child.kill('SIGKILL');
      const res = await run.exited;
      if (res.code === 0) createdIds.add(JSON.parse(res.stdout).id);
    }
    const tenants = await listed();
    expect(await stores()).toEqual(tenants.map((t) => t.id).sort().flatMap((id) => (kind === 'sqlite' ? [id] : [id, `role:${id}`])).sort());
    for (const t of tenants) {
      const shown = await cli(['tenant', 'show', t.name, '--json']);
      expect(shown.code).toBe(0);
      expect(JSON.parse(shown.stdout).status).toBe('active');
    }
  });
});
