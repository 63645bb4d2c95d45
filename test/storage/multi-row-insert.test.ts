import { describe, expect, it } from 'vitest';
import { postgresAdapter, sqliteAdapter } from '../../src/storage/adapter.js';
import { MultiRowInsert } from '../../src/storage/multi-row-insert.js';

describe('MultiRowInsert', () => {
  it('refuses sizes that do not decrease to 1 (a batch could not be split)', () => {
    expect(() => new MultiRowInsert('t', ['a'], [10, 5], sqliteAdapter)).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [5, 10, 1], sqliteAdapter)).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [10, 10, 1], postgresAdapter)).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [10, 2, 1], postgresAdapter)).not.toThrow();
  });
});
