import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';

/**
 * Writes a file readable by its owner only (0600), durably: the bytes are
 * fsync'd before the call returns. With `exclusive`, fails if the file exists;
 * otherwise replaces it atomically (write to a temporary name, then rename).
 */
export async function writeSecretFile(file: string, data: string | Uint8Array, opts: { exclusive?: boolean } = {}): Promise<void> {
  if (opts.exclusive) {
    const fh = await open(file, 'wx', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return;
  }
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  await rename(tmp, file);
}
