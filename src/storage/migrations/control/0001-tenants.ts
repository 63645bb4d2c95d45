import type { Migration } from '../migration.js';

/** The tenant registry and provider settings. */
export const tenantsMigrations: readonly Migration[] = [
  {
    name: '0001_tenants',
    async up(db, adapter) {
      await db.schema
        .createTable('tenants')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('edition', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('admin_email', 'text', (c) => c.notNull())
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('lifecycle_owner', 'text')
        .execute();
      await db.schema.createIndex('tenants_status_idx').on('tenants').column('status').execute();
      await db.schema
        .createTable('provider_settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .execute();
    },
  },
];
