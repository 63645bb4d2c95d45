import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { CustosError } from '../core/errors.js';
import { writeSecretFile } from '../core/files.js';
import { deriveFromMasterKey } from './derive.js';

export const MASTER_KEY_BYTES = 32;

/**
 * Creates the provider master key file: 32 random bytes, mode 0600. It never
 * goes into a database: a copy of the databases alone decrypts nothing.
 * Refuses to overwrite an existing file.
 */
export async function createMasterKeyFile(file: string): Promise<void> {
  await writeSecretFile(file, randomBytes(MASTER_KEY_BYTES), { exclusive: true });
}

/** Reads the master key; refuses a file of the wrong size or one readable by group or others. */
export async function readMasterKeyFile(file: string): Promise<Buffer> {
  let info;
  try {
    info = await stat(file);
  } catch {
    throw new CustosError('invalid_configuration', `master key file ${file} is missing; run custos init`);
  }
  if ((info.mode & 0o077) !== 0) {
    throw new CustosError('invalid_configuration', `master key file ${file} must not be readable by group or others (chmod 600)`);
  }
  const key = await readFile(file);
  if (key.length !== MASTER_KEY_BYTES) {
    throw new CustosError('invalid_configuration', `master key file ${file} must hold exactly ${MASTER_KEY_BYTES} bytes`);
  }
  return key;
}

/**
 * A public identifier of a master key (16 hex characters, derived one-way): the
 * control plane records which key its wrapped key rings belong to, so a wrong
 * or stale key file is refused instead of failing later on every decryption.
 */
export function masterKeyId(masterKey: Buffer): string {
  return deriveFromMasterKey(masterKey, 'master-key-id').subarray(0, 8).toString('hex');
}

/** The key that wraps tenant key-encryption keys: derived, so the raw master key encrypts nothing itself. */
export function kekWrappingKey(masterKey: Buffer): Buffer {
  return deriveFromMasterKey(masterKey, 'kek-wrap');
}
