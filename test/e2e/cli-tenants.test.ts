import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

describeEachStorage('custos tenant (CLI)', (kind) => {
  let env: TestEnv;
  const cli = (...args: string[]) => runCli(args, env.env);
  const names = async () => (JSON.parse((await cli('tenant', 'list', '--json')).stdout) as { name: string }[]).map((t) => t.name);

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    const init = await cli('init');
    expect(init.code, init.stderr).toBe(0);
  });
  afterAll(async () => env.cleanup());

  it('creates a tenant and prints id, name, edition, status and the admin with a temporary password as JSON', async () => {
    const r = await cli('tenant', 'create', 'acme', '--edition', 'enterprise', '--admin-email', 'ops@acme.example', '--json');
    expect(r.code, r.stderr).toBe(0);
    const t = JSON.parse(r.stdout);
    expect(t).toMatchObject({ name: 'acme', edition: 'enterprise', status: 'active', admin: { username: 'admin', email: 'ops@acme.example' } });
    expect(t.id).toMatch(/^[0-9a-z]{26}$/);
    expect(t.admin.temporaryPassword).toMatch(/^\S{24}$/);
  });

  it('prints the temporary password once: show and list never do', async () => {
    const show = await cli('tenant', 'show', 'acme', '--json');
    expect(show.code).toBe(0);
    expect(show.stdout).not.toMatch(/password/i);
    expect((await cli('tenant', 'list')).stdout).toMatch(/^acme\s+enterprise\s+active/m);
  });

  it.each([
    [['tenant', 'create', 'Bad_Name', '--edition', 'standard', '--admin-email', 'a@b.example'], /invalid_tenant_name/],
    [['tenant', 'create', 'ab', '--edition', 'standard', '--admin-email', 'a@b.example'], /invalid_tenant_name/],
    [['tenant', 'create', 'acme', '--edition', 'standard', '--admin-email', 'a@b.example'], /tenant_exists/],
    [['tenant', 'create', 'newco', '--edition', 'gold', '--admin-email', 'a@b.example'], /gold.*invalid|invalid.*gold/],
    [['tenant', 'create', 'newco', '--edition', 'standard', '--admin-email', 'a@b.example', '--colour', 'red'], /unknown option '--colour'/],
    [['tenant', 'create', 'newco', '--edition', 'standard'], /admin-email/],
    [['tenant', 'create', 'newco', '--edition', 'standard', '--admin-email', 'nope'], /validation_failed/],
    [['tenant', 'frobnicate'], /unknown command/],
    [['tenant', 'delete', 'acme'], /--yes/],
  ])('exits 2 with one clear line for %j and creates nothing', async (args, message) => {
    const before = await names();
    const r = await cli(...args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
    expect(await names()).toEqual(before);
  });

  it('suspends, resumes and deletes', async () => {
    expect((await cli('tenant', 'create', 'beta', '--edition', 'standard', '--admin-email', 'b@beta.example')).code).toBe(0);
    expect((await cli('tenant', 'suspend', 'beta')).stdout).toMatch(/suspended/);
    expect(JSON.parse((await cli('tenant', 'show', 'beta', '--json')).stdout).status).toBe('suspended');
    expect((await cli('tenant', 'resume', 'beta')).code).toBe(0);
    expect(JSON.parse((await cli('tenant', 'show', 'beta', '--json')).stdout).status).toBe('active');
    const dry = await cli('tenant', 'delete', 'beta', '--dry-run');
    expect(dry.stdout).toMatch(/Would delete tenant beta/);
    expect(await names()).toContain('beta');
    expect((await cli('tenant', 'delete', 'beta', '--yes')).code).toBe(0);
    expect(await names()).not.toContain('beta');
    const gone = await cli('tenant', 'show', 'beta');
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/tenant_not_found/);
  });

  it('shows the effective configuration with the database password masked', async () => {
    const r = await runCli(['config', 'show', '--json'], { ...env.env, CUSTOS_DATABASE_URL: 'postgres://svc:hunter2-secret@127.0.0.1:5432/test' });
    expect(r.code).toBe(0);
    const shown = JSON.parse(r.stdout);
    expect(shown.databaseUrl).toEqual({ value: 'postgres://svc:****@127.0.0.1:5432/test', source: 'env' });
    expect(r.stdout).not.toContain('hunter2-secret');
    const flag = await runCli(['--data-dir', env.dataDir, 'config', 'show', '--json'], { CUSTOS_PORT: '9555' });
    expect(JSON.parse(flag.stdout).port).toEqual({ value: 9555, source: 'env' });
  });

  it('refuses to work on a data directory that was never initialised', async () => {
    const r = await runCli(['tenant', 'list'], { ...env.env, CUSTOS_DATA_DIR: `${env.dataDir}-missing` });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/not initialised; run custos init/);
  });

  it('prints help and version with exit 0', async () => {
    const help = await cli('--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: custos/);
    expect((await cli('tenant', 'create', '--help')).stdout).toMatch(/--admin-email/);
    expect((await cli('--version')).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });
});
