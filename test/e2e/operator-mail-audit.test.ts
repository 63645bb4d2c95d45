import { afterAll, beforeAll, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/audit-types.js';
import { createLogger } from '../../src/core/logger.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { runCli } from '../helpers/cli.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

/** Operator commands that read a tenant's mail or key-import parameters are visible to the tenant. */
describeEachStorage('operator CLI actions in the activity streams', (kind) => {
  let env: TestEnv;
  let tenantId: string;
  let resetLink: string;
  const deviceCode = 'Verification code: 918273';
  const cli = (...args: string[]) => runCli(args, env.env);
  const withRt = async <T>(fn: (rt: Runtime) => Promise<T>): Promise<T> => {
    const rt = await openRuntime(env.config, { logger: createLogger('silent') });
    try {
      return await fn(rt);
    } finally {
      await rt.close();
    }
  };
  /** Events of `type`, newest first: in the tenant's stream, or the provider's with `null`. */
  const eventsOf = (stream: string | null, type: string): Promise<AuditEvent[]> => withRt(async (rt) => (await rt.audit.query(stream, { limit: 100, types: [type] })).events);

  beforeAll(async () => {
    env = await makeTestEnv(kind);
    const created = await cli('tenant', 'create', 'mailco', '--edition', 'standard', '--admin-email', 'ops@mailco.example', '--json');
    expect(created.code, created.stderr).toBe(0);
    tenantId = (JSON.parse(created.stdout) as { id: string }).id;
    await withRt(async (rt) => {
      // A pending password-reset link, as a forgotten-password request leaves it, and a device code.
      await rt.login.forgotPassword({ id: tenantId, name: 'mailco' }, { username: 'admin' });
      await rt.storage.tenant(tenantId).transaction((db) =>
        rt.mail.enqueue(db, tenantId, { kind: 'auth.device-code', to: 'jane@mailco.example', subject: 'Your Custos verification code', text: `Someone is signing in.\n\n${deviceCode}\n` }),
      );
      const reset = (await rt.mail.list(tenantId, { kind: 'auth.password-reset' }))[0]!;
      resetLink = /https:\S+token=\S+/.exec(reset.text!)![0];
    });
  });
  afterAll(async () => env.cleanup());

  it('mail list shows metadata only and records the read in the tenant and provider streams', async () => {
    const r = await cli('mail', 'list', '--tenant', 'mailco');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('Reset your Custos password');
    expect(r.stdout).toContain('jane@mailco.example');
    expect(r.stdout).toContain('Your Custos verification code');
    expect(r.stdout).not.toContain(resetLink);
    expect(r.stdout).not.toContain('token=');
    expect(r.stdout).not.toContain(deviceCode);
    expect(r.stdout).not.toContain('Temporary password');

    const json = await cli('mail', 'list', '--tenant', 'mailco', '--json');
    expect(json.code, json.stderr).toBe(0);
    const listed = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
    expect(listed.length).toBeGreaterThanOrEqual(2);
    for (const m of listed) {
      expect(m).not.toHaveProperty('text');
      expect(m).toMatchObject({ id: expect.any(String), kind: expect.any(String), to: expect.any(String), subject: expect.any(String), state: 'stored', createdAt: expect.any(String) });
    }
    expect(json.stdout).not.toContain(resetLink);
    expect(json.stdout).not.toContain(deviceCode);

    const tenantEvents = await eventsOf(tenantId, 'mail.outbox.read');
    expect(tenantEvents).toHaveLength(2);
    for (const e of tenantEvents) {
      expect(e).toMatchObject({ outcome: 'success', principal: { type: 'operator' }, resource: { type: 'mail-outbox', id: tenantId }, details: { messages: listed.length, bodies: false, bodiesShown: 0 } });
    }
    const providerEvents = await eventsOf(null, 'mail.outbox.read');
    expect(providerEvents).toHaveLength(2);
    for (const e of providerEvents) {
      expect(e).toMatchObject({ outcome: 'success', principal: { type: 'operator' }, resource: { type: 'mail-outbox', id: tenantId }, details: { messages: listed.length, bodies: false, tenantId } });
    }
  });

  it('mail list --bodies shows the bodies and the tenant sees that its mail bodies were read', async () => {
    const r = await cli('mail', 'list', '--tenant', 'mailco', '--bodies');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(resetLink);
    expect(r.stdout).toContain(deviceCode);

    const kindOnly = await cli('mail', 'list', '--tenant', 'mailco', '--kind', 'auth.device-code', '--bodies', '--json');
    expect(kindOnly.code, kindOnly.stderr).toBe(0);
    expect(JSON.parse(kindOnly.stdout)).toEqual([expect.objectContaining({ kind: 'auth.device-code', text: expect.stringContaining(deviceCode) })]);

    const [last, first] = await eventsOf(tenantId, 'mail.outbox.read');
    expect(first).toMatchObject({ principal: { type: 'operator' }, details: { bodies: true, bodiesShown: expect.any(Number) } });
    expect((first!.details as { bodiesShown: number; messages: number }).bodiesShown).toBeGreaterThanOrEqual(2);
    expect(last).toMatchObject({ principal: { type: 'operator' }, details: { messages: 1, bodies: true, bodiesShown: 1, filter: { kind: 'auth.device-code' } } });
    const [provider] = await eventsOf(null, 'mail.outbox.read');
    expect(provider).toMatchObject({ details: { messages: 1, bodies: true, bodiesShown: 1, tenantId } });
  });

  it('an unknown tenant is refused and nothing is recorded', async () => {
    const before = (await eventsOf(null, 'mail.outbox.read')).length;
    const r = await cli('mail', 'list', '--tenant', 'nobody');
    expect(r.code).toBe(1);
    expect((await eventsOf(null, 'mail.outbox.read')).length).toBe(before);
  });

  it('keys import-params is recorded as keys.import.params by an operator in the tenant stream', async () => {
    const r = await cli('keys', 'import-params', '--tenant', 'mailco', '--json');
    expect(r.code, r.stderr).toBe(0);
    const { expiresAt } = JSON.parse(r.stdout) as { expiresAt: string };
    const events = await eventsOf(tenantId, 'keys.import.params');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ outcome: 'success', principal: { type: 'operator' }, resource: { type: 'key-ring', id: tenantId }, details: { expiresAt } });
    expect(await eventsOf(null, 'keys.import.params')).toEqual([expect.objectContaining({ principal: expect.objectContaining({ type: 'operator' }), details: { expiresAt, tenantId } })]);
  });
});
