import { readFileSync, readdirSync, statSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/core/config.js';
import { createLogger } from '../../src/core/logger.js';
import { ohashes } from '../../src/data/ohash.js';
import { startServer, type RunningServer } from '../../src/http/server.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { makeApp } from '../helpers/app.js';
import { runCli } from '../helpers/cli.js';
import { createUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

describeEachStorage('custos login / lists / records (CLI)', (kind) => {
  let env: TestEnv;
  let rt: Runtime;
  let server: RunningServer;
  let app: FastifyInstance;
  let profileDir: string;
  let work: string;
  const cli = (args: string[], input?: string) => runCli(args, { ...env.env, CUSTOS_PROFILE_DIR: profileDir }, { input });
  const emails = (i: number) => `Person.${i}+promo@Example.org`;
  const phone = (i: number) => `+44 20 7946 ${String(1000 + i).slice(-4)}`;

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    rt = await openRuntime(loadConfig({ env: { ...env.env, CUSTOS_PORT: '0' } }).config, { logger: createLogger('silent'), migrateTenants: true });
    server = await startServer(rt);
    app = await makeApp(rt);
    profileDir = mkdtempSync(path.join(tmpdir(), 'custos-profile-'));
    work = mkdtempSync(path.join(tmpdir(), 'custos-work-'));
  });
  afterAll(async () => {
    await app.close();
    await server.stop();
    await env.cleanup();
  });

  it('logs in an API user (changing its temporary password on the way) and keeps the credentials encrypted', async () => {
    const t = await tenantWithAdmin(app, rt, 'clico');
    const u = await createUser(rt, t, t.admin.cookie, { username: 'loader', kind: 'api', roles: ['data-director'] });
    const newPassword = 'A-new long password for the loader!';
    const r = await cli(['login', '--url', server.url, '--tenant', 'clico', '--user', 'loader', '--ca', env.config.tlsCert, '--password-stdin', '--json'], `${u.temporaryPassword}\n${newPassword}\n`);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ url: server.url, tenant: 'clico', username: 'loader', kind: 'api' });
    for (const f of readdirSync(profileDir)) {
      expect(statSync(path.join(profileDir, f)).mode & 0o077, f).toBe(0);
      expect(readFileSync(path.join(profileDir, f)).includes(Buffer.from(newPassword)), f).toBe(false);
    }
    const bad = await cli(['login', '--url', server.url, '--tenant', 'clico', '--user', 'loader', '--ca', env.config.tlsCert, '--password-stdin'], 'wrong password entirely\n');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid_credentials/);
  });

  it('creates a list and imports a CSV in batches with progress, then exports it', async () => {
    const fieldsFile = path.join(work, 'fields.json');
    writeFileSync(fieldsFile, JSON.stringify([{ name: 'FIRST_NAME', type: 'string', classification: 'pii' }, { name: 'CITY', type: 'string', classification: 'plain' }, { name: 'SCORE', type: 'number', classification: 'plain' }]));
    const created = await cli(['lists', 'create', 'Customers', '--fields', fieldsFile, '--json']);
    expect(created.code, created.stderr).toBe(0);
    const csv = ['EMAIL_ADDRESS_,MOBILE_NUMBER_,CUSTOMER_ID_,FIRST_NAME,CITY,SCORE', ...Array.from({ length: 2500 }, (_, i) => `${emails(i)},${phone(i)},C${i},Name ${i},"City, ${i % 7}",${i}`)].join('\n');
    const file = path.join(work, 'customers.csv');
    writeFileSync(file, csv);
    const imported = await cli(['records', 'import', file, '--list', 'Customers', '--batch-size', '1000', '--json']);
    expect(imported.code, imported.stderr).toBe(0);
    expect(JSON.parse(imported.stdout)).toEqual({ inserted: 2500, updated: 0, skipped: 0, records: 2500 });
    expect(imported.stderr).toMatch(/importing: \d+\/\d+/);

    const out = path.join(work, 'out.csv');
    const exported = await cli(['records', 'export', '--list', 'Customers', '--format', 'csv', '--out', out]);
    expect(exported.code, exported.stderr).toBe(0);
    const lines = readFileSync(out, 'utf8').trimEnd().split('\r\n');
    expect(lines).toHaveLength(2501);
    expect(lines.some((l) => l.startsWith(`${emails(42)},${phone(42)},C42,`))).toBe(true);
    expect(lines.some((l) => l.includes('"City, 3"'))).toBe(true);

    const listed = await cli(['lists', 'list', '--json']);
    expect(JSON.parse(listed.stdout)).toEqual([expect.objectContaining({ name: 'Customers', recordCount: 2500 })]);
  });

  it('stops at a batch with a bad record, naming its file line, and applies nothing of that batch', async () => {
    const file = path.join(work, 'bad.csv');
    writeFileSync(file, ['EMAIL_ADDRESS_,CUSTOMER_ID_,SCORE', 'fresh1@x.example,N1,1', 'fresh2@x.example,N2,two', 'fresh3@x.example,N3,3'].join('\n'));
    const r = await cli(['records', 'import', file, '--list', 'Customers']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/line 3: SCORE: must be a number/);
    expect(r.stderr).not.toMatch(/two/);
    const listed = await cli(['lists', 'list', '--json']);
    expect(JSON.parse(listed.stdout)[0].recordCount).toBe(2500);
  });

  it('leaves no email or phone in clear in the data directory, while the oHash is there', async () => {
    if (kind !== 'sqlite') return;
    const all: Buffer[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else all.push(readFileSync(p));
      }
    };
    walk(env.dataDir);
    const blob = Buffer.concat(all);
    for (const needle of [emails(42), emails(42).toLowerCase(), 'person.42', phone(42), '2079461042']) expect(blob.includes(Buffer.from(needle)), needle).toBe(false);
    expect(blob.includes(Buffer.from(ohashes(emails(42)).sha256))).toBe(true);
  });

  it('sends a batch again when its connection fails, whether or not the server applied it, and gives up after three retries saying where to resume', async () => {
    // A TCP proxy in front of the server (TLS passes through it) that cuts the next `cuts` connections carrying a
    // batch: on 'request', once 20 KB of it are through (the server never gets it whole); on 'response', at the first
    // bytes of the answer (the server applied it, the client never hears so).
    const proxy = { mode: 'request' as 'request' | 'response', cuts: 0 };
    const upstreamPort = Number(new URL(server.url).port);
    const tcp = createServer((client: Socket) => {
      const upstream = connect(upstreamPort, '127.0.0.1');
      let sent = 0;
      const cut = () => {
        proxy.cuts--;
        client.resetAndDestroy();
        upstream.destroy();
      };
      client.on('data', (d: Buffer) => {
        sent += d.length;
        if (proxy.mode === 'request' && proxy.cuts > 0 && sent > 20_000) return cut();
        upstream.write(d);
      });
      upstream.on('data', (d: Buffer) => {
        if (proxy.mode === 'response' && proxy.cuts > 0 && sent > 20_000) return cut();
        client.write(d);
      });
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    try {
      const via = `https://127.0.0.1:${(tcp.address() as AddressInfo).port}`;
      const login = await cli(['login', '--url', via, '--tenant', 'clico', '--user', 'loader', '--ca', env.config.tlsCert, '--password-stdin'], 'A-new long password for the loader!\n');
      expect(login.code, login.stderr).toBe(0);
      expect((await cli(['lists', 'create', 'Retried', '--json'])).code).toBe(0);
      const csv = (from: number) => ['EMAIL_ADDRESS_,CUSTOMER_ID_', ...Array.from({ length: 2000 }, (_, i) => `retry${from + i}@retry.example,R${from + i}`)].join('\n');
      const count = async () => (JSON.parse((await cli(['lists', 'list', '--json'])).stdout) as Array<{ name: string; recordCount: number }>).find((l) => l.name === 'Retried')!.recordCount;

      // Cut before the server had the batch: sent again, applied once.
      writeFileSync(path.join(work, 'retry-a.csv'), csv(0));
      Object.assign(proxy, { mode: 'request', cuts: 1 });
      const a = await cli(['records', 'import', path.join(work, 'retry-a.csv'), '--list', 'Retried', '--match-key', 'CUSTOMER_ID_', '--batch-size', '1000', '--json']);
      expect(a.code, a.stderr).toBe(0);
      expect(proxy.cuts).toBe(0);
      expect(a.stderr).toMatch(/the connection failed \(\w+\) while sending the batch starting at line 2; sending it again \(retry 1 of 3\)/);
      expect(JSON.parse(a.stdout)).toEqual({ inserted: 2000, updated: 0, skipped: 0, records: 2000 });
      expect(await count()).toBe(2000);

      // Cut after the server applied the batch: sent again, it finds its records and writes the same values.
      writeFileSync(path.join(work, 'retry-b.csv'), csv(2000));
      Object.assign(proxy, { mode: 'response', cuts: 1 });
      const b = await cli(['records', 'import', path.join(work, 'retry-b.csv'), '--list', 'Retried', '--match-key', 'CUSTOMER_ID_', '--batch-size', '1000', '--json']);
      expect(b.code, b.stderr).toBe(0);
      expect(proxy.cuts).toBe(0);
      expect(JSON.parse(b.stdout)).toEqual({ inserted: 1000, updated: 1000, skipped: 0, records: 2000 });
      expect(await count()).toBe(4000);

      // Every attempt cut: the import stops after three retries, naming the batch's line and what was imported before it.
      writeFileSync(path.join(work, 'retry-c.csv'), csv(4000));
      Object.assign(proxy, { mode: 'request', cuts: 100 });
      const c = await cli(['records', 'import', path.join(work, 'retry-c.csv'), '--list', 'Retried', '--match-key', 'CUSTOMER_ID_', '--batch-size', '1000']);
      expect(c.code).toBe(1);
      expect(proxy.cuts).toBe(96);
      expect(c.stderr).toMatch(/retry 3 of 3/);
      expect(c.stderr).toMatch(/custos: the batch starting at line 2 could not be sent \(the connection failed \(\w+\) 4 times\); 0 record\(s\) before it were imported.*\(service_unavailable\)/);
      proxy.cuts = 0;
      expect(await count()).toBe(4000);
    } finally {
      await new Promise((resolve) => tcp.close(resolve));
    }
  });

  it('logs out: the stored credentials are gone and commands need a new login', async () => {
    const r = await cli(['logout']);
    expect(r.code).toBe(0);
    expect(readdirSync(profileDir)).toEqual([]);
    const after = await cli(['lists', 'list']);
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/not logged in/);
  });
});
