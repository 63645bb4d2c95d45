import type { Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { TenantDB } from '../storage/schema.js';
import type { EncryptedSource } from './encrypted-source.js';
import { ciphertextGeneration } from './field-cipher.js';
import type { KeyService } from './key-service.js';

/** The protected object all of a tenant's secrets share a data key with. */
export const SECRETS_OBJECT = { type: 'tenant-secrets', id: 'tenant' } as const;
const FIELD = 'value';

/**
 * Small secrets a tenant's configuration needs in clear at run time (webhook
 * signing secrets, MFA seeds, connection credentials), encrypted under the
 * tenant's keys — so they follow rotation, re-encryption, disabling and
 * crypto-shredding like any other tenant data. Each is addressed by
 * `(purpose, name)`; the ciphertext is bound to its row id.
 */
export class TenantSecrets {
  readonly #keys: KeyService;
  readonly #clock: Clock;

  constructor(deps: { keys: KeyService; clock: Clock }) {
    this.#keys = deps.keys;
    this.#clock = deps.clock;
  }

  /** Stores (or replaces) a secret inside the caller's tenant transaction. */
  async put(db: Kysely<TenantDB>, tenantId: string, purpose: string, name: string, value: Buffer | string): Promise<void> {
    const keys = await this.#keys.objectKeys(db, tenantId, SECRETS_OBJECT.type, SECRETS_OBJECT.id);
    const now = this.#clock.now();
    const existing = await db.selectFrom('tenant_secrets').select('id').where('purpose', '=', purpose).where('name', '=', name).executeTakeFirst();
    const id = existing?.id ?? newId(now);
    const ciphertext = keys.encrypt(id, FIELD, value);
    if (existing) {
      await db.updateTable('tenant_secrets').set({ ciphertext, updated_at: now }).where('id', '=', id).execute();
    } else {
      await db.insertInto('tenant_secrets').values({ id, purpose, name, ciphertext, created_at: now, updated_at: now }).execute();
    }
  }

  /** Reads a secret; `not_found` when absent. */
  async get(db: Kysely<TenantDB>, tenantId: string, purpose: string, name: string): Promise<Buffer> {
    const row = await db.selectFrom('tenant_secrets').select(['id', 'ciphertext']).where('purpose', '=', purpose).where('name', '=', name).executeTakeFirst();
    if (!row) throw new CustosError('not_found');
    const keys = await this.#keys.objectKeys(db, tenantId, SECRETS_OBJECT.type, SECRETS_OBJECT.id);
    return keys.decrypt(row.id, FIELD, row.ciphertext);
  }

  async delete(db: Kysely<TenantDB>, purpose: string, name: string): Promise<boolean> {
    const r = await db.deleteFrom('tenant_secrets').where('purpose', '=', purpose).where('name', '=', name).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  /** The re-encryption job's view of this table. */
  static readonly source: EncryptedSource = {
    name: 'tenant-secrets',
    async count(db) {
      const r = await db.selectFrom('tenant_secrets').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
      return Number(r.n);
    },
    async reencryptBatch(db, keysFor, cursor, limit) {
      let q = db.selectFrom('tenant_secrets').select(['id', 'ciphertext']).orderBy('id').limit(limit);
      if (cursor !== null) q = q.where('id', '>', cursor);
      const rows = await q.execute();
      if (rows.length === 0) return { visited: 0, changed: 0, cursor: null };
      const keys = await keysFor(SECRETS_OBJECT.type, SECRETS_OBJECT.id);
      let changed = 0;
      for (const row of rows) {
        if (ciphertextGeneration(row.ciphertext) === keys.active.generation) continue;
        const plain = keys.decrypt(row.id, FIELD, row.ciphertext);
        await db.updateTable('tenant_secrets').set({ ciphertext: keys.encrypt(row.id, FIELD, plain) }).where('id', '=', row.id).execute();
        plain.fill(0);
        changed++;
      }
      return { visited: rows.length, changed, cursor: rows.length < limit ? null : rows.at(-1)!.id };
    },
  };
}
