import type { Migration } from '../migration.js';

/**
 * Tenant key rings live in the control plane, wrapped by the master key — not
 * in the tenant's store, so a copy of a store is unreadable once its ring is
 * destroyed.
 */
export const keyRingsMigrations: readonly Migration[] = [
  {
    name: '0002_key_rings',
    async up(db, adapter) {
      await db.schema
        .createTable('key_rings')
        .addColumn('tenant_id', 'text', (c) => c.primaryKey())
        .addColumn('mode', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('current_version', 'integer', (c) => c.notNull())
        .addColumn('rotation_period_days', 'integer', (c) => c.notNull())
        .addColumn('last_rotated_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('deletion_due_at', adapter.bigintType)
        .addColumn('import_public_key', 'text')
        .addColumn('import_private_key', adapter.blobType)
        .addColumn('import_expires_at', adapter.bigintType)
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('key_versions')
        .addColumn('tenant_id', 'text', (c) => c.notNull())
        .addColumn('version', 'integer', (c) => c.notNull())
        .addColumn('origin', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('wrapped_key', adapter.blobType, (c) => c.notNull())
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('retired_at', adapter.bigintType)
        .addPrimaryKeyConstraint('key_versions_pk', ['tenant_id', 'version'])
        .execute();
    },
  },
];
