import type { Kysely } from 'kysely';
import type { TenantDB } from '../storage/schema.js';
import type { ObjectKeys } from './field-cipher.js';

/** Gives the keys of a protected object within the current transaction. */
export type KeysFor = (objectType: string, objectId: string) => Promise<ObjectKeys>;

/**
 * A table (or set of tables) holding field ciphertexts, as the re-encryption
 * job sees it. Each feature that stores encrypted values provides one; the
 * runtime lists them. `reencryptBatch` moves up to `limit` rows after
 * `cursor` to the active generation of their object's keys (rows already
 * there are skipped but counted) and returns where to continue (`null` when
 * the source is exhausted).
 */
export interface EncryptedSource {
  readonly name: string;
  count(db: Kysely<TenantDB>): Promise<number>;
  reencryptBatch(db: Kysely<TenantDB>, keysFor: KeysFor, cursor: string | null, limit: number): Promise<{ visited: number; changed: number; cursor: string | null }>;
}
