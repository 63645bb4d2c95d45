import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { open, seal } from '../../src/crypto/aead.js';
import { ObjectKeys, ciphertextGeneration, type DataKeyMaterial } from '../../src/crypto/field-cipher.js';

const gen = (generation: number, indexKey: Buffer = randomBytes(32)): DataKeyMaterial => ({ generation, dek: randomBytes(32), indexKey });

describe('field cipher', () => {
  const g1 = gen(1);
  const keys = new ObjectKeys('tenant-a', 'list', 'list-1', g1, [g1]);

  it('round-trips values and names the key generation in the ciphertext', () => {
    const ct = keys.encrypt('rec-1', 'EMAIL_ADDRESS_', 'jane@example.com');
    expect(ciphertextGeneration(ct)).toBe(1);
    expect(ct[0]).toBe(1);
    expect(keys.decryptString('rec-1', 'EMAIL_ADDRESS_', ct)).toBe('jane@example.com');
    expect(ct.includes(Buffer.from('jane@example.com'))).toBe(false);
  });

  it('uses a fresh nonce every time', () => {
    const a = keys.encrypt('rec-1', 'f', 'same');
    const b = keys.encrypt('rec-1', 'f', 'same');
    expect(a.equals(b)).toBe(false);
    expect(a.subarray(5, 17).equals(b.subarray(5, 17))).toBe(false);
  });

  it('refuses a ciphertext copied to another record, field, object or tenant', () => {
    const ct = keys.encrypt('rec-1', 'EMAIL_ADDRESS_', 'jane@example.com');
    expect(() => keys.decrypt('rec-2', 'EMAIL_ADDRESS_', ct)).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    expect(() => keys.decrypt('rec-1', 'MOBILE_NUMBER_', ct)).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    const otherObject = new ObjectKeys('tenant-a', 'list', 'list-2', g1, [g1]);
    expect(() => otherObject.decrypt('rec-1', 'EMAIL_ADDRESS_', ct)).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    const otherTenant = new ObjectKeys('tenant-b', 'list', 'list-1', g1, [g1]);
    expect(() => otherTenant.decrypt('rec-1', 'EMAIL_ADDRESS_', ct)).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
  });

  it('refuses tampered ciphertexts: any flipped bit, a changed generation, truncation, a wrong format byte', () => {
    const ct = keys.encrypt('r', 'f', 'value');
    for (let i = 0; i < ct.length; i++) {
      const bad = Buffer.from(ct);
      bad[i] = bad[i]! ^ 0x01;
      expect(() => keys.decrypt('r', 'f', bad), `byte ${i}`).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    }
    expect(() => keys.decrypt('r', 'f', ct.subarray(0, 20))).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    expect(() => keys.decrypt('r', 'f', Buffer.alloc(0))).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    expect(() => ciphertextGeneration(Buffer.from('plain text, not a ciphertext'))).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
  });

  it('decrypts older generations while encrypting under the active one', () => {
    const g2 = gen(2, g1.indexKey);
    const rotated = new ObjectKeys('tenant-a', 'list', 'list-1', g2, [g1, g2]);
    const old = keys.encrypt('r', 'f', 'old value');
    expect(rotated.decryptString('r', 'f', old)).toBe('old value');
    const fresh = rotated.encrypt('r', 'f', 'new value');
    expect(ciphertextGeneration(fresh)).toBe(2);
    expect(() => keys.decrypt('r', 'f', fresh)).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
  });

  it('makes blind indexes that match equal values only, per field, and survive a new generation', () => {
    const a = keys.blindIndex('EMAIL_ADDRESS_', 'jane@example.com');
    expect(a).toHaveLength(32);
    expect(keys.blindIndex('EMAIL_ADDRESS_', 'jane@example.com').equals(a)).toBe(true);
    expect(keys.blindIndex('EMAIL_ADDRESS_', 'john@example.com').equals(a)).toBe(false);
    expect(keys.blindIndex('OTHER_', 'jane@example.com').equals(a)).toBe(false);
    const g2 = gen(2, g1.indexKey);
    expect(new ObjectKeys('tenant-a', 'list', 'list-1', g2, [g1, g2]).blindIndex('EMAIL_ADDRESS_', 'jane@example.com').equals(a)).toBe(true);
    // The index key is not the data key: an index value reveals nothing decryptable.
    expect(new ObjectKeys('tenant-a', 'list', 'list-1', { ...g1, indexKey: randomBytes(32) }, [g1]).blindIndex('EMAIL_ADDRESS_', 'jane@example.com').equals(a)).toBe(false);
  });

  it('refuses context parts containing NUL (no ambiguity in the bound context)', () => {
    expect(() => keys.encrypt('r\u0000x', 'f', 'v')).toThrow(TypeError);
    expect(() => new ObjectKeys('t\u0000', 'list', 'x', g1, [g1])).toThrow(TypeError);
  });
});

describe('key wrapping (AES-256-GCM with AAD)', () => {
  it('opens only with the same key and context', () => {
    const key = randomBytes(32);
    const sealed = seal(key, Buffer.from('secret key material'), Buffer.from('ctx-1'));
    expect(open(key, sealed, Buffer.from('ctx-1')).toString()).toBe('secret key material');
    expect(() => open(key, sealed, Buffer.from('ctx-2'))).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    expect(() => open(randomBytes(32), sealed, Buffer.from('ctx-1'))).toThrowError(expect.objectContaining({ code: 'decryption_failed' }));
    expect(() => seal(randomBytes(16), Buffer.alloc(1), Buffer.alloc(0))).toThrow(TypeError);
  });
});
