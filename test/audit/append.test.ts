import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/audit-types.js';
import { SYSTEM_ACTOR } from '../../src/core/principal.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';
import { alice, asOwner, ev, newTenant, storedBodies } from './helpers.js';

describeEachStorage('activity stream: append in the caller transaction', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
    tenant = await newTenant(rt);
  });
  afterAll(async () => rt.close());

  const userCount = (username: string) =>
    rt.storage.tenant(tenant).transaction(async (db) => (await db.selectFrom('users').select('id').where('username', '=', username).execute()).length);
  const eventCount = async () => (await storedBodies(rt, tenant)).length;
  const insertUser = (db: Parameters<Parameters<ReturnType<TestRuntime['storage']['tenant']>['transaction']>[0]>[0], username: string) =>
    db
      .insertInto('users')
      .values({ id: `id-${username}`, username, email: `${username}@example.com`, kind: 'console', status: 'active', password_hash: null, must_change_password: 0, password_expires_at: null, created_at: 1, updated_at: 1 })
      .execute();

  it('commits the change and its event together and returns the event with its position', async () => {
    const before = await eventCount();
    const event = await rt.storage.tenant(tenant).transaction(async (db) => {
      await insertUser(db, 'carol');
      return rt.audit.append(db, tenant, ev('iam.user.create', { resource: { type: 'user', id: 'id-carol', name: 'carol' } }));
    });
    expect(await userCount('carol')).toBe(1);
    expect(await eventCount()).toBe(before + 1);
    expect(event).toMatchObject({ type: 'iam.user.create', tenant, outcome: 'success', principal: { type: 'user', name: 'alice' }, resource: { id: 'id-carol' } });
    expect(event.id).toMatch(/^[0-9A-Z]{26}$/);
    expect(event.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(event.seq).toBe(before + 1);
    expect(event.source).toEqual(alice.source);
    expect(event.request).toEqual(alice.request);
  });

  it('keeps neither the change nor the event when the transaction then throws', async () => {
    const before = await eventCount();
    await expect(
      rt.storage.tenant(tenant).transaction(async (db) => {
        await insertUser(db, 'dave');
        await rt.audit.append(db, tenant, ev());
        throw new Error('boom after the append');
      }),
    ).rejects.toThrow('boom after the append');
    expect(await userCount('dave')).toBe(0);
    expect(await eventCount()).toBe(before);
    expect((await rt.audit.verify(tenant)).valid).toBe(true);
  });

  it.each([
    ['an unknown outcome', { outcome: 'maybe' }],
    ['a malformed type', { type: 'Not A Type' }],
    ['a failure without a code', { outcome: 'failure' }],
    ['a code on a success', { code: 'x_failed' }],
    ['non-finite details', { details: { n: Number.NaN } }],
    ['a function in details', { details: { f: () => 1 } }],
    ['no principal', { actor: {} }],
    ['an unknown principal type', { actor: { principal: { type: 'root', id: 'x' } } }],
    ['a __proto__ key', { details: JSON.parse('{"__proto__": {"x": 1}}') as Record<string, unknown> }],
    ['an oversized body', { details: { blob: 'x'.repeat(300 * 1024) } }],
  ])('fails the caller transaction on %s (audit_event_invalid) and keeps nothing', async (_what, bad) => {
    const before = await eventCount();
    await expect(
      rt.storage.tenant(tenant).transaction(async (db) => {
        await insertUser(db, 'erin');
        await rt.audit.append(db, tenant, { ...ev(), ...(bad as object) });
      }),
    ).rejects.toMatchObject({ code: 'audit_event_invalid' });
    expect(await userCount('erin')).toBe(0);
    expect(await eventCount()).toBe(before);
  });

  it('fails the caller transaction when the chain head row is gone (audit_unavailable), and again when the table is broken', async () => {
    const t2 = await newTenant(rt);
    await rt.storage.tenant(t2).transaction((db) => sql`DELETE FROM audit_chain_head`.execute(db));
    await expect(
      rt.storage.tenant(t2).transaction(async (db) => {
        await insertUser(db, 'frank');
        await rt.audit.append(db, t2, ev());
      }),
    ).rejects.toMatchObject({ code: 'audit_unavailable' });
    const users = await rt.storage.tenant(t2).transaction((db) => db.selectFrom('users').select('username').where('username', '=', 'frank').execute());
    expect(users).toEqual([]);

    const t3 = await newTenant(rt);
    await asOwner(rt, t3, ['ALTER TABLE audit_events RENAME TO audit_events_gone']);
    await expect(
      rt.storage.tenant(t3).transaction(async (db) => {
        await insertUser(db, 'gina');
        await rt.audit.append(db, t3, ev());
      }),
    ).rejects.toMatchObject({ code: 'audit_unavailable' });
    const users3 = await rt.storage.tenant(t3).transaction((db) => db.selectFrom('users').select('username').where('username', '=', 'gina').execute());
    expect(users3).toEqual([]);
  });

  it('runs onAppend listeners inside the same transaction, and their failure fails it', async () => {
    const t4 = await newTenant(rt);
    const seen: { tenantId: string; event: AuditEvent; users: number }[] = [];
    let failNext = false;
    rt.audit.onAppend(async (db, tenantId, event) => {
      if (tenantId !== t4) return;
      // The listener sees the caller's uncommitted change: same transaction.
      const users = (await db.selectFrom('users').select('id').where('username', '=', 'henry').execute()).length;
      seen.push({ tenantId, event, users });
      if (failNext) throw new Error('alert rule failed');
    });
    const start = (await storedBodies(rt, t4)).length;
    await rt.storage.tenant(t4).transaction(async (db) => {
      await insertUser(db, 'henry');
      await rt.audit.append(db, t4, ev());
    });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ tenantId: t4, users: 1, event: { type: 'iam.user.create', seq: start + 1 } });

    failNext = true;
    await expect(rt.storage.tenant(t4).transaction((db) => rt.audit.append(db, t4, ev('iam.user.delete')))).rejects.toThrow('alert rule failed');
    expect((await storedBodies(rt, t4)).length).toBe(start + 1);
  });

  it('appends provider events inside a control-plane transaction, and rolls them back with it', async () => {
    const e = await rt.storage.controlTransaction((db) => rt.audit.appendProvider(db, { type: 'tenant.suspend', outcome: 'success', actor: SYSTEM_ACTOR, resource: { type: 'tenant', id: tenant } }));
    expect(e).toMatchObject({ tenant: null, type: 'tenant.suspend', principal: { type: 'system' } });
    const before = (await rt.audit.query(null, { limit: 1000 })).events.length;
    await expect(
      rt.storage.controlTransaction(async (db) => {
        await rt.audit.appendProvider(db, { type: 'tenant.delete', outcome: 'success', actor: SYSTEM_ACTOR });
        throw new Error('rolled back');
      }),
    ).rejects.toThrow('rolled back');
    expect((await rt.audit.query(null, { limit: 1000 })).events.length).toBe(before);
    expect((await rt.audit.verify(null)).valid).toBe(true);
  });
});

describeEachStorage('activity stream: redaction', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
    tenant = await newTenant(rt);
  });
  afterAll(async () => rt.close());

  const secrets = ['hunter2-password', 'tok-abcdef-123456', 'sk_live_secret_value', '-----BEGIN PRIVATE KEY-----MIIEv', 'a1b2c3d4keymaterial', 'cookie-session-xyz'];

  it('removes secrets, HMACs sensitive values, and stores neither in clear', async () => {
    const event = await rt.storage.tenant(tenant).transaction((db) =>
      rt.audit.append(db, tenant, {
        ...ev('iam.user.update'),
        change: {
          before: { email: 'old@example.com', password: secrets[0], profile: { phone: '+1 555 0100' } },
          after: {
            email: 'new@example.com',
            password: secrets[0],
            apiToken: secrets[1],
            client_secret: secrets[2],
            privateKey: secrets[3],
            keyMaterial: secrets[4],
            nested: { Cookie: secrets[5], list: [{ token: secrets[1], ok: 1 }] },
            profile: { phone: '+1 555 0199' },
            contacts: [{ email: 'c1@example.com' }, { email: 'c2@example.com' }],
            aliases: ['a@example.com', 'b@example.com'],
            raw: Buffer.from('binary key bytes'),
            when: new Date(Date.UTC(2026, 0, 2)),
            mustChangePassword: true,
            passwordExpiresAt: null,
          },
          sensitive: ['email', 'profile.phone', 'contacts.email', 'aliases'],
        },
        details: { reason: 'profile edit', sessionToken: secrets[1] },
      }),
    );
    const after = event.change!.after!;
    expect(after.password).toBe('[removed]');
    expect(after.apiToken).toBe('[removed]');
    expect(after.client_secret).toBe('[removed]');
    expect(after.privateKey).toBe('[removed]');
    expect(after.keyMaterial).toBe('[removed]');
    expect(after.nested).toEqual({ Cookie: '[removed]', list: [{ token: '[removed]', ok: 1 }] });
    expect(after.raw).toBe('[binary 16 bytes]');
    expect(after.when).toBe('2026-01-02T00:00:00.000Z');
    expect(after.mustChangePassword).toBe(true);
    expect(after.passwordExpiresAt).toBeNull();
    expect(event.details).toEqual({ reason: 'profile edit', sessionToken: '[removed]' });

    expect(after.email).toBe(rt.audit.hashForAudit(tenant, 'new@example.com'));
    expect(after.email).toMatch(/^hmac-sha256:[0-9a-f]{64}$/);
    expect(event.change!.before!.email).toBe(rt.audit.hashForAudit(tenant, 'old@example.com'));
    expect((after.profile as { phone: string }).phone).toBe(rt.audit.hashForAudit(tenant, '+1 555 0199'));
    expect(after.contacts).toEqual([{ email: rt.audit.hashForAudit(tenant, 'c1@example.com') }, { email: rt.audit.hashForAudit(tenant, 'c2@example.com') }]);
    expect(after.aliases).toEqual([rt.audit.hashForAudit(tenant, 'a@example.com'), rt.audit.hashForAudit(tenant, 'b@example.com')]);
    expect(rt.audit.hashForAudit(tenant, 'other@example.com')).not.toBe(after.email);

    const stored = (await storedBodies(rt, tenant)).map((b) => b.body).join('\n');
    for (const s of [...secrets, 'old@example.com', 'new@example.com', '555 01', 'c1@example.com', 'a@example.com', 'binary key bytes']) {
      expect(stored, s).not.toContain(s);
    }
    // And it is what the admin's lookup finds.
    expect(stored).toContain(rt.audit.hashForAudit(tenant, 'new@example.com'));
  });

  it('uses a different HMAC key per tenant and for the provider stream', async () => {
    const other = await newTenant(rt);
    const a = rt.audit.hashForAudit(tenant, 'same@example.com');
    expect(rt.audit.hashForAudit(other, 'same@example.com')).not.toBe(a);
    expect(rt.audit.hashForAudit(null, 'same@example.com')).not.toBe(a);
    expect(rt.audit.hashForAudit(tenant, 'same@example.com')).toBe(a);
  });

  it('truncates oversized client-controlled strings instead of failing the action', async () => {
    const e = await rt.audit.record(tenant, {
      type: 'auth.login.failure',
      outcome: 'failure',
      code: 'invalid_credentials',
      actor: { principal: { type: 'user', id: 'unknown', name: 'x'.repeat(1000) }, source: { userAgent: 'A'.repeat(5000) } },
    });
    expect(e.source!.userAgent!.length).toBe(512);
    expect(e.principal.name!.length).toBe(256);
  });
});

describe('activity stream: secret key names', () => {
  it('matches secrets however they are spelled, and leaves ordinary keys', async () => {
    const { isSecretKey } = await import('../../src/audit/redaction.js');
    for (const k of ['password', 'newPassword', 'PASSWORD_HASH', 'secret', 'clientSecret', 'token', 'refresh_token', 'privateKey', 'private-key', 'keyMaterial', 'apiKey', 'Authorization', 'cookie', 'pin', 'otp', 'dek']) {
      expect(isSecretKey(k), k).toBe(true);
    }
    for (const k of ['email', 'username', 'name', 'keyId', 'version', 'status', 'pinned', 'description']) {
      expect(isSecretKey(k), k).toBe(false);
    }
  });
});
