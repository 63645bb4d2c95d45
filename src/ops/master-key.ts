import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { rename, unlink, open as openFile } from 'node:fs/promises';
import path from 'node:path';
import type { Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { failpoint } from '../core/failpoint.js';
import { writeSecretFile } from '../core/files.js';
import type { KeyService } from '../crypto/key-service.js';
import { MASTER_KEY_BYTES, masterKeyId, readMasterKeyFile } from '../crypto/master-key.js';
import { tenantRolePassword } from '../storage/open.js';
import type { ControlDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';

const SETTING = 'master_key_id';

/** Where a master-key rotation stages the new key until the control plane has committed to it. */
export function stagedMasterKeyFile(masterKeyFile: string): string {
  return `${masterKeyFile}.next`;
}

async function recordedId(db: Kysely<ControlDB>): Promise<string | undefined> {
  const row = await db.selectFrom('provider_settings').select('value').where('key', '=', SETTING).executeTakeFirst();
  return row?.value;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await openFile(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Checks the master key file against the id the control plane recorded, and
 * resolves a master-key rotation a crash interrupted: if the control plane
 * committed to the staged key, the staged file replaces the old one; if it did
 * not, the staged file is discarded. A key that matches neither is refused
 * (`master_key_mismatch`) rather than failing later on every decryption.
 * Returns the key to use.
 */
export async function resolveMasterKey(storage: Storage, masterKeyFile: string, current: Buffer, clock: Clock): Promise<Buffer> {
  const staged = stagedMasterKeyFile(masterKeyFile);
  const recorded = await recordedId(storage.control);
  if (recorded === undefined) {
    await storage.controlTransaction((db) =>
      db.insertInto('provider_settings').values({ key: SETTING, value: masterKeyId(current), updated_at: clock.now() }).onConflict((oc) => oc.column('key').doNothing()).execute(),
    );
    return current;
  }
  if (recorded === masterKeyId(current)) {
    if (existsSync(staged)) await unlink(staged);
    return current;
  }
  if (existsSync(staged)) {
    const next = await readMasterKeyFile(staged);
    if (recorded === masterKeyId(next)) {
      await rename(staged, masterKeyFile);
      await fsyncDir(path.dirname(masterKeyFile));
      return next;
    }
  }
  throw new CustosError('master_key_mismatch', `${masterKeyFile} is not the master key this deployment's key rings are wrapped with`);
}

/**
 * Rotates the provider master key: every tenant's KEK versions (and pending
 * import keys) are re-sealed under a new key, and PostgreSQL tenant roles get
 * passwords derived from it, all in one control-plane transaction. The new
 * key is staged in `master.key.next` (0600, fsync'd) before that transaction
 * and moved over `master.key` after it; a crash anywhere in between is
 * resolved by the next start ({@link resolveMasterKey}). Other Custos nodes
 * must restart to pick up the new key.
 */
export async function rotateMasterKey(
  deps: { storage: Storage; keys: KeyService; clock: Clock; masterKeyFile: string },
  onControl?: (db: Kysely<ControlDB>, ids: { from: string; to: string; rewrapped: number }) => Promise<void>,
): Promise<{ from: string; to: string; rewrapped: number; next: Buffer }> {
  const staged = stagedMasterKeyFile(deps.masterKeyFile);
  const current = await readMasterKeyFile(deps.masterKeyFile);
  const next = randomBytes(MASTER_KEY_BYTES);
  if (existsSync(staged)) await unlink(staged);
  await writeSecretFile(staged, next, { exclusive: true });
  await fsyncDir(path.dirname(staged));
  failpoint('rotate-master:after-stage');
  const from = masterKeyId(current);
  const to = masterKeyId(next);
  const rewrapped = await deps.storage.controlTransaction(async (db) => {
    if ((await recordedId(db)) !== from) throw new CustosError('master_key_mismatch');
    const n = await deps.keys.rewrapUnderNewMaster(db, next);
    const tenants = await db.selectFrom('tenants').select('id').execute();
    await deps.storage.rekeyTenantRoles(db, tenants.map((t) => t.id), (id) => tenantRolePassword(next, id));
    await db.updateTable('provider_settings').set({ value: to, updated_at: deps.clock.now() }).where('key', '=', SETTING).execute();
    await onControl?.(db, { from, to, rewrapped: n });
    return n;
  });
  failpoint('rotate-master:after-commit');
  await rename(staged, deps.masterKeyFile);
  await fsyncDir(path.dirname(deps.masterKeyFile));
  deps.keys.useMasterKey(next);
  return { from, to, rewrapped, next };
}
