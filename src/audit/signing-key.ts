import { createPrivateKey, createPublicKey, generateKeyPairSync, hash, sign, verify, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { CustosError } from '../core/errors.js';
import { writeSecretFile } from '../core/files.js';
import type { Checkpoint } from './audit-types.js';
import { canonicalJson } from './canonical-json.js';

export const SIGNING_KEY_FILE = 'audit-signing.key';
export const SIGNING_PUBLIC_KEY_FILE = 'audit-signing.pub';

/** The signing key's files in a data directory. */
export function signingKeyFiles(dataDir: string): { key: string; pub: string } {
  return { key: path.join(dataDir, SIGNING_KEY_FILE), pub: path.join(dataDir, SIGNING_PUBLIC_KEY_FILE) };
}

/**
 * Creates the provider's activity-stream signing key if it is missing: Ed25519,
 * the private key as PKCS#8 PEM (0600), the public key as SPKI PEM beside it.
 * Idempotent; an existing key is kept (replacing it would orphan every
 * signature made so far).
 */
export async function ensureAuditSigningKey(dataDir: string): Promise<{ file: string; created: boolean }> {
  const files = signingKeyFiles(dataDir);
  if (existsSync(files.key)) {
    if (!existsSync(files.pub)) {
      const pub = createPublicKey(createPrivateKey(await readFile(files.key)));
      await writeSecretFile(files.pub, pub.export({ type: 'spki', format: 'pem' }));
    }
    return { file: files.key, created: false };
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  await writeSecretFile(files.key, privateKey.export({ type: 'pkcs8', format: 'pem' }), { exclusive: true });
  await writeSecretFile(files.pub, publicKey.export({ type: 'spki', format: 'pem' }));
  return { file: files.key, created: true };
}

/** Key id: the first 16 hex characters of SHA-256 over the public key's SPKI DER encoding. */
export function keyIdOf(publicKey: KeyObject): string {
  return hash('sha256', publicKey.export({ type: 'spki', format: 'der' }), 'hex').slice(0, 16);
}

/** The statement a checkpoint's signature covers: every member but the signature, canonicalised. */
function statement(c: Omit<Checkpoint, 'signature'>): Buffer {
  const { v, kind, stream, seq, hash: h, time, keyId } = c;
  return Buffer.from(canonicalJson({ v, kind, stream, seq, hash: h, time, keyId }), 'utf8');
}

/**
 * Signs and checks checkpoints with the provider's Ed25519 key. Only the
 * public half is needed to verify; without the private key (a verifying-only
 * process), signing fails.
 */
export class AuditSigner {
  readonly keyId: string;
  readonly #privateKey: KeyObject | undefined;
  readonly #publicKey: KeyObject;

  constructor(publicKey: KeyObject, privateKey?: KeyObject) {
    if (publicKey.asymmetricKeyType !== 'ed25519' || (privateKey && privateKey.asymmetricKeyType !== 'ed25519')) {
      throw new CustosError('invalid_configuration', 'the activity-stream signing key must be Ed25519');
    }
    this.#publicKey = publicKey;
    this.#privateKey = privateKey;
    this.keyId = keyIdOf(publicKey);
  }

  /**
   * Reads the key pair from the data directory. Refuses a private key readable
   * by group or others, and a public key that is not the private key's.
   */
  static async load(dataDir: string): Promise<AuditSigner> {
    const files = signingKeyFiles(dataDir);
    let info;
    try {
      info = await stat(files.key);
    } catch {
      throw new CustosError('invalid_configuration', `activity-stream signing key ${files.key} is missing; run custos init`);
    }
    if ((info.mode & 0o077) !== 0) {
      throw new CustosError('invalid_configuration', `activity-stream signing key ${files.key} must not be readable by group or others (chmod 600)`);
    }
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey(await readFile(files.key));
    } catch {
      throw new CustosError('invalid_configuration', `activity-stream signing key ${files.key} is not a PKCS#8 PEM key`);
    }
    const derived = createPublicKey(privateKey);
    if (existsSync(files.pub)) {
      const stored = createPublicKey(await readFile(files.pub));
      if (!stored.equals(derived)) throw new CustosError('invalid_configuration', `${files.pub} is not the public half of ${files.key}`);
    }
    return new AuditSigner(derived, privateKey);
  }

  /** Signs a checkpoint or anchor statement. */
  sign(c: Omit<Checkpoint, 'signature' | 'keyId' | 'v'>): Checkpoint {
    if (!this.#privateKey) throw new CustosError('invalid_configuration', 'no activity-stream signing key is loaded');
    const unsigned = { v: 1 as const, kind: c.kind, stream: c.stream, seq: c.seq, hash: c.hash, time: c.time, keyId: this.keyId };
    return { ...unsigned, signature: sign(null, statement(unsigned), this.#privateKey).toString('base64') };
  }

  /** True when `c` carries this key's valid signature over exactly its members. */
  verify(c: Checkpoint): boolean {
    if (c.keyId !== this.keyId || typeof c.signature !== 'string') return false;
    try {
      return verify(null, statement(c), this.#publicKey, Buffer.from(c.signature, 'base64'));
    } catch {
      return false;
    }
  }
}
