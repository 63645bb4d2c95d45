import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { open } from '../../src/crypto/aead.js';
import { ciphertextGeneration } from '../../src/crypto/field-cipher.js';
import { kekWrappingKey, readMasterKeyFile } from '../../src/crypto/master-key.js';
import { reencryptTenant } from '../../src/crypto/reencrypt.js';
import { TenantSecrets } from '../../src/crypto/tenant-secrets.js';
import type { EncryptedSource } from '../../src/crypto/encrypted-source.js';
import { rotateMasterKey, stagedMasterKeyFile } from '../../src/ops/master-key.js';
import { openRuntime } from '../../src/runtime.js';
import { createLogger } from '../../src/core/logger.js';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

const DAY = 24 * 3600 * 1000;

describeEachStorage('key hierarchy', (kind) => {
  let rt: TestRuntime;
  const clock = new ManualClock(Date.UTC(2026, 10, 1));

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
  });
  afterAll(async () => rt.close());

  const newTenant = async (name: string) => (await rt.tenants.create({ name, edition: 'enterprise', adminEmail: `ops@${name}.example` }, TEST_OPERATOR)).id;
  const put = (t: string, name: string, value: string) => rt.storage.tenant(t).transaction((db) => rt.secrets.put(db, t, 'test', name, value));
  const get = async (t: string, name: string) => (await rt.storage.tenant(t).transaction((db) => rt.secrets.get(db, t, 'test', name))).toString();
  const dataKeys = (t: string) => rt.storage.tenant(t).transaction((db) => db.selectFrom('data_keys').selectAll().orderBy('generation').execute());

  describe('rings', () => {
    it('gives every new tenant a provider-managed ring, version 1, enabled, rotating yearly', async () => {
      const t = await newTenant('ring-basic');
      const view = await rt.keys.describe(t);
      expect(view).toMatchObject({ mode: 'provider', state: 'enabled', currentVersion: 1, rotationPeriodDays: 365 });
      expect(view.versions).toEqual([expect.objectContaining({ version: 1, origin: 'generated', state: 'active' })]);
      expect(Date.parse(view.nextRotationAt!) - Date.parse(view.lastRotatedAt)).toBe(365 * DAY);
      // The view never carries key material.
      expect(JSON.stringify(view)).not.toMatch(/wrapped|[A-Za-z0-9+/]{40,}/);
    });

    it('keeps wrapped KEKs in the control plane and not in the tenant store', async () => {
      const t = await newTenant('ring-where');
      const versions = await rt.storage.control.selectFrom('key_versions').selectAll().where('tenant_id', '=', t).execute();
      expect(versions).toHaveLength(1);
      expect(versions[0]!.wrapped_key.length).toBe(12 + 32 + 16);
      await put(t, 'x', 'y');
      const dks = await dataKeys(t);
      expect(dks).toHaveLength(1);
      // A DEK is wrapped under the KEK, not the master key.
      expect(() => open(kekWrappingKey(rt.masterKey), dks[0]!.wrapped_dek, Buffer.alloc(0))).toThrow();
    });
  });

  describe('secrets under tenant keys', () => {
    it('stores secrets encrypted and reads them back', async () => {
      const t = await newTenant('secrets-a');
      await put(t, 'webhook', 'whsec_correct horse battery staple');
      expect(await get(t, 'webhook')).toBe('whsec_correct horse battery staple');
      const raw = await rt.storage.tenant(t).transaction((db) => db.selectFrom('tenant_secrets').selectAll().execute());
      expect(raw[0]!.ciphertext.includes(Buffer.from('correct horse'))).toBe(false);
      await expect(rt.storage.tenant(t).transaction((db) => rt.secrets.get(db, t, 'test', 'absent'))).rejects.toMatchObject({ code: 'not_found' });
    });

    it('refuses a ciphertext moved to another row', async () => {
      const t = await newTenant('secrets-move');
      await put(t, 'one', 'first secret');
      await put(t, 'two', 'second secret');
      await rt.storage.tenant(t).transaction(async (db) => {
        const one = await db.selectFrom('tenant_secrets').select('ciphertext').where('name', '=', 'one').executeTakeFirstOrThrow();
        await db.updateTable('tenant_secrets').set({ ciphertext: one.ciphertext }).where('name', '=', 'two').execute();
      });
      await expect(get(t, 'two')).rejects.toMatchObject({ code: 'decryption_failed' });
      expect(await get(t, 'one')).toBe('first secret');
    });

    it("cannot read another tenant's ciphertext even when copied into its own store", async () => {
      const a = await newTenant('secrets-owner');
      const b = await newTenant('secrets-thief');
      await put(a, 'k', 'tenant a secret');
      await put(b, 'k', 'tenant b secret');
      const stolen = await rt.storage.tenant(a).transaction((db) => db.selectFrom('tenant_secrets').selectAll().executeTakeFirstOrThrow());
      await rt.storage.tenant(b).transaction((db) => db.updateTable('tenant_secrets').set({ ciphertext: stolen.ciphertext, id: stolen.id }).where('name', '=', 'k').execute());
      await expect(get(b, 'k')).rejects.toMatchObject({ code: 'decryption_failed' });
    });
  });

  describe('rotation', () => {
    it('adds a version, rewraps every data key and leaves all data readable', async () => {
      const t = await newTenant('rotate-a');
      for (let i = 0; i < 5; i++) await put(t, `s${i}`, `value ${i}`);
      const before = await dataKeys(t);
      const r = await rt.keys.rotate(t);
      expect(r).toEqual({ version: 2, rewrapped: 1 });
      const after = await dataKeys(t);
      expect(after.map((d) => d.kek_version)).toEqual([2]);
      expect(after[0]!.wrapped_dek.equals(before[0]!.wrapped_dek)).toBe(false);
      const view = await rt.keys.describe(t);
      expect(view.versions.map((v) => [v.version, v.state])).toEqual([[1, 'retired'], [2, 'active']]);
      // Readable by this process and by a fresh one with empty caches.
      for (let i = 0; i < 5; i++) expect(await get(t, `s${i}`)).toBe(`value ${i}`);
      const fresh = await openRuntime(rt.env.config, { logger: createLogger('silent'), clock });
      try {
        expect((await fresh.storage.tenant(t).transaction((db) => fresh.secrets.get(db, t, 'test', 's3'))).toString()).toBe('value 3');
      } finally {
        await fresh.close();
      }
    });

    it('reports the tenants due for scheduled rotation', async () => {
      const t = await newTenant('rotate-due');
      await rt.keys.setRotationPeriod(t, 30);
      expect(await rt.keys.dueForRotation()).not.toContain(t);
      clock.advance(31 * DAY);
      expect(await rt.keys.dueForRotation()).toContain(t);
      await rt.keys.rotate(t);
      expect(await rt.keys.dueForRotation()).not.toContain(t);
      await expect(rt.keys.setRotationPeriod(t, 0)).rejects.toMatchObject({ code: 'validation_failed' });
    });
  });

  describe('customer-managed keys', () => {
    const wrapFor = (pem: string, material: Buffer, oaepHash = 'sha256') => publicEncrypt({ key: pem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, material);

    it('imports RSA-OAEP-SHA256 wrapped key material and becomes customer-managed', async () => {
      const t = await newTenant('cmk-import');
      await put(t, 'before', 'written under the provider key');
      const params = await rt.keys.importParameters(t);
      expect(params).toMatchObject({ wrappingAlgorithm: 'RSAES_OAEP_SHA_256', keySpec: 'AES_256' });
      expect(params.publicKeyPem).toMatch(/^-----BEGIN PUBLIC KEY-----/);
      // The same parameters are returned while valid.
      expect((await rt.keys.importParameters(t)).publicKeyPem).toBe(params.publicKeyPem);
      const r = await rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32)));
      expect(r).toEqual({ version: 2, rewrapped: 1 });
      const view = await rt.keys.describe(t);
      expect(view).toMatchObject({ mode: 'customer', state: 'enabled', currentVersion: 2, nextRotationAt: null });
      expect(view.versions.at(-1)).toMatchObject({ origin: 'imported', state: 'active' });
      expect(await get(t, 'before')).toBe('written under the provider key');
      // Single use: the import key is gone.
      await expect(rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32)))).rejects.toMatchObject({ code: 'key_import_invalid' });
      // Rotation of a customer key is an import, not a generated version.
      await expect(rt.keys.rotate(t)).rejects.toMatchObject({ code: 'conflict' });
    });

    it('refuses material wrapped wrongly, of the wrong size, or after the parameters expired', async () => {
      const t = await newTenant('cmk-bad');
      const params = await rt.keys.importParameters(t);
      await expect(rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32), 'sha1'))).rejects.toMatchObject({ code: 'key_import_invalid' });
      await expect(rt.keys.importKeyMaterial(t, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_PADDING }, randomBytes(32)))).rejects.toMatchObject({ code: 'key_import_invalid' });
      await expect(rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(16)))).rejects.toMatchObject({ code: 'key_import_invalid' });
      await expect(rt.keys.importKeyMaterial(t, randomBytes(384))).rejects.toMatchObject({ code: 'key_import_invalid' });
      clock.advance(25 * 3600 * 1000);
      await expect(rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32)))).rejects.toMatchObject({ code: 'key_import_invalid' });
      expect((await rt.keys.describe(t)).mode).toBe('provider');
    });

    it('a disabled key blocks every read and write with key_disabled until enabled', async () => {
      const t = await newTenant('cmk-disable');
      await put(t, 'a', 'readable');
      await expect(rt.keys.disable(t)).rejects.toMatchObject({ code: 'conflict' }); // provider-managed keys are not disabled
      const params = await rt.keys.importParameters(t);
      await rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32)));
      await rt.keys.disable(t);
      await expect(get(t, 'a')).rejects.toMatchObject({ code: 'key_disabled' });
      await expect(put(t, 'b', 'new')).rejects.toMatchObject({ code: 'key_disabled' });
      expect((await rt.keys.describe(t)).state).toBe('disabled');
      // Another process sees the change once its one-second cache expires.
      const other = await openRuntime(rt.env.config, { logger: createLogger('silent'), clock });
      try {
        await expect(other.storage.tenant(t).transaction((db) => other.secrets.get(db, t, 'test', 'a'))).rejects.toMatchObject({ code: 'key_disabled' });
        await rt.keys.enable(t);
        clock.advance(1001);
        expect((await other.storage.tenant(t).transaction((db) => other.secrets.get(db, t, 'test', 'a'))).toString()).toBe('readable');
      } finally {
        await other.close();
      }
      expect(await get(t, 'a')).toBe('readable');
      await put(t, 'b', 'written again');
      expect(await get(t, 'b')).toBe('written again');
    });

    it('schedules deletion 7-30 days ahead, can cancel, and destruction is final', async () => {
      const t = await newTenant('cmk-delete');
      await put(t, 'a', 'doomed data');
      const params = await rt.keys.importParameters(t);
      await rt.keys.importKeyMaterial(t, wrapFor(params.publicKeyPem, randomBytes(32)));
      await expect(rt.keys.scheduleDeletion(t, 6)).rejects.toMatchObject({ code: 'validation_failed' });
      await expect(rt.keys.scheduleDeletion(t, 31)).rejects.toMatchObject({ code: 'validation_failed' });
      await rt.keys.scheduleDeletion(t, 7);
      await expect(get(t, 'a')).rejects.toMatchObject({ code: 'key_disabled' });
      await expect(rt.keys.enable(t)).rejects.toMatchObject({ code: 'conflict' });
      await rt.keys.cancelDeletion(t);
      expect((await rt.keys.describe(t)).state).toBe('disabled');
      await rt.keys.enable(t);
      expect(await get(t, 'a')).toBe('doomed data');

      await rt.keys.scheduleDeletion(t, 7);
      clock.advance(6 * DAY);
      expect(await rt.keys.dueForDestruction()).not.toContain(t);
      clock.advance(DAY + 1);
      expect(await rt.keys.dueForDestruction()).toContain(t);
      await rt.keys.destroyRing(t, { removeRing: false });
      const view = await rt.keys.describe(t);
      expect(view.state).toBe('destroyed');
      expect(view.versions).toEqual([]);
      await expect(get(t, 'a')).rejects.toMatchObject({ code: 'key_destroyed' });
      await expect(rt.keys.enable(t)).rejects.toMatchObject({ code: 'key_destroyed' });
      await expect(rt.keys.cancelDeletion(t)).rejects.toMatchObject({ code: 'key_destroyed' });
    });
  });

  describe('crypto-shredding on tenant deletion', () => {
    it('a saved copy of the store cannot be decrypted once the tenant is deleted', async () => {
      const t = await newTenant('shred-me');
      await put(t, 'a', 'shredded secret value');
      const loc = rt.storage.locateTenantStore(t);
      const savedKeys = await dataKeys(t);
      const savedSecret = await rt.storage.tenant(t).transaction((db) => db.selectFrom('tenant_secrets').selectAll().executeTakeFirstOrThrow());
      let copy: string | undefined;
      if (loc.kind === 'sqlite') {
        copy = `${loc.file}.saved`;
        await rt.storage.tenant(t).transaction(async () => undefined);
        copyFileSync(loc.file, copy);
        if (existsSync(`${loc.file}-wal`)) copyFileSync(`${loc.file}-wal`, `${copy}-wal`);
      }
      await rt.tenants.delete('shred-me', TEST_OPERATOR);
      expect(await rt.storage.control.selectFrom('key_versions').selectAll().where('tenant_id', '=', t).execute()).toEqual([]);
      expect(await rt.storage.control.selectFrom('key_rings').selectAll().where('tenant_id', '=', t).execute()).toEqual([]);

      // Restore the saved copy as an attacker holding a backup and the running deployment would.
      if (copy) {
        copyFileSync(copy, loc.kind === 'sqlite' ? loc.file : '');
        if (existsSync(`${copy}-wal`)) copyFileSync(`${copy}-wal`, `${(loc as { file: string }).file}-wal`);
        const fresh = await openRuntime(rt.env.config, { logger: createLogger('silent'), clock });
        try {
          const rows = await fresh.storage.tenant(t).transaction((db) => db.selectFrom('tenant_secrets').selectAll().execute());
          expect(rows).toHaveLength(1);
          await expect(fresh.storage.tenant(t).transaction((db) => fresh.secrets.get(db, t, 'test', 'a'))).rejects.toMatchObject({ code: 'key_destroyed' });
        } finally {
          await fresh.close();
        }
      }
      // No key left anywhere in the deployment opens the saved data key: not the master key, not any other tenant's KEK.
      const masterWrap = kekWrappingKey(await readMasterKeyFile(rt.env.config.masterKeyFile));
      const allVersions = await rt.storage.control.selectFrom('key_versions').selectAll().execute();
      for (const dk of savedKeys) {
        expect(() => open(masterWrap, dk.wrapped_dek, Buffer.alloc(0))).toThrow();
        for (const v of allVersions) {
          const kek = open(masterWrap, v.wrapped_key, Buffer.from(`custos/kek/v1\u0000${v.tenant_id}\u0000${v.version}`));
          expect(() => open(kek, dk.wrapped_dek, Buffer.from(`custos/dek/v1\u0000${t}\u0000${dk.object_type}\u0000${dk.object_id}\u0000${dk.generation}\u0000${dk.kek_version}`))).toThrow();
        }
      }
      expect(savedSecret.ciphertext.includes(Buffer.from('shredded secret'))).toBe(false);
    });
  });

  describe('re-encryption', () => {
    it('moves every value to a fresh data key, keeps everything readable, and resumes after a failure midway', async () => {
      const t = await newTenant('reencrypt-a');
      await rt.storage.tenant(t).transaction(async (db) => {
        for (let i = 0; i < 250; i++) await rt.secrets.put(db, t, 'bulk', `k${String(i).padStart(4, '0')}`, `plain value ${i}`);
      });
      const deps = { storage: rt.storage, keys: rt.keys, clock, sources: rt.encryptedSources };
      let batches = 0;
      const failing: EncryptedSource = {
        ...TenantSecrets.source,
        async reencryptBatch(db, keysFor, cursor, limit) {
          if (++batches === 3) throw new Error('crash after two batches');
          return TenantSecrets.source.reencryptBatch(db, keysFor, cursor, limit);
        },
      };
      await expect(reencryptTenant({ ...deps, sources: [failing] }, t, { batchSize: 40 })).rejects.toThrow('crash after two batches');
      const mid = await rt.storage.tenant(t).transaction((db) => db.selectFrom('key_jobs').selectAll().executeTakeFirstOrThrow());
      expect(mid).toMatchObject({ state: 'running', processed: 80, total: 250 });
      // Halfway, old and new generations coexist and all values still read.
      expect(await rt.storage.tenant(t).transaction((db) => rt.secrets.get(db, t, 'bulk', 'k0001'))).toEqual(Buffer.from('plain value 1'));
      expect(await rt.storage.tenant(t).transaction((db) => rt.secrets.get(db, t, 'bulk', 'k0249'))).toEqual(Buffer.from('plain value 249'));

      const progress: number[] = [];
      const report = await reencryptTenant(deps, t, { batchSize: 40, onProgress: (p) => progress.push(p.processed) });
      expect(report).toMatchObject({ resumed: true, state: 'finished', total: 250, processed: 250 });
      expect(progress[0]).toBe(80);
      const gens = await rt.storage.tenant(t).transaction((db) => db.selectFrom('tenant_secrets').select('ciphertext').execute());
      expect(new Set(gens.map((g) => ciphertextGeneration(g.ciphertext)))).toEqual(new Set([2]));
      for (const i of [0, 77, 249]) {
        expect((await rt.storage.tenant(t).transaction((db) => rt.secrets.get(db, t, 'bulk', `k${String(i).padStart(4, '0')}`))).toString()).toBe(`plain value ${i}`);
      }
      const dks = await dataKeys(t);
      expect(dks.map((d) => [d.generation, d.state])).toEqual([[1, 'retired'], [2, 'active']]);
      // A second run starts a new job and moves everything again.
      const again = await reencryptTenant(deps, t, { batchSize: 100 });
      expect(again).toMatchObject({ resumed: false, changed: 250 });
    });

    it('refuses to run while the key is disabled', async () => {
      const t = await newTenant('reencrypt-off');
      await put(t, 'a', 'b');
      const params = await rt.keys.importParameters(t);
      await rt.keys.importKeyMaterial(t, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32)));
      await rt.keys.disable(t);
      await expect(reencryptTenant({ storage: rt.storage, keys: rt.keys, clock, sources: rt.encryptedSources }, t)).rejects.toMatchObject({ code: 'key_disabled' });
    });
  });

  describe('master key rotation', () => {
    it('re-seals every ring under a new master key; data stays readable; the old key opens nothing', async () => {
      const t = await newTenant('master-rot');
      await put(t, 'a', 'survives master rotation');
      const oldKey = await readMasterKeyFile(rt.env.config.masterKeyFile);
      const res = await rotateMasterKey({ storage: rt.storage, keys: rt.keys, clock, masterKeyFile: rt.env.config.masterKeyFile });
      rt.useMasterKey(res.next);
      expect(res.from).not.toBe(res.to);
      expect(existsSync(stagedMasterKeyFile(rt.env.config.masterKeyFile))).toBe(false);
      const newKey = readFileSync(rt.env.config.masterKeyFile);
      expect(newKey.equals(oldKey)).toBe(false);
      expect(await get(t, 'a')).toBe('survives master rotation');
      const versions = await rt.storage.control.selectFrom('key_versions').selectAll().execute();
      for (const v of versions) {
        expect(() => open(kekWrappingKey(oldKey), v.wrapped_key, Buffer.from(`custos/kek/v1\u0000${v.tenant_id}\u0000${v.version}`))).toThrow();
      }
      const fresh = await openRuntime(rt.env.config, { logger: createLogger('silent'), clock });
      try {
        expect((await fresh.storage.tenant(t).transaction((db) => fresh.secrets.get(db, t, 'test', 'a'))).toString()).toBe('survives master rotation');
      } finally {
        await fresh.close();
      }
    });

    it('refuses to start with a master key file that does not belong to the deployment', async () => {
      const { writeFileSync, chmodSync } = await import('node:fs');
      const file = rt.env.config.masterKeyFile;
      const good = readFileSync(file);
      writeFileSync(file, randomBytes(32));
      chmodSync(file, 0o600);
      try {
        await expect(openRuntime(rt.env.config, { logger: createLogger('silent'), clock })).rejects.toMatchObject({ code: 'master_key_mismatch' });
      } finally {
        writeFileSync(file, good);
      }
    });
  });
});
