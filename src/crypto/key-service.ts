import { constants, createPrivateKey, generateKeyPair, privateDecrypt, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import type { ControlDB, TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { KEY_BYTES, open, seal } from './aead.js';
import { ObjectKeys, type DataKeyMaterial } from './field-cipher.js';
import type { DataKeysTable, KeyRingsTable, RingMode } from './key-tables.js';
import { findRing, findVersion, insertVersion, listVersions, retireVersionsBelow, updateRing } from './key-ring-store.js';
import { kekWrappingKey } from './master-key.js';

const generateKeyPairAsync = promisify(generateKeyPair);

/** Automatic rotation period of a new provider-managed ring. */
export const DEFAULT_ROTATION_DAYS = 365;
/** Import parameters (the RSA wrapping key) stay valid this long. */
export const IMPORT_PARAMS_TTL_MS = 24 * 3600 * 1000;
export const MIN_DELETION_DAYS = 7;
export const MAX_DELETION_DAYS = 30;
/** A ring state read from the control plane is trusted this long; changes made in this process apply at once. */
const RING_CACHE_MS = 1000;
/** Unwrapped data keys kept in memory. */
const DEK_CACHE_ENTRIES = 10_000;
const DAY_MS = 24 * 3600 * 1000;

/** What `custos keys list` and the keys API show: states and dates, never key material. */
export interface KeyRingView {
  tenantId: string;
  mode: RingMode;
  state: KeyRingsTable['state'];
  currentVersion: number | null;
  rotationPeriodDays: number;
  lastRotatedAt: string;
  nextRotationAt: string | null;
  deletionDueAt: string | null;
  versions: Array<{ version: number; origin: string; state: string; createdAt: string; retiredAt: string | null }>;
}

export interface ImportParameters {
  tenantId: string;
  /** RSA-3072 public key (SPKI PEM) to wrap the 32-byte key material with. */
  publicKeyPem: string;
  wrappingAlgorithm: 'RSAES_OAEP_SHA_256';
  keySpec: 'AES_256';
  expiresAt: string;
}

function kekAad(tenantId: string, version: number): Buffer {
  return Buffer.from(`custos/kek/v1\u0000${tenantId}\u0000${version}`, 'utf8');
}

function dekAad(kind: 'dek' | 'idx', tenantId: string, row: Pick<DataKeysTable, 'object_type' | 'object_id' | 'generation' | 'kek_version'>): Buffer {
  return Buffer.from(`custos/${kind}/v1\u0000${tenantId}\u0000${row.object_type}\u0000${row.object_id}\u0000${row.generation}\u0000${row.kek_version}`, 'utf8');
}

function importKeyAad(tenantId: string): Buffer {
  return Buffer.from(`custos/import-key/v1\u0000${tenantId}`, 'utf8');
}

/**
 * The key hierarchy: provider master key → tenant key ring (versioned KEKs,
 * in the control plane) → per-object data keys (DEKs, in the tenant's store)
 * → field values. Provider-managed rings are generated here and rotate on a
 * schedule; customer-managed rings hold key material the tenant imported
 * (RSA-OAEP-SHA256 wrapped) and can be disabled or scheduled for deletion by
 * the tenant. Destroying a ring is crypto-shredding: the tenant's data keys
 * can no longer be unwrapped by anyone.
 */
export class KeyService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  #wrapKey: Buffer;
  readonly #rings = new Map<string, { ring: KeyRingsTable | undefined; at: number }>();
  readonly #keks = new Map<string, Buffer>();
  readonly #deks = new Map<string, DataKeyMaterial>();

  constructor(deps: { storage: Storage; clock: Clock; masterKey: Buffer }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#wrapKey = kekWrappingKey(deps.masterKey);
  }

  // --- ring lifecycle --------------------------------------------------------

  /** Creates a provider-managed ring with version 1. Runs inside the caller's control-plane transaction. */
  async createRing(db: Kysely<ControlDB>, tenantId: string): Promise<void> {
    const now = this.#clock.now();
    const kek = randomBytes(KEY_BYTES);
    await db
      .insertInto('key_rings')
      .values({
        tenant_id: tenantId,
        mode: 'provider',
        state: 'enabled',
        current_version: 1,
        rotation_period_days: DEFAULT_ROTATION_DAYS,
        last_rotated_at: now,
        deletion_due_at: null,
        import_public_key: null,
        import_private_key: null,
        import_expires_at: null,
        created_at: now,
        updated_at: now,
      })
      .execute();
    await insertVersion(db, { tenant_id: tenantId, version: 1, origin: 'generated', state: 'active', wrapped_key: seal(this.#wrapKey, kek, kekAad(tenantId, 1)), created_at: now, retired_at: null });
  }

  /**
   * Destroys a tenant's key material: every KEK version is deleted, so no data
   * key of the tenant — in its store or in any copy of it — can be unwrapped
   * again. `removeRing` also drops the ring row (tenant deletion); otherwise the
   * ring stays, in state destroyed, so its tenant sees `key_destroyed`.
   */
  async destroyRing(tenantId: string, opts: { removeRing: boolean }): Promise<void> {
    await this.#storage.controlTransaction(async (db) => {
      await db.deleteFrom('key_versions').where('tenant_id', '=', tenantId).execute();
      if (opts.removeRing) await db.deleteFrom('key_rings').where('tenant_id', '=', tenantId).execute();
      else await updateRing(db, tenantId, { state: 'destroyed', deletion_due_at: null, import_private_key: null, import_public_key: null, import_expires_at: null, updated_at: this.#clock.now() });
    });
    this.#forget(tenantId);
  }

  #forget(tenantId: string): void {
    this.#rings.delete(tenantId);
    for (const k of this.#readKeys.keys()) if (k.startsWith(`${tenantId}|`)) this.#readKeys.delete(k);
    for (const k of this.#keks.keys()) if (k.startsWith(`${tenantId}:`)) this.#keks.delete(k);
    for (const k of this.#deks.keys()) if (k.startsWith(`${tenantId}|`)) this.#deks.delete(k);
  }

  async #ring(tenantId: string): Promise<KeyRingsTable | undefined> {
    const now = this.#clock.now();
    const hit = this.#rings.get(tenantId);
    if (hit && now - hit.at < RING_CACHE_MS) return hit.ring;
    const ring = await findRing(this.#storage.control, tenantId);
    this.#rings.set(tenantId, { ring, at: now });
    return ring;
  }

  /** Fails unless the ring can be used: `key_destroyed` when its key material is gone, `key_disabled` while disabled or pending deletion. */
  async #usableRing(tenantId: string): Promise<KeyRingsTable> {
    const ring = await this.#ring(tenantId);
    if (!ring || ring.state === 'destroyed') throw new CustosError('key_destroyed');
    if (ring.state !== 'enabled') {
      this.#forget(tenantId);
      this.#rings.set(tenantId, { ring, at: this.#clock.now() });
      throw new CustosError('key_disabled');
    }
    return ring;
  }

  async #kek(tenantId: string, version: number): Promise<Buffer> {
    const cacheKey = `${tenantId}:${version}`;
    const hit = this.#keks.get(cacheKey);
    if (hit) return hit;
    const row = await findVersion(this.#storage.control, tenantId, version);
    if (!row) throw new CustosError('key_destroyed');
    const kek = open(this.#wrapKey, row.wrapped_key, kekAad(tenantId, version));
    this.#keks.set(cacheKey, kek);
    return kek;
  }

  // --- data keys ---------------------------------------------------------------

  async #material(tenantId: string, row: DataKeysTable): Promise<DataKeyMaterial> {
    const cacheKey = `${tenantId}|${row.object_type}|${row.object_id}|${row.generation}|${row.kek_version}`;
    const hit = this.#deks.get(cacheKey);
    if (hit) {
      this.#deks.delete(cacheKey);
      this.#deks.set(cacheKey, hit);
      return hit;
    }
    const kek = await this.#kek(tenantId, row.kek_version);
    const material: DataKeyMaterial = {
      generation: row.generation,
      dek: open(kek, row.wrapped_dek, dekAad('dek', tenantId, row)),
      indexKey: open(kek, row.wrapped_index_key, dekAad('idx', tenantId, row)),
    };
    this.#deks.set(cacheKey, material);
    if (this.#deks.size > DEK_CACHE_ENTRIES) this.#deks.delete(this.#deks.keys().next().value!);
    return material;
  }

  #wrapRow(tenantId: string, kek: Buffer, base: Omit<DataKeysTable, 'wrapped_dek' | 'wrapped_index_key'>, dek: Buffer, indexKey: Buffer): DataKeysTable {
    return { ...base, wrapped_dek: seal(kek, dek, dekAad('dek', tenantId, base)), wrapped_index_key: seal(kek, indexKey, dekAad('idx', tenantId, base)) };
  }

  /**
   * The data keys of one protected object, as this transaction sees them,
   * creating generation 1 on first use. Fails `key_disabled` / `key_destroyed`
   * when the tenant's ring cannot be used. Call once per transaction.
   */
  async objectKeys(db: Kysely<TenantDB>, tenantId: string, objectType: string, objectId: string): Promise<ObjectKeys> {
    const ring = await this.#usableRing(tenantId);
    let rows = await db.selectFrom('data_keys').selectAll().where('object_type', '=', objectType).where('object_id', '=', objectId).orderBy('generation').execute();
    if (rows.length === 0) {
      const kek = await this.#kek(tenantId, ring.current_version);
      const row = this.#wrapRow(
        tenantId,
        kek,
        { object_type: objectType, object_id: objectId, generation: 1, state: 'active', kek_version: ring.current_version, created_at: this.#clock.now() },
        randomBytes(KEY_BYTES),
        randomBytes(KEY_BYTES),
      );
      await db.insertInto('data_keys').values(row).onConflict((oc) => oc.columns(['object_type', 'object_id', 'generation']).doNothing()).execute();
      rows = await db.selectFrom('data_keys').selectAll().where('object_type', '=', objectType).where('object_id', '=', objectId).orderBy('generation').execute();
    }
    const all = await Promise.all(rows.map((r) => this.#material(tenantId, r)));
    const activeRow = rows.filter((r) => r.state === 'active').at(-1) ?? rows.at(-1)!;
    const active = all.find((m) => m.generation === activeRow.generation)!;
    return new ObjectKeys(tenantId, objectType, objectId, active, all);
  }

  readonly #readKeys = new Map<string, { keys: ObjectKeys; at: number }>();

  /**
   * The data keys of an object for reading, cached for a second (the ring's
   * state is still checked on every call). A value under a generation the
   * cached keys do not know fails `decryption_failed`: the caller then asks
   * again with `fresh`. Writes use {@link objectKeys}, which reads the current
   * generation in their transaction.
   */
  async objectKeysForRead(db: Kysely<TenantDB>, tenantId: string, objectType: string, objectId: string, opts: { fresh?: boolean } = {}): Promise<ObjectKeys> {
    await this.#usableRing(tenantId);
    const key = `${tenantId}|${objectType}|${objectId}`;
    const now = this.#clock.now();
    const hit = this.#readKeys.get(key);
    if (!opts.fresh && hit && now - hit.at < RING_CACHE_MS) return hit.keys;
    const keys = await this.objectKeys(db, tenantId, objectType, objectId);
    if (this.#readKeys.size > DEK_CACHE_ENTRIES) this.#readKeys.clear();
    this.#readKeys.set(key, { keys, at: now });
    return keys;
  }

  /**
   * Starts a new data-key generation for every object of the tenant (the
   * re-encryption job's first step): a fresh DEK, the same blind-index key, the
   * older generation retired but kept so existing values still open. Returns
   * the target generation per object (`type\u0000id` → generation).
   */
  async startNewGenerations(db: Kysely<TenantDB>, tenantId: string): Promise<Record<string, number>> {
    const ring = await this.#usableRing(tenantId);
    const kek = await this.#kek(tenantId, ring.current_version);
    const actives = await db.selectFrom('data_keys').selectAll().where('state', '=', 'active').execute();
    const targets: Record<string, number> = {};
    const now = this.#clock.now();
    for (const row of actives) {
      const old = await this.#material(tenantId, row);
      const next = this.#wrapRow(
        tenantId,
        kek,
        { object_type: row.object_type, object_id: row.object_id, generation: row.generation + 1, state: 'active', kek_version: ring.current_version, created_at: now },
        randomBytes(KEY_BYTES),
        old.indexKey,
      );
      await db.updateTable('data_keys').set({ state: 'retired' }).where('object_type', '=', row.object_type).where('object_id', '=', row.object_id).where('generation', '=', row.generation).execute();
      await db.insertInto('data_keys').values(next).execute();
      targets[`${row.object_type}\u0000${row.object_id}`] = next.generation;
    }
    return targets;
  }

  // --- rotation ------------------------------------------------------------------

  /**
   * Adds a KEK version to a provider-managed ring and rewraps every data key
   * under it. Data is not touched and no plaintext value is ever exposed:
   * only the DEKs are unwrapped and wrapped again. Older versions stay,
   * retired, so that wraps in older copies of the store (backups) still open.
   */
  async rotate(tenantId: string, opts: { onControl?: (db: Kysely<ControlDB>, version: number) => Promise<void> } = {}): Promise<{ version: number; rewrapped: number }> {
    const version = await this.#storage.controlTransaction(async (db) => {
      const ring = await findRing(db, tenantId);
      if (!ring || ring.state === 'destroyed') throw new CustosError('key_destroyed');
      if (ring.state !== 'enabled') throw new CustosError('key_disabled');
      if (ring.mode === 'customer') throw new CustosError('conflict', 'a customer-managed key rotates by importing new key material');
      const v = ring.current_version + 1;
      const now = this.#clock.now();
      await insertVersion(db, { tenant_id: tenantId, version: v, origin: 'generated', state: 'active', wrapped_key: seal(this.#wrapKey, randomBytes(KEY_BYTES), kekAad(tenantId, v)), created_at: now, retired_at: null });
      await retireVersionsBelow(db, tenantId, v, now);
      await updateRing(db, tenantId, { current_version: v, last_rotated_at: now, updated_at: now });
      await opts.onControl?.(db, v);
      return v;
    });
    // Unwrapped keys of the old wraps leave memory with the rotation.
    this.#forget(tenantId);
    const rewrapped = await this.rewrap(tenantId);
    return { version, rewrapped };
  }

  /** Rewraps every data key not yet under the ring's current version. Idempotent; finishes a rotation a crash interrupted. */
  async rewrap(tenantId: string): Promise<number> {
    this.#rings.delete(tenantId);
    const ring = await this.#usableRing(tenantId);
    return this.#rewrapUnder(tenantId, ring.current_version);
  }

  /** Rewraps every data key not under `current` (the ring's current version), in one tenant transaction: all of them or none. The caller checks the ring. */
  async #rewrapUnder(tenantId: string, current: number): Promise<number> {
    const kek = await this.#kek(tenantId, current);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const stale = await db.selectFrom('data_keys').selectAll().where('kek_version', '!=', current).execute();
      for (const row of stale) {
        const m = await this.#material(tenantId, row);
        const next = this.#wrapRow(tenantId, kek, { ...row, kek_version: current }, m.dek, m.indexKey);
        await db
          .updateTable('data_keys')
          .set({ kek_version: current, wrapped_dek: next.wrapped_dek, wrapped_index_key: next.wrapped_index_key })
          .where('object_type', '=', row.object_type)
          .where('object_id', '=', row.object_id)
          .where('generation', '=', row.generation)
          .execute();
      }
      return stale.length;
    });
  }

  async setRotationPeriod(tenantId: string, days: number): Promise<void> {
    if (!Number.isInteger(days) || days < 1 || days > 3650) throw new CustosError('validation_failed', 'rotation period must be 1 to 3650 days');
    await this.#storage.controlTransaction(async (db) => {
      if (!(await findRing(db, tenantId))) throw new CustosError('tenant_not_found');
      await updateRing(db, tenantId, { rotation_period_days: days, updated_at: this.#clock.now() });
    });
  }

  /** Tenants whose provider-managed ring is due for its scheduled rotation. */
  async dueForRotation(): Promise<string[]> {
    const now = this.#clock.now();
    const rings = await this.#storage.control.selectFrom('key_rings').select(['tenant_id', 'last_rotated_at', 'rotation_period_days']).where('mode', '=', 'provider').where('state', '=', 'enabled').execute();
    return rings.filter((r) => r.last_rotated_at + r.rotation_period_days * DAY_MS <= now).map((r) => r.tenant_id);
  }

  // --- customer-managed keys ----------------------------------------------------------

  /** Creates (or returns, while valid) the RSA-3072 key the tenant wraps its key material with. */
  async importParameters(tenantId: string): Promise<ImportParameters> {
    const now = this.#clock.now();
    const ring = await findRing(this.#storage.control, tenantId);
    if (!ring) throw new CustosError('tenant_not_found');
    if (ring.state === 'destroyed') throw new CustosError('key_destroyed');
    if (ring.import_public_key && ring.import_expires_at && ring.import_expires_at > now) {
      return { tenantId, publicKeyPem: ring.import_public_key, wrappingAlgorithm: 'RSAES_OAEP_SHA_256', keySpec: 'AES_256', expiresAt: rfc3339(ring.import_expires_at) };
    }
    const { publicKey, privateKey } = await generateKeyPairAsync('rsa', { modulusLength: 3072 });
    const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
    const privateDer = privateKey.export({ type: 'pkcs8', format: 'der' });
    const expires = now + IMPORT_PARAMS_TTL_MS;
    await this.#storage.controlTransaction((db) =>
      updateRing(db, tenantId, { import_public_key: publicKeyPem, import_private_key: seal(this.#wrapKey, privateDer, importKeyAad(tenantId)), import_expires_at: expires, updated_at: now }),
    );
    return { tenantId, publicKeyPem, wrappingAlgorithm: 'RSAES_OAEP_SHA_256', keySpec: 'AES_256', expiresAt: rfc3339(expires) };
  }

  /**
   * Imports 256-bit key material wrapped with RSA-OAEP-SHA256 under the
   * tenant's import public key. It becomes the ring's new current version and
   * the ring becomes customer-managed; every data key is rewrapped under it.
   * The import key pair is single-use.
   */
  async importKeyMaterial(tenantId: string, wrapped: Buffer, opts: { onControl?: (db: Kysely<ControlDB>, version: number) => Promise<void> } = {}): Promise<{ version: number; rewrapped: number }> {
    const version = await this.#storage.controlTransaction(async (db) => {
      const ring = await findRing(db, tenantId);
      if (!ring) throw new CustosError('tenant_not_found');
      if (ring.state === 'destroyed') throw new CustosError('key_destroyed');
      if (ring.state === 'pending_deletion') throw new CustosError('key_disabled');
      const now = this.#clock.now();
      if (!ring.import_private_key || !ring.import_expires_at || ring.import_expires_at <= now) {
        throw new CustosError('key_import_invalid', 'no valid import parameters: request new ones');
      }
      let material: Buffer;
      try {
        const der = open(this.#wrapKey, ring.import_private_key, importKeyAad(tenantId));
        const key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
        material = privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, wrapped);
      } catch {
        throw new CustosError('key_import_invalid', 'the key material does not unwrap with the import key (RSA-OAEP with SHA-256 expected)');
      }
      if (material.length !== KEY_BYTES) throw new CustosError('key_import_invalid', 'the key material must be exactly 32 bytes (AES-256)');
      const v = ring.current_version + 1;
      await insertVersion(db, { tenant_id: tenantId, version: v, origin: 'imported', state: 'active', wrapped_key: seal(this.#wrapKey, material, kekAad(tenantId, v)), created_at: now, retired_at: null });
      await retireVersionsBelow(db, tenantId, v, now);
      await updateRing(db, tenantId, { mode: 'customer', current_version: v, last_rotated_at: now, import_public_key: null, import_private_key: null, import_expires_at: null, updated_at: now });
      await opts.onControl?.(db, v);
      return v;
    });
    this.#rings.delete(tenantId);
    const rewrapped = ringEnabled(await findRing(this.#storage.control, tenantId)) ? await this.rewrap(tenantId) : 0;
    return { version, rewrapped };
  }

  async #setState(tenantId: string, check: (ring: KeyRingsTable) => void, changes: Partial<KeyRingsTable>, onControl?: (db: Kysely<ControlDB>) => Promise<void>): Promise<void> {
    await this.#storage.controlTransaction(async (db) => {
      const ring = await findRing(db, tenantId);
      if (!ring) throw new CustosError('tenant_not_found');
      if (ring.state === 'destroyed') throw new CustosError('key_destroyed');
      check(ring);
      await updateRing(db, tenantId, { ...changes, updated_at: this.#clock.now() });
      await onControl?.(db);
    });
    this.#forget(tenantId);
  }

  /** Disables a customer-managed key: every read and write of the tenant's encrypted data fails `key_disabled` until enabled. */
  disable(tenantId: string, onControl?: (db: Kysely<ControlDB>) => Promise<void>): Promise<void> {
    return this.#setState(
      tenantId,
      (ring) => {
        if (ring.mode !== 'customer') throw new CustosError('conflict', 'only a customer-managed key can be disabled');
        if (ring.state === 'pending_deletion') throw new CustosError('conflict', 'the key is scheduled for deletion; cancel the deletion first');
      },
      { state: 'disabled' },
      onControl,
    );
  }

  /**
   * Enables the key again. Key material imported while the key was disabled
   * became the current version without any data key being rewrapped (a
   * disabled key is not used), so every data key not under the current version
   * is rewrapped here, before the key is enabled: if that fails (key material
   * missing) the key stays as it was and the error is the caller's; enabling
   * again retries it (rewrapping is idempotent). `onControl` runs in the
   * transaction that enables the key, with the current version and the number
   * of data keys rewrapped.
   */
  async enable(tenantId: string, onControl?: (db: Kysely<ControlDB>, details: { version: number; rewrapped: number }) => Promise<void>): Promise<{ version: number; rewrapped: number }> {
    const check = (ring: KeyRingsTable | undefined): KeyRingsTable => {
      if (!ring) throw new CustosError('tenant_not_found');
      if (ring.state === 'destroyed') throw new CustosError('key_destroyed');
      if (ring.state === 'pending_deletion') throw new CustosError('conflict', 'the key is scheduled for deletion; cancel the deletion first');
      return ring;
    };
    let rewrapped = 0;
    try {
      for (let attempt = 1; attempt <= 3; attempt++) {
        const before = check(await findRing(this.#storage.control, tenantId));
        rewrapped += await this.#rewrapUnder(tenantId, before.current_version);
        const version = await this.#storage.controlTransaction(async (db) => {
          const ring = check(await findRing(db, tenantId));
          // Key material imported meanwhile: its data keys are rewrapped under it first.
          if (ring.current_version !== before.current_version) return undefined;
          await updateRing(db, tenantId, { state: 'enabled', updated_at: this.#clock.now() });
          await onControl?.(db, { version: ring.current_version, rewrapped });
          return ring.current_version;
        });
        if (version !== undefined) return { version, rewrapped };
      }
      throw new CustosError('conflict', 'key material was imported while the key was being enabled; enable it again');
    } finally {
      // Keys unwrapped while the ring was disabled leave memory; the ring is read again.
      this.#forget(tenantId);
    }
  }

  /** Schedules destruction of a customer-managed key in 7 to 30 days; the key is unusable from now on. */
  scheduleDeletion(tenantId: string, days: number, onControl?: (db: Kysely<ControlDB>) => Promise<void>): Promise<void> {
    if (!Number.isInteger(days) || days < MIN_DELETION_DAYS || days > MAX_DELETION_DAYS) {
      return Promise.reject(new CustosError('validation_failed', `deletion must be scheduled ${MIN_DELETION_DAYS} to ${MAX_DELETION_DAYS} days ahead`));
    }
    return this.#setState(
      tenantId,
      (ring) => {
        if (ring.mode !== 'customer') throw new CustosError('conflict', 'only a customer-managed key can be scheduled for deletion');
      },
      { state: 'pending_deletion', deletion_due_at: this.#clock.now() + days * DAY_MS },
      onControl,
    );
  }

  /** Cancels a scheduled deletion; the key comes back disabled, as with other key managers, and must be enabled explicitly. */
  cancelDeletion(tenantId: string, onControl?: (db: Kysely<ControlDB>) => Promise<void>): Promise<void> {
    return this.#setState(
      tenantId,
      (ring) => {
        if (ring.state !== 'pending_deletion') throw new CustosError('conflict', 'the key is not scheduled for deletion');
      },
      { state: 'disabled', deletion_due_at: null },
      onControl,
    );
  }

  /** Tenants whose scheduled key deletion is due. */
  async dueForDestruction(): Promise<string[]> {
    const rows = await this.#storage.control
      .selectFrom('key_rings')
      .select('tenant_id')
      .where('state', '=', 'pending_deletion')
      .where('deletion_due_at', '<=', this.#clock.now())
      .execute();
    return rows.map((r) => r.tenant_id);
  }

  // --- views ---------------------------------------------------------------------------

  async describe(tenantId: string): Promise<KeyRingView> {
    const ring = await findRing(this.#storage.control, tenantId);
    if (!ring) throw new CustosError('tenant_not_found');
    const versions = await listVersions(this.#storage.control, tenantId);
    const destroyed = ring.state === 'destroyed';
    return {
      tenantId,
      mode: ring.mode,
      state: ring.state,
      currentVersion: destroyed ? null : ring.current_version,
      rotationPeriodDays: ring.rotation_period_days,
      lastRotatedAt: rfc3339(ring.last_rotated_at),
      nextRotationAt: ring.mode === 'provider' && !destroyed ? rfc3339(ring.last_rotated_at + ring.rotation_period_days * DAY_MS) : null,
      deletionDueAt: ring.deletion_due_at === null ? null : rfc3339(ring.deletion_due_at),
      versions: versions.map((v) => ({ version: v.version, origin: v.origin, state: v.state, createdAt: rfc3339(v.created_at), retiredAt: v.retired_at === null ? null : rfc3339(v.retired_at) })),
    };
  }

  /** Every ring's wrapped material re-sealed from one master key to another, for master-key rotation. Runs in the caller's transaction. */
  async rewrapUnderNewMaster(db: Kysely<ControlDB>, newMasterKey: Buffer): Promise<number> {
    const newWrap = kekWrappingKey(newMasterKey);
    const versions = await db.selectFrom('key_versions').selectAll().execute();
    for (const v of versions) {
      const kek = open(this.#wrapKey, v.wrapped_key, kekAad(v.tenant_id, v.version));
      await db.updateTable('key_versions').set({ wrapped_key: seal(newWrap, kek, kekAad(v.tenant_id, v.version)) }).where('tenant_id', '=', v.tenant_id).where('version', '=', v.version).execute();
    }
    const rings = await db.selectFrom('key_rings').select(['tenant_id', 'import_private_key']).where('import_private_key', 'is not', null).execute();
    for (const r of rings) {
      const der = open(this.#wrapKey, r.import_private_key!, importKeyAad(r.tenant_id));
      await updateRing(db, r.tenant_id, { import_private_key: seal(newWrap, der, importKeyAad(r.tenant_id)) });
    }
    return versions.length;
  }

  /** Switches this process to a new master key after a committed master-key rotation. */
  useMasterKey(masterKey: Buffer): void {
    this.#wrapKey = kekWrappingKey(masterKey);
    this.#keks.clear();
  }
}

function ringEnabled(ring: KeyRingsTable | undefined): boolean {
  return ring !== undefined && ring.state === 'enabled';
}
