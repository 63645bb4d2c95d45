import { hkdfSync } from 'node:crypto';

/**
 * Derives a purpose-bound 32-byte secret from the provider master key with
 * HKDF-SHA256 (RFC 5869). `purpose` names the use (and the object), so no two
 * uses ever share a key. Nothing derived is stored: it is recomputed from the
 * master key whenever needed.
 */
export function deriveFromMasterKey(masterKey: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', masterKey, Buffer.alloc(0), Buffer.from(`custos/v1/${purpose}`, 'utf8'), 32));
}
