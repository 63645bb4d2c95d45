import { createCipheriv, createDecipheriv, createHmac, createSecretKey, randomFillSync, type KeyObject } from 'node:crypto';
import { CustosError } from '../core/errors.js';
import { NONCE_BYTES, TAG_BYTES } from './aead.js';

/**
 * Field ciphertext format, version 1:
 *
 * ```
 * 0      1          5            17              n-16      n
 * | 0x01 | gen u32BE | nonce (12) | ciphertext ... | tag (16) |
 * ```
 *
 * `gen` is the generation of the object's data key (DEK) that encrypted it —
 * the ciphertext names its key version, so values under old and new keys can
 * coexist while re-encryption runs. AES-256-GCM authenticates the 5-byte header
 * and the context `tenant ‖ object ‖ record ‖ field` as additional data: a
 * ciphertext copied to another record, field, object or tenant does not open.
 */
export const FIELD_FORMAT_V1 = 0x01;
const HEADER_BYTES = 5;
const MIN_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES;

/** One generation of an object's data keys, unwrapped. */
export interface DataKeyMaterial {
  readonly generation: number;
  readonly dek: Buffer;
  readonly indexKey: Buffer;
}

/**
 * Node's cipher calls are several times faster with a `KeyObject` than with a
 * raw Buffer key (the Buffer is turned into a key object on every call), so
 * each key's objects are made once and kept beside it.
 */
const keyObjects = new WeakMap<DataKeyMaterial, { dek: KeyObject; index: KeyObject }>();
function objectsOf(m: DataKeyMaterial): { dek: KeyObject; index: KeyObject } {
  let k = keyObjects.get(m);
  if (!k) keyObjects.set(m, (k = { dek: createSecretKey(m.dek), index: createSecretKey(m.indexKey) }));
  return k;
}

/**
 * Random nonces, drawn from the CSPRNG 4,096 at a time: one large
 * `randomFillSync` costs far less than thousands of small ones. Each 12-byte
 * slice is handed out once; the pool is refilled when used up.
 */
const NONCE_POOL = Buffer.alloc(NONCE_BYTES * 4096);
let nonceOffset = NONCE_POOL.length;
function nextNonce(): Buffer {
  if (nonceOffset >= NONCE_POOL.length) {
    randomFillSync(NONCE_POOL);
    nonceOffset = 0;
  }
  const nonce = NONCE_POOL.subarray(nonceOffset, nonceOffset + NONCE_BYTES);
  nonceOffset += NONCE_BYTES;
  return nonce;
}

function checkPart(part: string): string {
  if (part.includes('\u0000')) throw new TypeError('context parts must not contain NUL');
  return part;
}

/**
 * The data keys of one protected object (a list, a BLOB set, the tenant's
 * secrets), as one transaction sees them: the active generation encrypts,
 * any generation the object still has decrypts.
 */
export class ObjectKeys {
  readonly tenantId: string;
  readonly objectType: string;
  readonly objectId: string;
  readonly active: DataKeyMaterial;
  readonly #byGeneration: ReadonlyMap<number, DataKeyMaterial>;
  readonly #aadPrefix: string;

  constructor(tenantId: string, objectType: string, objectId: string, active: DataKeyMaterial, all: Iterable<DataKeyMaterial>) {
    this.tenantId = tenantId;
    this.objectType = objectType;
    this.objectId = objectId;
    this.active = active;
    this.#byGeneration = new Map([...all].map((k) => [k.generation, k]));
    this.#aadPrefix = `custos/field/v1\u0000${checkPart(tenantId)}\u0000${checkPart(objectType)}\u0000${checkPart(objectId)}\u0000`;
  }

  /**
   * The key material, to rebuild these keys in a worker thread of this
   * process ({@link ObjectKeys.fromTransfer}); it never leaves the process.
   */
  toTransfer(): ObjectKeysTransfer {
    return { tenantId: this.tenantId, objectType: this.objectType, objectId: this.objectId, active: this.active.generation, keys: [...this.#byGeneration.values()] };
  }

  static fromTransfer(t: ObjectKeysTransfer): ObjectKeys {
    // Buffers arrive from another thread as plain Uint8Arrays.
    const buf = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    const all = t.keys.map((k) => ({ generation: k.generation, dek: buf(k.dek), indexKey: buf(k.indexKey) }));
    const active = all.find((k) => k.generation === t.active);
    if (!active) throw new TypeError('the active generation is missing from the transferred keys');
    return new ObjectKeys(t.tenantId, t.objectType, t.objectId, active, all);
  }

  #aad(header: Buffer, recordId: string, field: string): Buffer {
    return Buffer.concat([header, Buffer.from(`${this.#aadPrefix}${checkPart(recordId)}\u0000${checkPart(field)}`, 'utf8')]);
  }

  /** Encrypts one field value of one record under the active generation. */
  encrypt(recordId: string, field: string, plaintext: Buffer | string): Buffer {
    const header = Buffer.allocUnsafe(HEADER_BYTES);
    header[0] = FIELD_FORMAT_V1;
    header.writeUInt32BE(this.active.generation, 1);
    const nonce = nextNonce();
    const cipher = createCipheriv('aes-256-gcm', objectsOf(this.active).dek, nonce);
    cipher.setAAD(this.#aad(header, recordId, field));
    const body = cipher.update(typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext);
    cipher.final();
    return Buffer.concat([header, nonce, body, cipher.getAuthTag()]);
  }

  /** Decrypts a value of this object's record and field; fails `decryption_failed` for anything moved, altered or unknown. */
  decrypt(recordId: string, field: string, ciphertext: Buffer): Buffer {
    if (ciphertext.length < MIN_BYTES || ciphertext[0] !== FIELD_FORMAT_V1) throw new CustosError('decryption_failed');
    const key = this.#byGeneration.get(ciphertext.readUInt32BE(1));
    if (!key) throw new CustosError('decryption_failed');
    try {
      const decipher = createDecipheriv('aes-256-gcm', objectsOf(key).dek, ciphertext.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES));
      decipher.setAAD(this.#aad(ciphertext.subarray(0, HEADER_BYTES), recordId, field));
      decipher.setAuthTag(ciphertext.subarray(ciphertext.length - TAG_BYTES));
      const out = decipher.update(ciphertext.subarray(HEADER_BYTES + NONCE_BYTES, ciphertext.length - TAG_BYTES));
      decipher.final();
      return out;
    } catch {
      throw new CustosError('decryption_failed');
    }
  }

  decryptString(recordId: string, field: string, ciphertext: Buffer): string {
    return this.decrypt(recordId, field, ciphertext).toString('utf8');
  }

  /**
   * Blind index for equality search on an encrypted field: HMAC-SHA256 under
   * the object's index key (separate from its data key) over `field ‖ value`.
   * The index key is per object and stable across data-key generations, so
   * index values stay valid through rotation and re-encryption. Callers
   * normalise `value` first (e.g. lower-case emails).
   */
  blindIndex(field: string, value: string): Buffer {
    return createHmac('sha256', objectsOf(this.active).index).update(`${checkPart(field)}\u0000${value}`, 'utf8').digest();
  }
}

/** {@link ObjectKeys} as it crosses to a worker thread (structured clone). */
export interface ObjectKeysTransfer {
  readonly tenantId: string;
  readonly objectType: string;
  readonly objectId: string;
  readonly active: number;
  readonly keys: ReadonlyArray<{ readonly generation: number; readonly dek: Uint8Array; readonly indexKey: Uint8Array }>;
}

/** The data-key generation a field ciphertext names, without decrypting it. */
export function ciphertextGeneration(ciphertext: Buffer): number {
  if (ciphertext.length < MIN_BYTES || ciphertext[0] !== FIELD_FORMAT_V1) throw new CustosError('decryption_failed');
  return ciphertext.readUInt32BE(1);
}
