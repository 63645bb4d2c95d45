import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync, writeFileSync, type Dirent } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/logger.js';
import { ciphertextGeneration } from '../../src/crypto/field-cipher.js';
import { stagedMasterKeyFile } from '../../src/ops/master-key.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { runCli } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, postgresUrl, type TestEnv } from '../helpers/storage-kinds.js';

/** Every regular file under `dir` (a live database server removes files as it goes: what vanished is skipped). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return out;
    throw err;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(full));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** A file's bytes, or null if it was removed since it was listed. */
function readIfPresent(file: string): Buffer | null {
  try {
    return readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

describeEachStorage('custos keys (CLI)', (kind) => {
  let env: TestEnv;
  let tenantId: string;
  const cli = (args: string[], extra: Record<string, string> = {}) => runCli(args, { ...env.env, ...extra });
  const withRt = async <T>(fn: (rt: Runtime) => Promise<T>): Promise<T> => {
    const rt = await openRuntime(loadConfig({ env: env.env }).config, { logger: createLogger('silent') });
    try {
      return await fn(rt);
    } finally {
      await rt.close();
    }
  };
  const readAll = () =>
    withRt(async (rt) =>
      rt.storage.tenant(tenantId).transaction(async (db) => {
        const rows = await db.selectFrom('tenant_secrets').select(['name', 'ciphertext']).orderBy('name').execute();
        const values = new Map<string, string>();
        for (const r of rows) values.set(r.name, (await rt.secrets.get(db, tenantId, 'bulk', r.name)).toString());
        return { values, generations: new Set(rows.map((r) => ciphertextGeneration(r.ciphertext))) };
      }),
    );

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    expect((await cli(['init'])).code).toBe(0);
    const created = await cli(['tenant', 'create', 'keyco', '--edition', 'enterprise', '--admin-email', 'k@keyco.example', '--json']);
    tenantId = JSON.parse(created.stdout).id;
    await withRt((rt) =>
      rt.storage.tenant(tenantId).transaction(async (db) => {
        for (let i = 0; i < 600; i++) await rt.secrets.put(db, tenantId, 'bulk', `s${String(i).padStart(4, '0')}`, `PLAINTEXT-MARKER-${i}-zq81`);
      }),
    );
  });
  afterAll(async () => env.cleanup());

  it('lists the key ring as JSON without key material', async () => {
    const r = await cli(['keys', 'list', '--tenant', 'keyco', '--json']);
    expect(r.code).toBe(0);
    const view = JSON.parse(r.stdout);
    expect(view).toMatchObject({ mode: 'provider', state: 'enabled', currentVersion: 1 });
    expect(r.stdout).not.toMatch(/wrapped|BEGIN/);
    expect((await cli(['keys', 'list', '--tenant', 'nobody'])).code).toBe(1);
  });

  it('finds no plaintext anywhere in the data directory (databases, WAL files) or the database server files', async () => {
    const marker = Buffer.from('PLAINTEXT-MARKER-');
    if (kind === 'sqlite') {
      // Keep a connection open after fresh writes so the WAL file is there to be searched too.
      await withRt(async (rt) => {
        await rt.storage.tenant(tenantId).transaction((db) => rt.secrets.put(db, tenantId, 'bulk', 'fresh', 'PLAINTEXT-MARKER-fresh'));
        const files = filesUnder(env.dataDir);
        const wal = files.filter((f) => f.endsWith('.db-wal'));
        expect(wal.length).toBeGreaterThan(0);
        expect(wal.some((f) => statSync(f).size > 0)).toBe(true);
        for (const f of files) expect(readFileSync(f).includes(marker), f).toBe(false);
      });
      await withRt((rt) => rt.storage.tenant(tenantId).transaction((db) => rt.secrets.delete(db, 'bulk', 'fresh')));
    } else {
      const client = new pg.Client({ connectionString: postgresUrl()! });
      await client.connect();
      try {
        await client.query('CHECKPOINT');
        const dir = (await client.query<{ data_directory: string }>('SHOW data_directory')).rows[0]!.data_directory;
        const files = filesUnder(dir).filter((f) => (statSync(f, { throwIfNoEntry: false })?.size ?? 0) < 512 * 1024 * 1024);
        expect(files.some((f) => f.includes('pg_wal'))).toBe(true);
        for (const f of files) expect(readIfPresent(f)?.includes(marker) ?? false, f).toBe(false);
      } finally {
        await client.end();
      }
    }
  });

  it('rotates and keeps every value readable', async () => {
    const r = await cli(['keys', 'rotate', '--tenant', 'keyco', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ version: 2, rewrapped: 1 });
    const { values } = await readAll();
    expect(values.get('s0599')).toBe('PLAINTEXT-MARKER-599-zq81');
  });

  it('re-encryption killed with SIGKILL resumes and finishes, everything readable', async () => {
    const killed = await cli(['keys', 'reencrypt', '--tenant', 'keyco', '--batch-size', '100'], { CUSTOS_FAILPOINT: 'reencrypt:after-batch' });
    expect(killed.signal).toBe('SIGKILL');
    const mid = await readAll();
    expect(mid.generations).toEqual(new Set([1, 2])); // half moved, all readable
    expect(mid.values.size).toBe(600);
    const done = await cli(['keys', 'reencrypt', '--tenant', 'keyco', '--batch-size', '100', '--json']);
    expect(done.code, done.stderr).toBe(0);
    const report = JSON.parse(done.stdout);
    expect(report).toMatchObject({ resumed: true, state: 'finished', processed: 600, total: 600 });
    expect(done.stderr).toMatch(/re-encrypting: 600\/600/);
    const after = await readAll();
    expect(after.generations).toEqual(new Set([2]));
    for (let i = 0; i < 600; i += 57) expect(after.values.get(`s${String(i).padStart(4, '0')}`)).toBe(`PLAINTEXT-MARKER-${i}-zq81`);
  });

  it('imports customer key material wrapped by openssl, then disables and enables it', async () => {
    const dir = env.dataDir;
    const pub = path.join(dir, 'import.pub.pem');
    const params = await cli(['keys', 'import-params', '--tenant', 'keyco', '--out', pub, '--json']);
    expect(params.code, params.stderr).toBe(0);
    expect(JSON.parse(params.stdout).wrappingAlgorithm).toBe('RSAES_OAEP_SHA_256');
    const material = path.join(dir, 'customer.key');
    writeFileSync(material, execFileSync('openssl', ['rand', '32']));
    const wrapped = path.join(dir, 'customer.key.wrapped');
    execFileSync('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', pub, '-in', material, '-out', wrapped, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256', '-pkeyopt', 'rsa_mgf1_md:sha256']);
    const imported = await cli(['keys', 'import', '--tenant', 'keyco', '--file', wrapped, '--json']);
    expect(imported.code, imported.stderr).toBe(0);
    expect(JSON.parse((await cli(['keys', 'list', '--tenant', 'keyco', '--json'])).stdout)).toMatchObject({ mode: 'customer', currentVersion: 3 });
    expect((await readAll()).values.get('s0001')).toBe('PLAINTEXT-MARKER-1-zq81');

    expect((await cli(['keys', 'disable', '--tenant', 'keyco'])).code).toBe(0);
    await expect(readAll()).rejects.toMatchObject({ code: 'key_disabled' });
    const re = await cli(['keys', 'reencrypt', '--tenant', 'keyco']);
    expect(re.code).toBe(1);
    expect(re.stderr).toMatch(/key_disabled/);
    expect((await cli(['keys', 'enable', '--tenant', 'keyco'])).code).toBe(0);
    expect((await readAll()).values.size).toBe(600);
    const bad = await cli(['keys', 'schedule-deletion', '--tenant', 'keyco', '--days', '3']);
    expect(bad.code).toBe(2);
  });

  it.each(['rotate-master:after-stage', 'rotate-master:after-commit'])('a master-key rotation killed at %s is resolved by the next start', async (point) => {
    const before = readFileSync(env.config.masterKeyFile);
    const killed = await cli(['keys', 'rotate-master'], { CUSTOS_FAILPOINT: point });
    expect(killed.signal).toBe('SIGKILL');
    const staged = readFileSync(stagedMasterKeyFile(env.config.masterKeyFile));
    // The next start keeps the old key if the rotation did not commit, or moves to the staged one if it did.
    expect((await cli(['tenant', 'list'])).code).toBe(0);
    const now = readFileSync(env.config.masterKeyFile);
    expect(now.equals(point === 'rotate-master:after-stage' ? before : staged)).toBe(true);
    expect((await readAll()).values.get('s0042')).toBe('PLAINTEXT-MARKER-42-zq81');
    const clean = await cli(['keys', 'rotate-master', '--json']);
    expect(clean.code, clean.stderr).toBe(0);
    expect((await readAll()).values.get('s0042')).toBe('PLAINTEXT-MARKER-42-zq81');
  });
});
