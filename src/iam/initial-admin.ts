import type { Kysely } from 'kysely';
import { newId, temporaryPassword } from '../core/ids.js';
import { hashPassword } from '../crypto/password-hash.js';
import type { TenantDB } from '../storage/schema.js';
import { ACCOUNT_ADMINISTRATOR } from './roles.js';
import { insertUser } from './users-store.js';

/** A temporary password stops working 72 hours after it is issued. */
export const TEMPORARY_PASSWORD_TTL_MS = 72 * 3600 * 1000;

export const INITIAL_ADMIN_USERNAME = 'admin';

export interface IssuedAdmin {
  id: string;
  username: string;
  email: string;
  /** Shown once to whoever created the tenant; only its argon2id hash is stored. */
  temporaryPassword: string;
  temporaryPasswordExpiresAt: number;
}

/** Prepares the first Account Administrator (hashing off the event loop) before any transaction opens. */
export async function prepareInitialAdmin(email: string, now: number): Promise<{ issued: IssuedAdmin; passwordHash: string }> {
  const password = temporaryPassword();
  const passwordHash = await hashPassword(password);
  return {
    passwordHash,
    issued: {
      id: newId(now),
      username: INITIAL_ADMIN_USERNAME,
      email,
      temporaryPassword: password,
      temporaryPasswordExpiresAt: now + TEMPORARY_PASSWORD_TTL_MS,
    },
  };
}

/** Writes the prepared administrator into the tenant's store: must change the password at first login. */
export async function insertInitialAdmin(db: Kysely<TenantDB>, admin: { issued: IssuedAdmin; passwordHash: string }, now: number): Promise<void> {
  await insertUser(
    db,
    {
      id: admin.issued.id,
      username: admin.issued.username,
      email: admin.issued.email,
      kind: 'console',
      status: 'active',
      password_hash: admin.passwordHash,
      must_change_password: 1,
      password_expires_at: admin.issued.temporaryPasswordExpiresAt,
      created_at: now,
    },
    [ACCOUNT_ADMINISTRATOR],
  );
}
