import { describe, expect, it } from 'vitest';
import { checkEdition, checkEmail, checkTenantName } from '../../src/core/validation.js';
import { isId, newId, temporaryPassword } from '../../src/core/ids.js';

describe('tenant names', () => {
  it.each(['abc', 'acme', 'acme-eu-1', 'a1b', '0ab', 'x'.repeat(63), 'xn--80ak6aa92e'])('accepts %s', (n) => {
    expect(checkTenantName(n)).toBe(n);
  });
  it.each([
    'ab',
    'x'.repeat(64),
    'Acme',
    '-acme',
    'acme-',
    'ac_me',
    'ac.me',
    'acmé',
    'acme ',
    ' acme',
    'ac me',
    '../etc',
    "a'; drop table tenants; --",
    '',
    'acme\n',
  ])('rejects %j', (n) => {
    expect(() => checkTenantName(n)).toThrowError(expect.objectContaining({ code: 'invalid_tenant_name' }));
  });
  it.each([undefined, null, 42, {}, ['acme']])('rejects non-string %j', (n) => {
    expect(() => checkTenantName(n)).toThrowError(expect.objectContaining({ code: 'invalid_tenant_name' }));
  });
});

describe('editions and emails', () => {
  it('accepts the two editions only', () => {
    expect(checkEdition('standard')).toBe('standard');
    expect(checkEdition('enterprise')).toBe('enterprise');
    for (const e of ['gold', 'Standard', '', undefined]) {
      expect(() => checkEdition(e)).toThrowError(expect.objectContaining({ code: 'invalid_edition' }));
    }
  });
  it('checks email shape', () => {
    expect(checkEmail('ops@acme.example')).toBe('ops@acme.example');
    for (const e of ['ops', 'ops@', '@acme.example', 'a b@c.de', 'ops@acme', `${'x'.repeat(250)}@a.de`, 3]) {
      expect(() => checkEmail(e)).toThrowError(expect.objectContaining({ code: 'validation_failed' }));
    }
  });
});

describe('ids and temporary passwords', () => {
  it('makes lower-case sortable ids', () => {
    const a = newId();
    const b = newId();
    expect(isId(a)).toBe(true);
    expect(a < b).toBe(true);
    expect(isId('01M83SX5F45B62CFN0XF2P9RHH')).toBe(false);
    expect(isId('t_x')).toBe(false);
  });
  it('makes temporary passwords with every character class and non-numeric edges', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const p = temporaryPassword();
      expect(p).toHaveLength(24);
      expect(p).toMatch(/[a-z]/);
      expect(p).toMatch(/[A-Z]/);
      expect(p).toMatch(/[0-9]/);
      expect(p).toMatch(/[-_.!]/);
      expect(p[0]).not.toMatch(/[0-9]/);
      expect(p.at(-1)).not.toMatch(/[0-9]/);
      seen.add(p);
    }
    expect(seen.size).toBe(200);
  });
});
