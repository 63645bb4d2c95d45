import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { keyOperations } from '../../src/ops/key-operations.js';
import { makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

const JANE = 'Jane.Doe+keys@Example.com';

// Customer key material imported while the key is disabled becomes the current version, but nothing can be rewrapped
// then (a disabled key is not used). Enabling the key must rewrap every data key under it: before, they stayed wrapped
// under the superseded, retired material for good, and the tenant's rotation had no effect on its data.
describeEachStorage('customer key material imported while the key is disabled', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());

  const api = (method: 'GET' | 'POST', url: string, headers: Record<string, string>, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  /** A tenant with a list holding one record with personal data, so that data keys exist. */
  const tenantWithData = async (name: string) => {
    const t = await tenantWithAdmin(app, rt, name);
    const director = await apiUser(app, rt, t, t.admin.cookie, 'loader', ['data-director']);
    const list = await api('POST', '/lists', director.headers, { name: 'Customers', fields: [{ name: 'FIRST_NAME', type: 'string', classification: 'pii' }] });
    expect(list.statusCode, list.body).toBe(201);
    const listId = list.json().id as string;
    const rec = await api('POST', `/lists/${listId}/records`, director.headers, { fields: { EMAIL_ADDRESS_: JANE, FIRST_NAME: 'Jane' } });
    expect(rec.statusCode, rec.body).toBe(201);
    const recordId = rec.json().id as string;
    const read = async () => {
      const res = await api('GET', `/lists/${listId}/records/${recordId}`, director.headers);
      expect(res.statusCode, res.body).toBe(200);
      return res.json().fields as Record<string, unknown>;
    };
    return { tenantId: t.tenantId, read };
  };
  const importMaterial = async (tenantId: string) => {
    const params = await rt.keys.importParameters(tenantId);
    return keyOperations.importKeyMaterial(rt, tenantId, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32)), TEST_OPERATOR);
  };
  const wrappingVersions = async (tenantId: string) => {
    const rows = await rt.storage.tenant(tenantId).transaction((db) => db.selectFrom('data_keys').select('kek_version').execute());
    expect(rows.length).toBeGreaterThan(0);
    return new Set(rows.map((r) => r.kek_version));
  };
  const dataKeyCount = async (tenantId: string) => (await rt.storage.tenant(tenantId).transaction((db) => db.selectFrom('data_keys').select('kek_version').execute())).length;
  const tenantEvents = async (tenantId: string, types: string[]) => (await rt.audit.query(tenantId, { types, limit: 100 })).events.reverse();
  const providerEnables = async (tenantId: string) =>
    (await rt.audit.query(null, { types: ['keys.enable'], limit: 500 })).events.filter((e) => (e.details as { tenantId?: string } | undefined)?.tenantId === tenantId);

  describe('enabling the key', () => {
    it('rewraps every data key under the material imported while disabled, keeps the data readable, and records how many', async () => {
      const { tenantId, read } = await tenantWithData('cmk-frozen');
      expect(await importMaterial(tenantId)).toMatchObject({ version: 2 });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([2]));
      const keys = await dataKeyCount(tenantId);

      await keyOperations.disable(rt, tenantId, TEST_OPERATOR);
      // The tenant rotates its key while its data is frozen: nothing can be rewrapped yet.
      expect(await importMaterial(tenantId)).toEqual({ version: 3, rewrapped: 0 });
      expect((await rt.keys.describe(tenantId)).versions.map((v) => [v.version, v.state])).toEqual([
        [1, 'retired'],
        [2, 'retired'],
        [3, 'active'],
      ]);
      expect(await wrappingVersions(tenantId)).toEqual(new Set([2]));

      await keyOperations.enable(rt, tenantId, TEST_OPERATOR);
      expect(await rt.keys.describe(tenantId)).toMatchObject({ state: 'enabled', currentVersion: 3 });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([3]));
      expect(await read()).toMatchObject({ EMAIL_ADDRESS_: JANE, FIRST_NAME: 'Jane' });

      // Recorded: the tenant sees the rewrap after the enable, the provider stream has it with the enable.
      const events = await tenantEvents(tenantId, ['keys.enable', 'keys.rewrap']);
      expect(events.map((e) => [e.type, e.outcome])).toEqual([
        ['keys.enable', 'success'],
        ['keys.rewrap', 'success'],
      ]);
      expect(events[1]!.details).toMatchObject({ version: 3, rewrapped: keys });
      expect((await providerEnables(tenantId)).map((e) => e.details)).toEqual([expect.objectContaining({ version: 3, rewrapped: keys })]);

      // Nothing left to rewrap: enabling again (or disabling and enabling) rewraps nothing and records no rewrap.
      await keyOperations.disable(rt, tenantId, TEST_OPERATOR);
      expect(await rt.keys.enable(tenantId)).toEqual({ version: 3, rewrapped: 0 });
      expect((await tenantEvents(tenantId, ['keys.rewrap'])).length).toBe(1);
    });

    it('after several imports while disabled, rewraps straight to the newest version and reports the number from the key service', async () => {
      const { tenantId, read } = await tenantWithData('cmk-frozen-direct');
      await importMaterial(tenantId);
      const keys = await dataKeyCount(tenantId);
      await rt.keys.disable(tenantId);
      // Two rotations while disabled.
      expect(await importMaterial(tenantId)).toEqual({ version: 3, rewrapped: 0 });
      expect(await importMaterial(tenantId)).toEqual({ version: 4, rewrapped: 0 });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([2]));
      expect(await rt.keys.enable(tenantId)).toEqual({ version: 4, rewrapped: keys });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([4]));
      expect(await read()).toMatchObject({ EMAIL_ADDRESS_: JANE });
    });

    it('when the rewrap cannot be done, refuses to enable: the key stays disabled, the data keys as they were, and the failure is recorded', async () => {
      const { tenantId, read } = await tenantWithData('cmk-frozen-broken');
      await importMaterial(tenantId);
      await keyOperations.disable(rt, tenantId, TEST_OPERATOR);
      expect(await importMaterial(tenantId)).toMatchObject({ version: 3 });
      // The new material is unavailable.
      const v3 = await rt.storage.control.selectFrom('key_versions').selectAll().where('tenant_id', '=', tenantId).where('version', '=', 3).executeTakeFirstOrThrow();
      await rt.storage.controlTransaction((db) => db.deleteFrom('key_versions').where('tenant_id', '=', tenantId).where('version', '=', 3).execute());
      await expect(keyOperations.enable(rt, tenantId, TEST_OPERATOR)).rejects.toMatchObject({ code: 'key_destroyed' });
      expect((await rt.keys.describe(tenantId)).state).toBe('disabled');
      expect(await wrappingVersions(tenantId)).toEqual(new Set([2]));
      expect((await tenantEvents(tenantId, ['keys.enable'])).map((e) => [e.outcome, e.code ?? null])).toEqual([
        ['success', null],
        ['failure', 'key_destroyed'],
      ]);
      expect(await tenantEvents(tenantId, ['keys.rewrap'])).toEqual([]);
      expect(await providerEnables(tenantId)).toEqual([]);

      // Once the material is back, enabling again finishes the job.
      await rt.storage.controlTransaction((db) => db.insertInto('key_versions').values(v3).execute());
      await keyOperations.enable(rt, tenantId, TEST_OPERATOR);
      expect(await rt.keys.describe(tenantId)).toMatchObject({ state: 'enabled', currentVersion: 3 });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([3]));
      expect(await read()).toMatchObject({ FIRST_NAME: 'Jane' });
    });
  });

  describe('importing while the key is enabled (guard)', () => {
    it('still rewraps every data key at once, and a later enable has nothing to do', async () => {
      const { tenantId, read } = await tenantWithData('cmk-live');
      expect(await wrappingVersions(tenantId)).toEqual(new Set([1]));
      const keys = await dataKeyCount(tenantId);
      expect(await importMaterial(tenantId)).toEqual({ version: 2, rewrapped: keys });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([2]));
      expect(await importMaterial(tenantId)).toEqual({ version: 3, rewrapped: keys });
      expect(await wrappingVersions(tenantId)).toEqual(new Set([3]));
      expect(await read()).toMatchObject({ EMAIL_ADDRESS_: JANE, FIRST_NAME: 'Jane' });
      await keyOperations.enable(rt, tenantId, TEST_OPERATOR);
      expect(await tenantEvents(tenantId, ['keys.rewrap'])).toEqual([]);
      expect(await wrappingVersions(tenantId)).toEqual(new Set([3]));
    });
  });
});
