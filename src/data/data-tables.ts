/** Table types of lists and records, added to the tenant schema. */

export interface ListsTable {
  id: string;
  /** A small integer naming the list inside records and indexes (shorter than the id in every index entry). */
  key: number;
  name: string;
  description: string;
  org_id: string | null;
  /** JSON array of `FieldDef`. */
  fields: string;
  schema_version: number;
  created_at: number;
  updated_at: number;
}

export interface RecordsTable {
  list_key: number;
  id: string;
  customer_id: string | null;
  email_sha256: string | null;
  email_md5: string | null;
  /** Blind index (HMAC-SHA256 under the list's index key) of the normalised email: match key and uniqueness. */
  email_bi: Buffer | null;
  mobile_bi: Buffer | null;
  /** 48-bit prefixes of the SHA-256 oHash, the MD5 oHash and the mobile blind index: the indexed lookup keys. */
  k_sha256: number | null;
  k_md5: number | null;
  k_mobile: number | null;
  /** JSON object of the plain fields. */
  plain: string;
  /** The `pii` and `sensitive` values as one JSON object, encrypted (field format v1, bound to tenant, list and record); null when there are none. */
  protected: Buffer | null;
  created_at: number;
  updated_at: number;
  /**
   * SQLite only (null or absent on PostgreSQL): the record's number in its
   * list, unique with `list_key`, which the lookup-key tables name it by.
   */
  seq?: number | null;
}

/**
 * SQLite only: one lookup key of a record (`k_sha256`, `k_md5` or
 * `k_mobile`, see migration 0010), in a table per kind.
 */
export interface RecordKeyTable {
  list_key: number;
  k: number;
  seq: number;
}

/** Blind indexes (protected fields) and values (plain fields) of indexed custom fields. */
export interface RecordIndexTable {
  list_key: number;
  field: string;
  value: Buffer;
  record_id: string;
}

declare module '../storage/schema.js' {
  interface TenantDB {
    lists: ListsTable;
    records: RecordsTable;
    record_index: RecordIndexTable;
    record_keys_sha256: RecordKeyTable;
    record_keys_md5: RecordKeyTable;
    record_keys_mobile: RecordKeyTable;
    record_keys_sha256_recent: RecordKeyTable;
    record_keys_md5_recent: RecordKeyTable;
    record_keys_mobile_recent: RecordKeyTable;
    record_keys_state: { tbl: string; folded: number; added: number };
  }
}
