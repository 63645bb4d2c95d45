import type { Insertable, Kysely, Selectable } from 'kysely';
import type { TenantDB, UserKind, UsersTable } from '../storage/schema.js';

/** The SQL of users: plain functions over a tenant-bound handle. */
export async function insertUser(
  db: Kysely<TenantDB>,
  user: Omit<Insertable<UsersTable>, 'updated_at'>,
  roles: readonly string[],
): Promise<void> {
  await db.insertInto('users').values({ ...user, updated_at: user.created_at }).execute();
  if (roles.length > 0) {
    await db.insertInto('user_roles').values(roles.map((role) => ({ user_id: user.id, role }))).execute();
  }
}

export async function findUserByUsername(db: Kysely<TenantDB>, username: string, kind?: UserKind): Promise<Selectable<UsersTable> | undefined> {
  let q = db.selectFrom('users').selectAll().where('username', '=', username);
  if (kind) q = q.where('kind', '=', kind);
  return q.executeTakeFirst();
}

export async function rolesOf(db: Kysely<TenantDB>, userId: string): Promise<string[]> {
  const rows = await db.selectFrom('user_roles').select('role').where('user_id', '=', userId).orderBy('role').execute();
  return rows.map((r) => r.role);
}
