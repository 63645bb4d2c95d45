import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CustosError } from '../core/errors.js';

export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

/**
 * AES-256-GCM with a random 96-bit nonce, as `nonce ‖ ciphertext ‖ tag`.
 * `aad` binds the result to its context: opening it under any other context
 * fails. Used to wrap keys; field values use the versioned format of
 * `field-cipher.ts`, which is built on the same primitive.
 */
export function seal(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  if (key.length !== KEY_BYTES) throw new TypeError('AES-256-GCM needs a 32-byte key');
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(plaintext);
  cipher.final();
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** Opens what {@link seal} made under the same key and AAD; any mismatch is the same uninformative `decryption_failed`. */
export function open(key: Buffer, sealed: Buffer, aad: Buffer): Buffer {
  if (key.length !== KEY_BYTES) throw new TypeError('AES-256-GCM needs a 32-byte key');
  if (sealed.length < NONCE_BYTES + TAG_BYTES) throw new CustosError('decryption_failed');
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE_BYTES));
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const out = decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES));
    decipher.final();
    return out;
  } catch {
    throw new CustosError('decryption_failed');
  }
}
