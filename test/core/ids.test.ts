import { describe, expect, it } from 'vitest';
import { isId, newId, newUlid } from '../../src/core/ids.js';

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';

describe('ids', () => {
  it('makes lower-case ULIDs that isId accepts, distinct and sorted in creation order within one millisecond', () => {
    const t = Date.now();
    const ids = Array.from({ length: 5000 }, () => newId(t));
    for (const id of ids) expect(isId(id)).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    expect(newUlid()).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(isId('01ARZ3NDEKTSV4RRFFQ69G5FAV')).toBe(false);
    expect(isId('01arz3ndektsv4rrffq69g5fa')).toBe(false);
    expect(isId('01arz3ndektsv4rrffq69g5fai')).toBe(false);
  });

  it('draws every random character uniformly from the 32-letter alphabet', () => {
    // 20,000 ids from different milliseconds: the 16 random characters of each are fresh draws.
    const counts = new Map<string, number>();
    const n = 20000;
    const start = Date.now() + 60_000;
    for (let i = 0; i < n; i++) for (const c of newId(start + i).slice(10)) counts.set(c, (counts.get(c) ?? 0) + 1);
    expect([...counts.keys()].sort().join('')).toBe(ALPHABET);
    const expected = (n * 16) / 32;
    // Chi-square with 31 degrees of freedom: 61.1 is the 0.999 quantile.
    const chi = [...counts.values()].reduce((sum, o) => sum + (o - expected) ** 2 / expected, 0);
    expect(chi).toBeLessThan(61.1);
  });
});
