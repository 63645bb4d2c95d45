import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyPassword } from '../../src/crypto/password-hash.js';
import { hostname } from 'node:os';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

describeEachStorage('tenant lifecycle', (kind) => {
  let rt: TestRuntime;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
  });
  afterAll(async () => rt.close());

  const rows = () => rt.storage.control.selectFrom('tenants').selectAll().orderBy('name').execute();

  describe('create', () => {
    it('creates an active tenant with its first Account Administrator', async () => {
      const t = await rt.tenants.create({ name: 'acme', edition: 'enterprise', adminEmail: 'ops@acme.example' }, TEST_OPERATOR);
      expect(t).toMatchObject({ name: 'acme', edition: 'enterprise', status: 'active', adminEmail: 'ops@acme.example' });
      expect(t.id).toMatch(/^[0-9a-z]{26}$/);
      expect(t.admin.username).toBe('admin');
      expect(t.admin.temporaryPassword).toHaveLength(24);
      expect(Date.parse(t.admin.temporaryPasswordExpiresAt) - Date.parse(t.createdAt)).toBe(72 * 3600 * 1000);

      const admin = await rt.storage.tenant(t.id).transaction(async (db) => ({
        user: await db.selectFrom('users').selectAll().where('username', '=', 'admin').executeTakeFirstOrThrow(),
        roles: await db.selectFrom('user_roles').select('role').execute(),
      }));
      expect(admin.user.must_change_password).toBe(1);
      expect(admin.user.kind).toBe('console');
      expect(admin.roles).toEqual([{ role: 'account-administrator' }]);
      expect(admin.user.password_hash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
      expect(admin.user.password_hash).not.toContain(t.admin.temporaryPassword);
      expect(await verifyPassword(admin.user.password_hash!, t.admin.temporaryPassword)).toBe(true);
      expect(await verifyPassword(admin.user.password_hash!, 'wrong')).toBe(false);
    });

    it('never stores the temporary password in clear', async () => {
      const t = await rt.tenants.create({ name: 'clear-check', edition: 'standard', adminEmail: 'a@b.example' }, TEST_OPERATOR);
      if (kind === 'sqlite') {
        for (const f of readdirSync(rt.env.dataDir, { recursive: true }) as string[]) {
          const full = path.join(rt.env.dataDir, f);
          try {
            expect(readFileSync(full).includes(Buffer.from(t.admin.temporaryPassword)), full).toBe(false);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EISDIR') throw err;
          }
        }
      } else {
        const dump = await rt.storage.tenant(t.id).transaction((db) => db.selectFrom('users').selectAll().execute());
        expect(JSON.stringify(dump)).not.toContain(t.admin.temporaryPassword);
      }
    });

    it('refuses a duplicate name and changes nothing', async () => {
      const before = await rows();
      await expect(rt.tenants.create({ name: 'acme', edition: 'standard', adminEmail: 'x@y.example' }, TEST_OPERATOR)).rejects.toMatchObject({ code: 'tenant_exists' });
      expect(await rows()).toEqual(before);
    });

    it.each([
      [{ name: 'Bad_Name', edition: 'standard', adminEmail: 'x@y.example' }, 'invalid_tenant_name'],
      [{ name: 'ok-name', edition: 'gold', adminEmail: 'x@y.example' }, 'invalid_edition'],
      [{ name: 'ok-name', edition: 'standard', adminEmail: 'not-an-email' }, 'validation_failed'],
      [{ name: undefined, edition: 'standard', adminEmail: 'x@y.example' }, 'invalid_tenant_name'],
    ])('refuses bad input %o with %s and creates nothing', async (input, code) => {
      const before = await rows();
      await expect(rt.tenants.create(input, TEST_OPERATOR)).rejects.toMatchObject({ code });
      expect(await rows()).toEqual(before);
    });

    it('creates many tenants concurrently, each once', async () => {
      const names = Array.from({ length: 6 }, (_, i) => `para-${i}`);
      const results = await Promise.allSettled([...names, ...names].map((name) => rt.tenants.create({ name, edition: 'standard', adminEmail: 'p@q.example' }, TEST_OPERATOR)));
      const ok = results.filter((r) => r.status === 'fulfilled');
      const dup = results.filter((r) => r.status === 'rejected');
      expect(ok).toHaveLength(6);
      expect(dup).toHaveLength(6);
      for (const r of dup) expect((r).reason).toMatchObject({ code: 'tenant_exists' });
      const listed = (await rt.tenants.list()).map((t) => t.name);
      for (const n of names) expect(listed).toContain(n);
    });
  });

  describe('list, show, suspend, resume', () => {
    it('lists and shows tenants without secrets', async () => {
      const list = await rt.tenants.list();
      expect(list.map((t) => t.name)).toContain('acme');
      const shown = await rt.tenants.show('acme');
      expect(shown).toMatchObject({ name: 'acme', status: 'active', edition: 'enterprise' });
      expect(JSON.stringify(shown)).not.toMatch(/password/i);
      expect(shown.store.kind).toBe(kind);
    });

    it('answers tenant_not_found for unknown names and invalid_tenant_name for bad ones', async () => {
      await expect(rt.tenants.show('nobody-here')).rejects.toMatchObject({ code: 'tenant_not_found' });
      await expect(rt.tenants.show('../x')).rejects.toMatchObject({ code: 'invalid_tenant_name' });
      await expect(rt.tenants.suspend('nobody-here', TEST_OPERATOR)).rejects.toMatchObject({ code: 'tenant_not_found' });
    });

    it('suspends and resumes, idempotently', async () => {
      expect((await rt.tenants.suspend('acme', TEST_OPERATOR)).status).toBe('suspended');
      expect((await rt.tenants.suspend('acme', TEST_OPERATOR)).status).toBe('suspended');
      expect((await rt.tenants.show('acme')).status).toBe('suspended');
      expect((await rt.tenants.resume('acme', TEST_OPERATOR)).status).toBe('active');
      expect((await rt.tenants.resume('acme', TEST_OPERATOR)).status).toBe('active');
    });
  });

  describe('delete', () => {
    it('deletes the tenant and its store; the name is free again', async () => {
      const t = await rt.tenants.create({ name: 'doomed', edition: 'standard', adminEmail: 'd@x.example' }, TEST_OPERATOR);
      expect(await rt.storage.tenantStoreExists(t.id)).toBe(true);
      await rt.tenants.delete('doomed', TEST_OPERATOR);
      expect(await rt.storage.tenantStoreExists(t.id)).toBe(false);
      await expect(rt.tenants.show('doomed')).rejects.toMatchObject({ code: 'tenant_not_found' });
      const again = await rt.tenants.create({ name: 'doomed', edition: 'standard', adminEmail: 'd@x.example' }, TEST_OPERATOR);
      expect(again.id).not.toBe(t.id);
    });
  });

  describe('crash recovery', () => {
    const insertLifecycleRow = async (name: string, status: 'provisioning' | 'deleting', owner: string | null, updatedAt = Date.now()) => {
      const { newId } = await import('../../src/core/ids.js');
      const id = newId();
      await rt.storage.control
        .insertInto('tenants')
        .values({ id, name, edition: 'standard', status, admin_email: 'r@x.example', created_at: updatedAt, updated_at: updatedAt, lifecycle_owner: owner })
        .execute();
      return id;
    };

    it('never lists or shows a tenant that is still provisioning', async () => {
      await insertLifecycleRow('half-made', 'provisioning', `${hostname()}:${process.pid}:x`);
      expect((await rt.tenants.list()).map((t) => t.name)).not.toContain('half-made');
      await expect(rt.tenants.show('half-made')).rejects.toMatchObject({ code: 'tenant_not_found' });
      expect(await rt.tenants.findUsable('half-made')).toBeUndefined();
    });

    it('removes a half-created tenant whose process died, with its store', async () => {
      const id = await insertLifecycleRow('orphan', 'provisioning', `${hostname()}:999999999:0`);
      await rt.storage.createTenantStore(id);
      const report = await rt.tenants.recover();
      expect(report.removed).toContain('orphan');
      expect(await rt.storage.tenantStoreExists(id)).toBe(false);
      expect(await rt.storage.control.selectFrom('tenants').select('id').where('id', '=', id).executeTakeFirst()).toBeUndefined();
    });

    it('finishes deleting a half-deleted tenant whose process died', async () => {
      const t = await rt.tenants.create({ name: 'half-gone', edition: 'standard', adminEmail: 'h@x.example' }, TEST_OPERATOR);
      await rt.storage.control.updateTable('tenants').set({ status: 'deleting', lifecycle_owner: `${hostname()}:999999999:0` }).where('id', '=', t.id).execute();
      const report = await rt.tenants.recover();
      expect(report.finishedDeleting).toContain('half-gone');
      expect(await rt.storage.tenantStoreExists(t.id)).toBe(false);
    });

    it('leaves alone the work of a live process, and of another host until it times out', async () => {
      const live = await insertLifecycleRow('live-work', 'provisioning', `${hostname()}:${process.pid}:${'-'}`);
      const foreignFresh = await insertLifecycleRow('foreign-fresh', 'provisioning', 'other-host:1:1');
      const foreignOld = await insertLifecycleRow('foreign-old', 'provisioning', 'other-host:1:1', Date.now() - 11 * 60 * 1000);
      const report = await rt.tenants.recover();
      expect(report.removed).toContain('foreign-old');
      expect(report.removed).not.toContain('live-work');
      expect(report.removed).not.toContain('foreign-fresh');
      const left = (await rows()).map((r) => r.id);
      expect(left).toContain(live);
      expect(left).toContain(foreignFresh);
      expect(left).not.toContain(foreignOld);
    });
  });
});
