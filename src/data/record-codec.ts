import type { ObjectKeys } from '../crypto/field-cipher.js';
import type { RecordsTable } from './data-tables.js';
import { CUSTOMER_ID, EMAIL, MD5, MOBILE, SHA256, type FieldDef } from './fields.js';
import { normaliseEmail, ohashes } from './ohash.js';

/** The protected object a list's data keys belong to. */
export const LIST_OBJECT = 'list';

/**
 * The "field" a record's sealed values are bound to. A record's `pii` and
 * `sensitive` values are encrypted together, as one JSON document, in one
 * ciphertext bound to tenant, list and record: one cipher operation per
 * record read or written instead of one per field, and the field names are
 * inside the authenticated plaintext, so values cannot be moved between
 * fields either. (Field names are upper-case; this cannot collide.)
 */
export const SEALED = 'sealed-fields';

/** Encrypts the protected values of one record (null when it has none). */
export function sealProtected(keys: ObjectKeys, recordId: string, values: Readonly<Record<string, unknown>>): Buffer | null {
  for (const _ in values) return keys.encrypt(recordId, SEALED, JSON.stringify(values));
  return null;
}

/** Decrypts the protected values of one record; fails `decryption_failed` for a ciphertext moved from another record, list or tenant. */
export function openProtected(keys: ObjectKeys, recordId: string, sealed: Buffer | null): Record<string, unknown> {
  return sealed === null ? {} : (JSON.parse(keys.decryptString(recordId, SEALED, sealed)) as Record<string, unknown>);
}

/** Canonical text of a value for indexing (equality search and uniqueness). */
export function indexText(field: FieldDef, value: unknown): string {
  if (field.type === 'email') return String(value).trim().toLowerCase();
  if (field.type === 'phone') return String(value).replace(/\D/g, '');
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** The index value of one field: a blind index for protected fields, the canonical text for plain ones. */
export function indexValue(keys: ObjectKeys, field: FieldDef, value: unknown): Buffer {
  const text = indexText(field, value);
  return field.classification === 'plain' ? Buffer.from(text, 'utf8') : keys.blindIndex(field.name, text);
}

/** The indexed lookup key of a hash: its first 48 bits, a safe integer in both engines. Hits are confirmed on the full value. */
export function lookupKey(hash: Buffer | string): number {
  return typeof hash === 'string' ? Number.parseInt(hash.slice(0, 12), 16) : hash.readUIntBE(0, 6);
}

export interface EncodedRecord {
  row: RecordsTable;
  /** Index rows of the indexed custom fields. */
  index: Array<{ field: string; value: Buffer }>;
}

/**
 * Turns checked field values into a stored row: plain values into JSON,
 * protected values encrypted one by one (bound to tenant, list, record and
 * field), oHashes and blind indexes computed. `values` holds every field of
 * the record after the write (absent = null).
 */
export function encodeRecord(
  keys: ObjectKeys,
  fields: readonly FieldDef[],
  listKey: number,
  recordId: string,
  values: ReadonlyMap<string, unknown>,
  times: { created: number; updated: number },
  presetHashes?: { sha256?: string; md5?: string },
): EncodedRecord {
  const plain: Record<string, unknown> = {};
  const prot: Record<string, unknown> = {};
  const index: Array<{ field: string; value: Buffer }> = [];
  for (const f of fields) {
    if (f.computed) continue;
    const v = values.get(f.name);
    if (v === null || v === undefined) continue;
    if (f.classification === 'plain') plain[f.name] = v;
    else prot[f.name] = v;
    if (f.indexed && !f.standard) index.push({ field: f.name, value: indexValue(keys, f, v) });
  }
  const email = values.get(EMAIL);
  const mobile = values.get(MOBILE);
  const hashes = typeof email === 'string' ? ohashes(email) : undefined;
  const customerId = values.get(CUSTOMER_ID);
  const sha256 = hashes?.sha256 ?? presetHashes?.sha256 ?? null;
  const md5 = hashes?.md5 ?? presetHashes?.md5 ?? null;
  const mobileBi = typeof mobile === 'string' ? keys.blindIndex(MOBILE, String(mobile).replace(/\D/g, '')) : null;
  return {
    row: {
      list_key: listKey,
      id: recordId,
      customer_id: typeof customerId === 'string' ? customerId : null,
      email_sha256: sha256,
      email_md5: md5,
      email_bi: typeof email === 'string' ? keys.blindIndex(EMAIL, normaliseForMatch(email)) : null,
      mobile_bi: mobileBi,
      k_sha256: sha256 === null ? null : lookupKey(sha256),
      k_md5: md5 === null ? null : lookupKey(md5),
      k_mobile: mobileBi === null ? null : lookupKey(mobileBi),
      plain: JSON.stringify(plain),
      protected: sealProtected(keys, recordId, prot),
      created_at: times.created,
      updated_at: times.updated,
    },
    index,
  };
}

/** The email as matched and kept unique: trimmed and lower-cased (an +alias is a different mailbox). */
export function normaliseForMatch(email: string): string {
  return email.trim().toLowerCase();
}

export { normaliseEmail };

/** Decrypts a stored row back to field values (computed oHashes included): one decryption per record. */
export function decodeRecord(keys: ObjectKeys, fields: readonly FieldDef[], row: StoredValues): Map<string, unknown> {
  const values = decodeFields(keys, fields, row);
  const out = new Map<string, unknown>();
  for (let i = 0; i < fields.length; i++) out.set(fields[i]!.name, values[i]);
  return out;
}

/** The stored columns a record's values come from. */
export type StoredValues = Pick<RecordsTable, 'id' | 'plain' | 'protected' | 'email_sha256' | 'email_md5'>;

/** The values of `fields` (in that order, null when absent) of a stored row: one decryption, no map (exports). */
export function decodeFields(keys: ObjectKeys, fields: readonly FieldDef[], row: StoredValues): unknown[] {
  const plain = JSON.parse(row.plain) as Record<string, unknown>;
  const prot = openProtected(keys, row.id, row.protected);
  const out = new Array<unknown>(fields.length);
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]!;
    out[i] = f.name === SHA256 ? row.email_sha256 : f.name === MD5 ? row.email_md5 : ((f.classification === 'plain' ? plain[f.name] : prot[f.name]) ?? null);
  }
  return out;
}
