import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { CustosError } from '../core/errors.js';
import { writeSecretFile } from '../core/files.js';

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
