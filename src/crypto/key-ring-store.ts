import type { Kysely } from 'kysely';
import type { ControlDB } from '../storage/schema.js';
import type { KeyRingsTable, KeyVersionsTable } from './key-tables.js';

/** Control-plane SQL of key rings and their versions. */
export function findRing(db: Kysely<ControlDB>, tenantId: string): Promise<KeyRingsTable | undefined> {
  return db.selectFrom('key_rings').selectAll().where('tenant_id', '=', tenantId).executeTakeFirst();
}

export function findVersion(db: Kysely<ControlDB>, tenantId: string, version: number): Promise<KeyVersionsTable | undefined> {
  return db.selectFrom('key_versions').selectAll().where('tenant_id', '=', tenantId).where('version', '=', version).executeTakeFirst();
}

export function listVersions(db: Kysely<ControlDB>, tenantId: string): Promise<KeyVersionsTable[]> {
  return db.selectFrom('key_versions').selectAll().where('tenant_id', '=', tenantId).orderBy('version').execute();
}

export async function insertVersion(db: Kysely<ControlDB>, row: KeyVersionsTable): Promise<void> {
  await db.insertInto('key_versions').values(row).execute();
}

export async function updateRing(db: Kysely<ControlDB>, tenantId: string, changes: Partial<Omit<KeyRingsTable, 'tenant_id'>>): Promise<void> {
  await db.updateTable('key_rings').set(changes).where('tenant_id', '=', tenantId).execute();
}

export async function retireVersionsBelow(db: Kysely<ControlDB>, tenantId: string, version: number, now: number): Promise<void> {
  await db
    .updateTable('key_versions')
    .set({ state: 'retired', retired_at: now })
    .where('tenant_id', '=', tenantId)
    .where('version', '<', version)
    .where('state', '=', 'active')
    .execute();
}
