import type { Kysely } from 'kysely';
import type { StorageAdapter } from '../../adapter.js';
import type { Migration } from '../migration.js';

/**
 * Creates one activity stream's tables: events (hash-chained), the one-row
 * chain head, and signed checkpoints/anchors. Shared by the tenant migration
 * (`audit_*`) and the control-plane one (`provider_audit_*`).
 */
export async function createAuditStreamTables(db: Kysely<any>, adapter: StorageAdapter, prefix: string): Promise<void> {
  const events = `${prefix}audit_events`;
  await db.schema
    .createTable(events)
    // On SQLite `integer primary key` is the rowid: appends go to the end of the b-tree.
    .addColumn('seq', adapter.bigintType, (c) => c.primaryKey())
    .addColumn('id', 'text', (c) => c.notNull())
    .addColumn('time', adapter.bigintType, (c) => c.notNull())
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('outcome', 'text', (c) => c.notNull())
    .addColumn('principal_type', 'text', (c) => c.notNull())
    .addColumn('principal_id', 'text', (c) => c.notNull())
    .addColumn('resource_type', 'text')
    .addColumn('resource_id', 'text')
    .addColumn('body', 'text', (c) => c.notNull())
    .addColumn('prev_hash', adapter.blobType, (c) => c.notNull())
    .addColumn('hash', adapter.blobType, (c) => c.notNull())
    .execute();
  await db.schema.createIndex(`${events}_time_idx`).on(events).column('time').execute();
  await db.schema.createIndex(`${events}_type_idx`).on(events).columns(['type', 'seq']).execute();

  await db.schema
    .createTable(`${prefix}audit_chain_head`)
    .addColumn('id', 'integer', (c) => c.primaryKey())
    .addColumn('seq', adapter.bigintType, (c) => c.notNull())
    .addColumn('hash', adapter.blobType, (c) => c.notNull())
    .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
    .execute();
  await db
    .insertInto(`${prefix}audit_chain_head`)
    .values({ id: 1, seq: 0, hash: Buffer.alloc(32), updated_at: 0 })
    .execute();

  await db.schema
    .createTable(`${prefix}audit_checkpoints`)
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('seq', adapter.bigintType, (c) => c.notNull())
    .addColumn('hash', adapter.blobType, (c) => c.notNull())
    .addColumn('time', adapter.bigintType, (c) => c.notNull())
    .addColumn('key_id', 'text', (c) => c.notNull())
    .addColumn('signature', adapter.blobType, (c) => c.notNull())
    .addPrimaryKeyConstraint(`${prefix}audit_checkpoints_pk`, ['kind', 'seq'])
    .execute();
}

/** The tenant's activity stream (see `src/audit/`). */
export const auditMigrations: readonly Migration[] = [
  {
    name: '0003_audit',
    async up(db, adapter) {
      await createAuditStreamTables(db, adapter, '');
    },
  },
];
