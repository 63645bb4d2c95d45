import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CONFIG_FILE_NAME, CONFIG_SPEC, describeConfig, loadConfig } from '../../src/core/config.js';
import { CustosError } from '../../src/core/errors.js';

describe('configuration', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'custos-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const writeFile = (obj: unknown) => writeFileSync(path.join(dir, CONFIG_FILE_NAME), JSON.stringify(obj));

  it('uses defaults when nothing is set', () => {
    const { config, sources } = loadConfig({ env: {}, cwd: dir });
    expect(config.dataDir).toBe(path.join(dir, '.custos'));
    expect(config.port).toBe(8443);
    expect(config.host).toBe('127.0.0.1');
    expect(config.publicUrl).toBe('https://127.0.0.1:8443');
    expect(config.databaseUrl).toBeUndefined();
    expect(config.tlsCert).toBe(path.join(dir, '.custos', 'tls', 'cert.pem'));
    expect(config.masterKeyFile).toBe(path.join(dir, '.custos', 'master.key'));
    expect(sources.port).toBe('default');
  });

  it('applies precedence flag > environment > config file > default', () => {
    writeFile({ port: 9001, host: '0.0.0.0', logLevel: 'debug' });
    const env = { CUSTOS_DATA_DIR: dir, CUSTOS_PORT: '9002', CUSTOS_HOST: '127.0.0.2' };
    const { config, sources } = loadConfig({ env, flags: { port: '9003' }, cwd: dir });
    expect(config.port).toBe(9003);
    expect(sources.port).toBe('flag');
    expect(config.host).toBe('127.0.0.2');
    expect(sources.host).toBe('env');
    expect(config.logLevel).toBe('debug');
    expect(sources.logLevel).toBe('file');
    expect(config.shutdownTimeoutMs).toBe(10000);
    expect(sources.shutdownTimeoutMs).toBe('default');
  });

  it('parses lists from the environment and the file', () => {
    const a = loadConfig({ env: { CUSTOS_DATA_DIR: dir, CUSTOS_TRUSTED_PROXIES: '10.0.0.1, 10.1.0.0/16 ,' }, cwd: dir });
    expect(a.config.trustedProxies).toEqual(['10.0.0.1', '10.1.0.0/16']);
    writeFile({ trustedProxies: ['::1'] });
    const b = loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir });
    expect(b.config.trustedProxies).toEqual(['::1']);
  });

  it.each([
    [{ CUSTOS_PORT: '70000' }, 'port'],
    [{ CUSTOS_PORT: '84x3' }, 'port'],
    [{ CUSTOS_PORT: '-1' }, 'port'],
    [{ CUSTOS_LOG_LEVEL: 'loud' }, 'logLevel'],
    [{ CUSTOS_DATABASE_URL: 'mysql://x' }, 'databaseUrl'],
    [{ CUSTOS_DATABASE_SCHEMA: 'Bad-Schema' }, 'databaseSchema'],
    [{ CUSTOS_DATABASE_POOL_SIZE: '0' }, 'databasePoolSize'],
  ])('rejects invalid value %o', (env, key) => {
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir, ...env }, cwd: dir })).toThrowError(
      expect.objectContaining({ code: 'invalid_configuration', message: expect.stringContaining(key) }),
    );
  });

  it('rejects a config file with unknown keys, a dataDir key, or broken JSON', () => {
    writeFile({ prot: 1 });
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toThrow(/unknown key prot/);
    writeFile({ dataDir: '/elsewhere' });
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toThrow(/dataDir/);
    writeFileSync(path.join(dir, CONFIG_FILE_NAME), '{ not json');
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toThrow(CustosError);
    writeFileSync(path.join(dir, CONFIG_FILE_NAME), '[1,2]');
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toThrow(/JSON object/);
  });

  it('masks the database password when described', () => {
    const loaded = loadConfig({ env: { CUSTOS_DATA_DIR: dir, CUSTOS_DATABASE_URL: 'postgres://app:s3cret-pw@db.internal:5432/custos' }, cwd: dir });
    const rows = describeConfig(loaded);
    const db = rows.find((r) => r.key === 'databaseUrl');
    expect(db?.value).toBe('postgres://app:****@db.internal:5432/custos');
    expect(JSON.stringify(rows)).not.toContain('s3cret-pw');
  });

  it('still reads a renamed setting by its former name, after the current one (exportThreads → dataThreads)', () => {
    writeFile({ exportThreads: 5 });
    expect(loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toMatchObject({ config: { dataThreads: 5 }, sources: { dataThreads: 'file' } });
    expect(loadConfig({ env: { CUSTOS_DATA_DIR: dir, CUSTOS_EXPORT_THREADS: '3' }, cwd: dir })).toMatchObject({ config: { dataThreads: 3 }, sources: { dataThreads: 'env' } });
    expect(loadConfig({ env: { CUSTOS_DATA_DIR: dir, CUSTOS_EXPORT_THREADS: '3', CUSTOS_DATA_THREADS: '1' }, cwd: dir }).config.dataThreads).toBe(1);
    writeFile({ exportThreads: 5, dataThreads: 4 });
    expect(loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir }).config.dataThreads).toBe(4);
    // Checked like the current name.
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir, CUSTOS_EXPORT_THREADS: '-1' }, cwd: dir })).toThrow(/CUSTOS_EXPORT_THREADS/);
    writeFile({ exportThreadz: 5 });
    expect(() => loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir })).toThrow(/unknown key exportThreadz/);
  });

  it('describes every key of the spec, each with an environment variable', () => {
    const rows = describeConfig(loadConfig({ env: { CUSTOS_DATA_DIR: dir }, cwd: dir }));
    expect(rows.map((r) => r.key).sort()).toEqual(Object.keys(CONFIG_SPEC).sort());
    for (const r of rows) expect(r.env).toMatch(/^CUSTOS_[A-Z_]+$/);
  });
});

describe('README configuration reference', () => {
  it('lists every configuration key with its environment variable', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    for (const [key, spec] of Object.entries(CONFIG_SPEC)) {
      expect(readme, key).toContain(`\`${key}\``);
      expect(readme, spec.env).toContain(`\`${spec.env}\``);
    }
  });
});
