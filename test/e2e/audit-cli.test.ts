import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../../src/core/logger.js';
import { openRuntime } from '../../src/runtime.js';
import { runCli } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, postgresUrl, type TestEnv } from '../helpers/storage-kinds.js';

describeEachStorage('custos audit (CLI)', (kind) => {
  let env: TestEnv;
  let sinkDir: string;
  let tenantId: string;
  const cli = (...args: string[]) => runCli(args, env.env);

  /** Runs SQL on the tenant's store behind Custos's back: the SQLite file, or the PostgreSQL table. */
  async function tamper(statements: string[]): Promise<void> {
    if (kind === 'sqlite') {
      const db = new Database(path.join(env.dataDir, 'tenants', `${tenantId}.db`));
      try {
        for (const s of statements) db.exec(s);
      } finally {
        db.close();
      }
      return;
    }
    const client = new pg.Client({ connectionString: postgresUrl()! });
    await client.connect();
    try {
      for (const s of statements) await client.query(s.replaceAll('audit_', `"t_${tenantId}".audit_`));
    } finally {
      await client.end();
    }
  }

  beforeAll(async () => {
    sinkDir = mkdtempSync(path.join(tmpdir(), 'custos-sink-'));
    env = await makeTestEnv(kind, { CUSTOS_AUDIT_CHECKPOINT_DIR: sinkDir });
    expect((await cli('init')).code).toBe(0);
    const created = await cli('tenant', 'create', 'acme', '--edition', 'standard', '--admin-email', 'ops@acme.example', '--json');
    expect(created.code, created.stderr).toBe(0);
    tenantId = (JSON.parse(created.stdout) as { id: string }).id;
    // Some activity, recorded through the service as the server would.
    const rt = await openRuntime(env.config, { logger: createLogger('silent') });
    try {
      for (let i = 0; i < 20; i++) {
        await rt.audit.record(tenantId, {
          type: i % 2 ? 'auth.login.failure' : 'iam.user.update',
          outcome: i % 2 ? 'failure' : 'success',
          ...(i % 2 ? { code: 'invalid_credentials' } : {}),
          actor: { principal: { type: 'user', id: `u${i}`, name: i === 4 ? 'Doe, "J"' : `user${i}` }, source: { ip: '198.51.100.4' } },
          change: { after: { email: `user${i}@acme.example`, password: 'never-stored-pw' }, sensitive: ['email'] },
        });
      }
    } finally {
      await rt.close();
    }
  });
  afterAll(async () => {
    await env.cleanup();
    rmSync(sinkDir, { recursive: true, force: true });
  });

  it('verifies a clean stream: exit 0 and an N/N summary', async () => {
    const r = await cli('audit', 'verify', '--tenant', 'acme');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Verifying the activity stream of tenant acme/);
    expect(r.stdout).toMatch(/^(\d+)\/\1 events valid$/m);
    expect(r.stdout).toMatch(/^note: truncation of the newest events cannot be detected without external checkpoints/m);
    expect(r.stdout).toMatch(/The activity stream is valid/);
    const json = JSON.parse((await cli('audit', 'verify', '--tenant', 'acme', '--json')).stdout) as { valid: boolean; events: number };
    expect(json.valid).toBe(true);
    expect(json.events).toBeGreaterThanOrEqual(20);
    expect((await cli('audit', 'verify', '--provider')).code).toBe(0);
  });

  it('checkpoints into the sink and verifies against it', async () => {
    const c = await cli('audit', 'checkpoint', '--tenant', 'acme', '--json');
    expect(c.code, c.stderr).toBe(0);
    const lines = readFileSync(path.join(sinkDir, `${tenantId}.jsonl`), 'utf8').trim().split('\n');
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ kind: 'checkpoint', stream: tenantId, v: 1 });
    const r = await cli('audit', 'verify', '--tenant', 'acme', '--checkpoints', sinkDir);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).not.toMatch(/^note:/m);
  });

  it('exports JSON Lines and CSV with filters, without secrets', async () => {
    const jsonl = await cli('audit', 'export', '--tenant', 'acme', '--format', 'jsonl', '--type', 'auth.*');
    expect(jsonl.code, jsonl.stderr).toBe(0);
    const events = jsonl.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; seq: number; change?: { after: { email: string; password: string } } });
    expect(events).toHaveLength(10);
    expect(events.every((e) => e.type === 'auth.login.failure')).toBe(true);
    expect(events[0]!.change!.after).toEqual({ email: expect.stringMatching(/^hmac-sha256:[0-9a-f]{64}$/), password: '[removed]' });
    expect(jsonl.stdout).not.toContain('never-stored-pw');
    expect(jsonl.stdout).not.toContain('@acme.example');

    const hash = await cli('audit', 'hash', '--tenant', 'acme', 'user1@acme.example');
    expect(hash.stdout.trim()).toBe(events[0]!.change!.after.email);

    const csv = await cli('audit', 'export', '--tenant', 'acme', '--format', 'csv', '--since', '2000-01-01T00:00:00Z', '--type', 'iam.user.update');
    expect(csv.code, csv.stderr).toBe(0);
    const rows = csv.stdout.split('\r\n').filter((l) => l !== '');
    expect(rows[0]).toMatch(/^seq,id,time,type,outcome,code,/);
    expect(rows).toHaveLength(11);
    expect(csv.stdout).toContain('"Doe, ""J"""');
    const none = await cli('audit', 'export', '--tenant', 'acme', '--format', 'jsonl', '--since', '2999-01-01T00:00:00Z');
    expect(none.stdout).toBe('');
  });

  it('manages retention and purges (dry run)', async () => {
    const show = await cli('audit', 'retention', '--tenant', 'acme', '--json');
    expect(JSON.parse(show.stdout)).toMatchObject({ edition: 'standard', effectiveDays: 32 });
    const tooMuch = await cli('audit', 'retention', '--tenant', 'acme', '--days', '400');
    expect(tooMuch.code).toBe(2);
    expect(tooMuch.stderr).toMatch(/up to 365 days \(validation_failed\)/);
    const ok = await cli('audit', 'retention', '--tenant', 'acme', '--days', '90', '--json');
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ overrideDays: 90, effectiveDays: 90 });
    const purge = await cli('audit', 'purge', '--dry-run', '--json');
    expect(purge.code, purge.stderr).toBe(0);
    const streams = (JSON.parse(purge.stdout) as { streams: { stream: string; purged: number }[] }).streams;
    expect(streams.map((s) => s.stream)).toEqual([tenantId, 'provider']);
    expect(streams.every((s) => s.purged === 0)).toBe(true);
    expect((await cli('audit', 'purge', '--tenant', 'acme')).stdout).toMatch(/tenant acme .*: purged 0 event\(s\) older than 90 days/);
  });

  it('refuses bad usage with exit 2', async () => {
    expect((await cli('audit', 'verify')).code).toBe(2);
    expect((await cli('audit', 'verify', '--tenant', 'acme', '--provider')).code).toBe(2);
    expect((await cli('audit', 'export', '--tenant', 'acme', '--format', 'xml')).code).toBe(2);
    expect((await cli('audit', 'export', '--tenant', 'acme', '--format', 'jsonl', '--since', 'last tuesday')).code).toBe(2);
  });

  it('exits 1 with the problem line after the store is tampered with directly', async () => {
    await tamper([`UPDATE audit_events SET body = replace(body, 'user6', 'admin') WHERE body LIKE '%user6%'`]);
    const r = await cli('audit', 'verify', '--tenant', 'acme');
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^modified: event \d+ \([0-9A-Z]{26}\) does not match its hash/m);
    expect(r.stdout).toMatch(/^(\d+)\/(\d+) events valid$/m);
    const [, valid, total] = /^(\d+)\/(\d+) events valid$/m.exec(r.stdout)!;
    expect(Number(valid)).toBe(Number(total) - 1);
    expect(r.stdout).toMatch(/The activity stream is NOT valid: 1 problem/);
    expect(r.stderr).toMatch(/failed verification \(audit_chain_invalid\)/);

    await tamper([`DELETE FROM audit_events WHERE body LIKE '%"user9"%'`]);
    const r2 = await cli('audit', 'verify', '--tenant', 'acme', '--json');
    expect(r2.code).toBe(1);
    expect((JSON.parse(r2.stdout) as { problems: { kind: string }[] }).problems.map((p) => p.kind)).toEqual(['modified', 'missing']);
  });

  it('detects a truncated tail only with --checkpoints', async () => {
    // Rewind everything after the checkpoint... but first a fresh checkpoint of a clean tenant.
    const created = await cli('tenant', 'create', 'beta', '--edition', 'enterprise', '--admin-email', 'ops@beta.example', '--json');
    tenantId = (JSON.parse(created.stdout) as { id: string }).id;
    const rt = await openRuntime(env.config, { logger: createLogger('silent') });
    try {
      for (let i = 0; i < 10; i++) await rt.audit.record(tenantId, { type: 'data.record.read', outcome: 'success', actor: { principal: { type: 'api-user', id: 'api1' } } });
    } finally {
      await rt.close();
    }
    expect((await cli('audit', 'checkpoint', '--tenant', 'beta')).code).toBe(0);
    await tamper([
      'DELETE FROM audit_events WHERE seq > 8',
      'DELETE FROM audit_checkpoints WHERE seq > 8',
      'UPDATE audit_chain_head SET seq = 8, hash = (SELECT hash FROM audit_events WHERE seq = 8)',
    ]);
    const blind = await cli('audit', 'verify', '--tenant', 'beta');
    expect(blind.code).toBe(0);
    expect(blind.stdout).toMatch(/note: truncation of the newest events cannot be detected without external checkpoints/);
    const seen = await cli('audit', 'verify', '--tenant', 'beta', '--checkpoints', sinkDir);
    expect(seen.code).toBe(1);
    expect(seen.stdout).toMatch(/^truncated: .* names event \d+, but the stream ends at event 8/m);
  });
});
