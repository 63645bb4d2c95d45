import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { CustosError } from '../core/errors.js';
import { writeSecretFile } from '../core/files.js';
import { open, seal } from '../crypto/aead.js';

/**
 * What `custos login` keeps for the tenant-user commands: where the server
 * is, who signed in, and — encrypted — the secret that keeps them signed in
 * (an API user's password, to fetch fresh one-hour tokens, or a console
 * session). The encryption key is a separate 0600 file: the profile alone
 * reveals nothing, and `custos logout` deletes both.
 */
export interface Profile {
  url: string;
  tenant: string;
  username: string;
  kind: 'api' | 'console';
  /** PEM file of the CA to trust for the server's certificate (self-signed deployments). */
  caFile?: string;
  insecure?: boolean;
  certFile?: string;
  keyFile?: string;
  secrets: ProfileSecrets;
}

export interface ProfileSecrets {
  password?: string;
  sessionCookie?: string;
  csrfToken?: string;
  token?: string;
  tokenExpiresAt?: string;
}

interface StoredProfile extends Omit<Profile, 'secrets'> {
  sealed: string;
}

/** Directory of the profile: `CUSTOS_PROFILE_DIR`, else `$XDG_CONFIG_HOME/custos`, else `~/.config/custos`. */
export function profileDir(): string {
  if (process.env.CUSTOS_PROFILE_DIR) return path.resolve(process.env.CUSTOS_PROFILE_DIR);
  return path.join(process.env.XDG_CONFIG_HOME ?? path.join(homedir(), '.config'), 'custos');
}

const AAD = Buffer.from('custos/cli-profile/v1');

async function key(create: boolean): Promise<Buffer> {
  const file = path.join(profileDir(), 'profile.key');
  if (existsSync(file)) return readFile(file);
  if (!create) throw new CustosError('authentication_required', 'not logged in: run custos login');
  const k = randomBytes(32);
  await mkdir(profileDir(), { recursive: true, mode: 0o700 });
  await writeSecretFile(file, k);
  return k;
}

export async function saveProfile(p: Profile): Promise<void> {
  const k = await key(true);
  const { secrets, ...rest } = p;
  const stored: StoredProfile = { ...rest, sealed: seal(k, Buffer.from(JSON.stringify(secrets)), AAD).toString('base64') };
  await writeSecretFile(path.join(profileDir(), 'profile.json'), `${JSON.stringify(stored, null, 2)}\n`);
}

export async function loadProfile(): Promise<Profile> {
  const file = path.join(profileDir(), 'profile.json');
  if (!existsSync(file)) throw new CustosError('authentication_required', 'not logged in: run custos login');
  const stored = JSON.parse(await readFile(file, 'utf8')) as StoredProfile;
  const secrets = JSON.parse(open(await key(false), Buffer.from(stored.sealed, 'base64'), AAD).toString('utf8')) as ProfileSecrets;
  const { sealed: _s, ...rest } = stored;
  return { ...rest, secrets };
}

/** Deletes the profile and its key. Returns whether there was one. */
export async function deleteProfile(): Promise<boolean> {
  const dir = profileDir();
  const had = existsSync(path.join(dir, 'profile.json'));
  await rm(path.join(dir, 'profile.json'), { force: true });
  await rm(path.join(dir, 'profile.key'), { force: true });
  return had;
}
