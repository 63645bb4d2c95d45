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
}

export const sqliteAdapter: StorageAdapter = Object.freeze({
  kind: 'sqlite',
  blobType: 'blob',
  bigintType: 'integer',
  concurrentWriters: false,
});

export const postgresAdapter: StorageAdapter = Object.freeze({
  kind: 'postgres',
  blobType: 'bytea',
  bigintType: 'bigint',
  concurrentWriters: true,
});
