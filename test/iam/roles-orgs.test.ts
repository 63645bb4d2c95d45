import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import type { AuthContext } from '../../src/iam/authorize.js';
import { MAX_ORG_DEPTH } from '../../src/iam/org-service.js';
import { ALL_PERMISSIONS, BUILTIN_ROLES, type Permission } from '../../src/iam/permissions.js';
import { DEFAULT_SECURITY_SETTINGS } from '../../src/iam/security-settings.js';
import { permissionsOf } from '../../src/iam/session-service.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

/** A principal of `tenantId` holding exactly `permissions` (services see nothing else of it). */
function principal(tenantId: string, permissions: readonly Permission[], opts: { reachableOrgs?: ReadonlySet<string> | null; userId?: string; name?: string } = {}): AuthContext {
  const userId = opts.userId ?? newId();
  const name = opts.name ?? 'tester';
  return {
    tenantId,
    userId,
    username: name,
    kind: 'console',
    roles: [],
    permissions: new Set(permissions),
    reachableOrgs: opts.reachableOrgs ?? null,
    credentialPublicId: newId(),
    authMethod: 'password',
    via: 'session',
    principal: { type: 'user', id: userId, name },
    source: { ip: '127.0.0.1' },
  };
}

const ALL = ALL_PERMISSIONS;

describeEachStorage('roles and organizations (services)', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  let other: string;
  let admin: AuthContext;
  const clock = new ManualClock(Date.UTC(2026, 2, 1));

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    tenant = (await rt.tenants.create({ name: 'rolesco', edition: 'enterprise', adminEmail: 'a@rolesco.example' }, TEST_OPERATOR)).id;
    other = (await rt.tenants.create({ name: 'otherco', edition: 'standard', adminEmail: 'a@otherco.example' }, TEST_OPERATOR)).id;
    admin = principal(tenant, ALL, { name: 'admin' });
  });
  afterAll(async () => rt.close());

  const events = async (type: string) => (await rt.audit.query(tenant, { types: [type], limit: 100 })).events;

  describe('roles', () => {
    it('lists the five built-in roles, read-only, with their permissions, and the permission catalogue', async () => {
      const roles = await rt.roles.list(principal(tenant, ['users.read']), tenant);
      const builtins = roles.filter((r) => r.builtin);
      expect(builtins.map((r) => r.id)).toEqual(Object.keys(BUILTIN_ROLES));
      const aa = builtins.find((r) => r.id === 'account-administrator')!;
      expect(aa).toMatchObject({ name: 'Account Administrator', createdAt: null, userCount: 1 });
      expect(aa.permissions).toEqual(ALL);
      expect(builtins.find((r) => r.id === 'viewer')!.permissions).toEqual(['lists.read']);
      expect(rt.roles.permissions(principal(tenant, ['users.read'])).map((p) => p.name)).toEqual(ALL);
    });

    it('needs users.read to read roles and roles.manage to change them', async () => {
      const viewer = principal(tenant, ['lists.read']);
      await expect(rt.roles.list(viewer, tenant)).rejects.toMatchObject({ code: 'forbidden' });
      expect(() => rt.roles.permissions(viewer)).toThrow(expect.objectContaining({ code: 'forbidden' }));
      await expect(rt.roles.create(principal(tenant, ['users.read', 'users.manage']), tenant, { name: 'x', permissions: ['lists.read'] })).rejects.toMatchObject({ code: 'forbidden' });
    });

    it('creates a custom role from the catalogue and records it', async () => {
      const role = await rt.roles.create(admin, tenant, { name: 'Auditor', description: 'Reads the stream', permissions: ['activity.read', 'lists.read', 'activity.read'] });
      expect(role).toMatchObject({ name: 'Auditor', description: 'Reads the stream', builtin: false, userCount: 0 });
      expect(role.id).toMatch(/^[0-9a-hjkmnp-tv-z]{26}$/);
      // Catalogue order, duplicates folded.
      expect(role.permissions).toEqual(['lists.read', 'activity.read']);
      const [ev] = await events('iam.role.create');
      expect(ev).toMatchObject({ resource: { type: 'role', id: role.id, name: 'Auditor' }, change: { after: { permissions: ['lists.read', 'activity.read'] } } });
      expect((await rt.roles.get(admin, tenant, role.id)).name).toBe('Auditor');
    });

    it.each([
      ['an unknown permission', { name: 'Bad', permissions: ['lists.read', 'root.everything'] }, 'validation_failed'],
      ['no permissions', { name: 'Empty', permissions: [] }, 'validation_failed'],
      ['an empty name', { name: '  ', permissions: ['lists.read'] }, 'validation_failed'],
      ['a name with markup', { name: '<script>', permissions: ['lists.read'] }, 'validation_failed'],
      ['the name of a built-in role', { name: 'account administrator', permissions: ['lists.read'] }, 'conflict'],
      ['the key of a built-in role', { name: 'viewer', permissions: ['lists.read'] }, 'conflict'],
      ['a taken name in another case', { name: 'AUDITOR', permissions: ['lists.read'] }, 'conflict'],
    ])('refuses a role with %s', async (_what, input, code) => {
      await expect(rt.roles.create(admin, tenant, input)).rejects.toMatchObject({ code });
    });

    it('refuses to create a role holding permissions the actor lacks (no escalation through roles.manage)', async () => {
      const roleManager = principal(tenant, ['users.read', 'roles.manage', 'lists.read']);
      await expect(rt.roles.create(roleManager, tenant, { name: 'Sneaky', permissions: ['lists.read', 'users.manage'] })).rejects.toMatchObject({ code: 'forbidden' });
      await expect(rt.roles.create(roleManager, tenant, { name: 'Modest', permissions: ['lists.read'] })).resolves.toMatchObject({ name: 'Modest' });
      expect((await rt.roles.list(admin, tenant)).some((r) => r.name === 'Sneaky')).toBe(false);
    });

    it("changes a custom role, and its holders' permissions with it", async () => {
      const role = await rt.roles.create(admin, tenant, { name: 'Editors', permissions: ['lists.read'] });
      const holder = newId();
      await rt.storage.tenant(tenant).transaction(async (db) => {
        await db.insertInto('users').values({ id: holder, username: 'holder', email: 'h@rolesco.example', kind: 'console', status: 'active', password_hash: null, must_change_password: 0, password_expires_at: null, created_at: clock.now(), updated_at: clock.now() }).execute();
        await db.insertInto('user_roles').values({ user_id: holder, role: role.id }).execute();
      });
      const changed = await rt.roles.update(admin, tenant, role.id, { name: 'List editors', permissions: ['lists.read', 'lists.write'] });
      expect(changed).toMatchObject({ name: 'List editors', permissions: ['lists.read', 'lists.write'], userCount: 1 });
      const perms = await rt.storage.tenant(tenant).transaction((db) => permissionsOf(db, [role.id]));
      expect([...perms].sort()).toEqual(['lists.read', 'lists.write']);
      const [ev] = await events('iam.role.update');
      expect(ev!.change).toMatchObject({ before: { name: 'Editors', permissions: ['lists.read'] }, after: { name: 'List editors', permissions: ['lists.read', 'lists.write'] } });
      // In use: not deletable.
      await expect(rt.roles.delete(admin, tenant, role.id)).rejects.toMatchObject({ code: 'conflict' });
    });

    it('refuses to change a role that holds permissions the actor lacks, or to add them', async () => {
      const strong = await rt.roles.create(admin, tenant, { name: 'Key keepers', permissions: ['keys.read', 'keys.manage'] });
      const roleManager = principal(tenant, ['users.read', 'roles.manage', 'keys.read']);
      await expect(rt.roles.update(roleManager, tenant, strong.id, { permissions: ['keys.read'] })).rejects.toMatchObject({ code: 'forbidden' });
      await expect(rt.roles.delete(roleManager, tenant, strong.id)).rejects.toMatchObject({ code: 'forbidden' });
      const weak = await rt.roles.create(roleManager, tenant, { name: 'Key readers', permissions: ['keys.read'] });
      await expect(rt.roles.update(roleManager, tenant, weak.id, { permissions: ['keys.read', 'keys.manage'] })).rejects.toMatchObject({ code: 'forbidden' });
      expect((await rt.roles.get(admin, tenant, weak.id)).permissions).toEqual(['keys.read']);
    });

    it('keeps built-in roles read-only', async () => {
      await expect(rt.roles.update(admin, tenant, 'viewer', { name: 'Watcher' })).rejects.toMatchObject({ code: 'forbidden' });
      await expect(rt.roles.delete(admin, tenant, 'account-administrator')).rejects.toMatchObject({ code: 'forbidden' });
      expect((await rt.roles.get(admin, tenant, 'viewer')).name).toBe('Viewer');
    });

    it('refuses to delete a role the MFA policy names, deletes an unused one, and records it', async () => {
      const role = await rt.roles.create(admin, tenant, { name: 'Temporary', permissions: ['lists.read'] });
      await rt.securityAdmin.put(admin, tenant, { ...DEFAULT_SECURITY_SETTINGS, mfa: { required: 'roles', roles: [role.id] } });
      await expect(rt.roles.delete(admin, tenant, role.id)).rejects.toMatchObject({ code: 'conflict' });
      await rt.securityAdmin.put(admin, tenant, DEFAULT_SECURITY_SETTINGS);
      await rt.roles.delete(admin, tenant, role.id);
      await expect(rt.roles.get(admin, tenant, role.id)).rejects.toMatchObject({ code: 'not_found' });
      const [ev] = await events('iam.role.delete');
      expect(ev).toMatchObject({ resource: { id: role.id, name: 'Temporary' }, change: { before: { permissions: ['lists.read'] } } });
    });

    it('answers not_found for unknown ids and for roles of another tenant', async () => {
      const mine = await rt.roles.create(admin, tenant, { name: 'Mine', permissions: ['lists.read'] });
      const stranger = principal(other, ALL);
      await expect(rt.roles.get(stranger, other, mine.id)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.roles.update(stranger, other, mine.id, { name: 'Stolen' })).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.roles.delete(stranger, other, mine.id)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.roles.get(admin, tenant, newId())).rejects.toMatchObject({ code: 'not_found' });
      expect((await rt.roles.list(stranger, other)).some((r) => r.id === mine.id)).toBe(false);
      expect((await rt.roles.get(admin, tenant, mine.id)).name).toBe('Mine');
    });
  });

  describe('organizations', () => {
    it('builds a tree, keeps sibling names unique and records each change', async () => {
      const emea = await rt.orgs.create(admin, tenant, { name: 'EMEA' });
      const france = await rt.orgs.create(admin, tenant, { name: 'France', parentId: emea.id });
      await rt.orgs.create(admin, tenant, { name: 'Paris', parentId: france.id });
      expect(emea).toMatchObject({ name: 'EMEA', parentId: null, childCount: 0, userCount: 0 });
      expect(france.parentId).toBe(emea.id);
      await expect(rt.orgs.create(admin, tenant, { name: 'france', parentId: emea.id })).rejects.toMatchObject({ code: 'conflict' });
      // The same name elsewhere in the tree is fine.
      await expect(rt.orgs.create(admin, tenant, { name: 'France' })).resolves.toMatchObject({ parentId: null });
      await expect(rt.orgs.create(admin, tenant, { name: 'Lyon', parentId: newId() })).rejects.toMatchObject({ code: 'validation_failed' });
      await expect(rt.orgs.create(admin, tenant, { name: '' })).rejects.toMatchObject({ code: 'validation_failed' });
      const list = await rt.orgs.list(principal(tenant, ['users.read']), tenant);
      expect(list.find((o) => o.id === emea.id)!.childCount).toBe(1);
      expect((await events('iam.org.create')).length).toBeGreaterThanOrEqual(4);
    });

    it('moves a subtree but never into a cycle', async () => {
      const a = await rt.orgs.create(admin, tenant, { name: 'A' });
      const b = await rt.orgs.create(admin, tenant, { name: 'B', parentId: a.id });
      const c = await rt.orgs.create(admin, tenant, { name: 'C', parentId: b.id });
      await expect(rt.orgs.update(admin, tenant, a.id, { parentId: a.id })).rejects.toMatchObject({ code: 'validation_failed' });
      await expect(rt.orgs.update(admin, tenant, a.id, { parentId: c.id })).rejects.toMatchObject({ code: 'validation_failed' });
      const moved = await rt.orgs.update(admin, tenant, c.id, { parentId: a.id, name: 'C2' });
      expect(moved).toMatchObject({ id: c.id, name: 'C2', parentId: a.id });
      const top = await rt.orgs.update(admin, tenant, b.id, { parentId: null });
      expect(top.parentId).toBeNull();
      const [ev] = await events('iam.org.update');
      expect(ev!.change).toMatchObject({ before: { parentId: a.id }, after: { parentId: null } });
    });

    it(`limits nesting to ${MAX_ORG_DEPTH} levels, for new and for moved organizations`, async () => {
      let parent: string | null = null;
      const chain: string[] = [];
      for (let i = 0; i < MAX_ORG_DEPTH; i++) {
        const o = await rt.orgs.create(admin, tenant, { name: `Level ${i}`, parentId: parent });
        chain.push(o.id);
        parent = o.id;
      }
      await expect(rt.orgs.create(admin, tenant, { name: 'Too deep', parentId: parent })).rejects.toMatchObject({ code: 'validation_failed' });
      const pair = await rt.orgs.create(admin, tenant, { name: 'Pair' });
      await rt.orgs.create(admin, tenant, { name: 'Pair child', parentId: pair.id });
      await expect(rt.orgs.update(admin, tenant, pair.id, { parentId: chain[MAX_ORG_DEPTH - 2]! })).rejects.toMatchObject({ code: 'validation_failed' });
    });

    it('deletes only organizations without children and without users', async () => {
      const parent = await rt.orgs.create(admin, tenant, { name: 'Doomed' });
      const child = await rt.orgs.create(admin, tenant, { name: 'Doomed child', parentId: parent.id });
      await expect(rt.orgs.delete(admin, tenant, parent.id)).rejects.toMatchObject({ code: 'conflict' });
      const user = newId();
      await rt.storage.tenant(tenant).transaction(async (db) => {
        await db.insertInto('users').values({ id: user, username: 'member', email: 'm@rolesco.example', kind: 'console', status: 'active', password_hash: null, must_change_password: 0, password_expires_at: null, created_at: clock.now(), updated_at: clock.now() }).execute();
        await db.insertInto('user_orgs').values({ user_id: user, org_id: child.id }).execute();
      });
      await expect(rt.orgs.delete(admin, tenant, child.id)).rejects.toMatchObject({ code: 'conflict' });
      await rt.storage.tenant(tenant).transaction((db) => db.deleteFrom('user_orgs').where('user_id', '=', user).execute());
      await rt.orgs.delete(admin, tenant, child.id);
      await rt.orgs.delete(admin, tenant, parent.id);
      await expect(rt.orgs.get(admin, tenant, parent.id)).rejects.toMatchObject({ code: 'not_found' });
      const [ev] = await events('iam.org.delete');
      expect(ev).toMatchObject({ resource: { id: parent.id, name: 'Doomed' } });
    });

    it('under organizational access control, shows and changes only the organizations the actor reaches', async () => {
      const north = await rt.orgs.create(admin, tenant, { name: 'North' });
      const northEast = await rt.orgs.create(admin, tenant, { name: 'North-East', parentId: north.id });
      const south = await rt.orgs.create(admin, tenant, { name: 'South' });
      const scoped = principal(tenant, ALL, { reachableOrgs: new Set([north.id, northEast.id]) });
      expect((await rt.orgs.list(scoped, tenant)).map((o) => o.name).sort()).toEqual(['North', 'North-East']);
      await expect(rt.orgs.get(scoped, tenant, south.id)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.orgs.update(scoped, tenant, south.id, { name: 'Mine now' })).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.orgs.delete(scoped, tenant, south.id)).rejects.toMatchObject({ code: 'not_found' });
      // New organizations go under one in reach: not under another's, not at the top.
      await expect(rt.orgs.create(scoped, tenant, { name: 'Inside', parentId: south.id })).rejects.toMatchObject({ code: 'validation_failed' });
      await expect(rt.orgs.create(scoped, tenant, { name: 'Top' })).rejects.toMatchObject({ code: 'forbidden' });
      await expect(rt.orgs.update(scoped, tenant, northEast.id, { parentId: south.id })).rejects.toMatchObject({ code: 'validation_failed' });
      await expect(rt.orgs.update(scoped, tenant, northEast.id, { parentId: null })).rejects.toMatchObject({ code: 'forbidden' });
      const made = await rt.orgs.create(scoped, tenant, { name: 'North-West', parentId: north.id });
      expect(made.parentId).toBe(north.id);
      expect((await rt.orgs.get(admin, tenant, south.id)).name).toBe('South');
    });

    it('answers not_found for organizations of another tenant', async () => {
      const mine = await rt.orgs.create(admin, tenant, { name: 'Private' });
      const stranger = principal(other, ALL);
      await expect(rt.orgs.get(stranger, other, mine.id)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.orgs.update(stranger, other, mine.id, { name: 'x' })).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.orgs.delete(stranger, other, mine.id)).rejects.toMatchObject({ code: 'not_found' });
      await expect(rt.orgs.create(stranger, other, { name: 'Child', parentId: mine.id })).rejects.toMatchObject({ code: 'validation_failed' });
      expect(await rt.orgs.list(stranger, other)).toEqual([]);
    });

    it('needs users.read to read and orgs.manage to change', async () => {
      const reader = principal(tenant, ['users.read']);
      await expect(rt.orgs.create(reader, tenant, { name: 'Nope' })).rejects.toMatchObject({ code: 'forbidden' });
      await expect(rt.orgs.list(principal(tenant, ['lists.read']), tenant)).rejects.toMatchObject({ code: 'forbidden' });
    });
  });
});
