import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { normaliseEmail, ohashes } from '../../src/data/ohash.js';
import { redact } from '../../src/data/redaction.js';
import { STANDARD_FIELDS, checkFieldDef, checkSchema } from '../../src/data/fields.js';

describe('oHash', () => {
  it.each([
    ['  Jane.Doe+News@Example.COM ', 'jane.doe@example.com'],
    ['JANE@EXAMPLE.COM', 'jane@example.com'],
    ['a+b+c@x.example', 'a@x.example'],
    ['plain@x.example', 'plain@x.example'],
  ])('normalises %j to %j (trim, lower-case, drop +alias)', (input, out) => {
    expect(normaliseEmail(input)).toBe(out);
  });

  it('is SHA-256 and MD5 of the normalised address, hex', () => {
    const h = ohashes(' Jane.Doe+x@Example.com');
    expect(h.sha256).toBe(createHash('sha256').update('jane.doe@example.com').digest('hex'));
    expect(h.md5).toBe(createHash('md5').update('jane.doe@example.com').digest('hex'));
    expect(ohashes('jane.doe@example.com')).toEqual(h);
  });
});

describe('redaction', () => {
  const [email, mobile, customer, sha] = STANDARD_FIELDS;
  it('masks emails, phones, oHashes and custom pii fields', () => {
    expect(redact(email!, 'jane.doe@example.com')).toBe('j***@example.com');
    expect(redact(mobile!, '+1 (555) 010-1234')).toBe('*******1234');
    expect(redact(sha!, 'abcdef')).toBe('****');
    expect(redact(customer!, 'C-1')).toBe('C-1'); // plain: untouched
    const name = checkFieldDef({ name: 'FIRST_NAME', type: 'string', classification: 'pii' });
    expect(redact(name, 'Jane')).toBe('J***');
    const partial = checkFieldDef({ name: 'SSN', type: 'string', classification: 'pii', mask: { kind: 'partial', keepFirst: 0, keepLast: 4 } });
    expect(redact(partial, '123-45-6789')).toBe('***6789');
    const sensitive = checkFieldDef({ name: 'INCOME', type: 'number', classification: 'sensitive' });
    expect(redact(sensitive, 52000)).toBe(52000);
    expect(redact(email!, null)).toBeNull();
  });
});

describe('list schemas', () => {
  it('adds the standard fields and refuses bad definitions', () => {
    expect(checkSchema([]).map((f) => f.name)).toEqual(['EMAIL_ADDRESS_', 'MOBILE_NUMBER_', 'CUSTOMER_ID_', 'EMAIL_SHA256_HASH_', 'EMAIL_MD5_HASH_']);
    for (const bad of [
      [{ name: 'lower', type: 'string', classification: 'plain' }],
      [{ name: 'X', type: 'blob', classification: 'plain' }],
      [{ name: 'X', type: 'string', classification: 'secret' }],
      [{ name: 'EMAIL_ADDRESS_', type: 'string', classification: 'plain' }],
      [{ name: 'X', type: 'string', classification: 'plain', mask: { kind: 'full' } }],
      [{ name: 'X', type: 'string', classification: 'plain', extra: 1 }],
      [{ name: 'X', type: 'json', classification: 'plain', unique: true }],
      [
        { name: 'X', type: 'string', classification: 'plain' },
        { name: 'X', type: 'number', classification: 'plain' },
      ],
    ]) {
      expect(() => checkSchema(bad), JSON.stringify(bad)).toThrowError(expect.objectContaining({ code: 'validation_failed' }));
    }
  });
});
