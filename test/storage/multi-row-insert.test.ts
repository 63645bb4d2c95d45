import { describe, expect, it } from 'vitest';
import { MultiRowInsert } from '../../src/storage/multi-row-insert.js';

describe('MultiRowInsert', () => {
  it('refuses sizes that do not decrease to 1 (a batch could not be split)', () => {
    expect(() => new MultiRowInsert('t', ['a'], [10, 5], 'sqlite')).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [5, 10, 1], 'sqlite')).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [10, 10, 1], 'postgres')).toThrow(TypeError);
    expect(() => new MultiRowInsert('t', ['a'], [10, 2, 1], 'postgres')).not.toThrow();
  });
});
