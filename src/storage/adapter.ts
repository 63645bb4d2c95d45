/**
 * What differs between the two engines, as capability flags and type names, so
 * callers never branch on the engine's name for SQL they write.
 */
export interface StorageAdapter {
  readonly kind: 'sqlite' | 'postgres';
  /** Column type for binary values. */
  readonly blobType: 'blob' | 'bytea';
  /** Column type for 64-bit integers (times in ms, counters). */
  readonly bigintType: 'integer' | 'bigint';
  /** Whether separate processes can write concurrently (false: one writer at a time). */
  readonly concurrentWriters: boolean;
  /** SQL text of a JSON text column's member as text (`json_extract` / `->>`); `key` must be a safe identifier. */
  jsonMemberText(column: string, key: string): string;
  /** The parameter to compare `jsonMemberText` with for a JSON scalar (SQLite compares typed values, PostgreSQL text). */
  jsonMemberParam(value: string | number | boolean): string | number;
  /** SQL aggregate of a column's values as a JSON array (`json_group_array` / `json_agg`; PostgreSQL gives null for no rows); `column` must be a safe identifier. */
  jsonArrayAgg(column: string): string;
  /**
   * SQL text of a binary column as hex text (`hex` / `encode(…, 'hex')`; either case; null for null on both engines).
   * Bulk reads use it where a Buffer per row would cost more than the value: better-sqlite3 gives every blob
   * a backing store of its own (~2 µs a row), a string lives on the JavaScript heap.
   */
  blobHex(column: string): string;
  /** The `i`-th (from 1) parameter placeholder of SQL text written by hand (`?` / `$i`). */
  param(i: number): string;
}

const SAFE = /^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?$/;
function safe(id: string): string {
  if (!SAFE.test(id)) throw new TypeError('not a safe identifier');
  return id;
}

export const sqliteAdapter: StorageAdapter = Object.freeze({
  kind: 'sqlite',
  blobType: 'blob',
  bigintType: 'integer',
  concurrentWriters: false,
  jsonMemberText: (column: string, key: string) => `json_extract(${safe(column)}, '$.${safe(key)}')`,
  jsonMemberParam: (value: string | number | boolean) => (typeof value === 'boolean' ? (value ? 1 : 0) : value),
  jsonArrayAgg: (column: string) => `json_group_array(${safe(column)})`,
  // hex(NULL) is '' in SQLite: kept null, as PostgreSQL's encode gives it.
  blobHex: (column: string) => `(case when ${safe(column)} is null then null else hex(${safe(column)}) end)`,
  param: () => '?',
});

export const postgresAdapter: StorageAdapter = Object.freeze({
  kind: 'postgres',
  blobType: 'bytea',
  bigintType: 'bigint',
  concurrentWriters: true,
  jsonMemberText: (column: string, key: string) => `(${safe(column)}::jsonb ->> '${safe(key)}')`,
  jsonMemberParam: (value: string | number | boolean) => (typeof value === 'string' ? value : JSON.stringify(value)),
  jsonArrayAgg: (column: string) => `json_agg(${safe(column)})`,
  blobHex: (column: string) => `encode(${safe(column)}, 'hex')`,
  param: (i: number) => `$${i}`,
});
