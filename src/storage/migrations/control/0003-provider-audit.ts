import type { Migration } from '../migration.js';
import { createAuditStreamTables } from '../tenant/0003-audit.js';

/** The provider's activity stream (operator actions) and per-tenant retention overrides. */
export const providerAuditMigrations: readonly Migration[] = [
  {
    name: '0003_provider_audit',
    async up(db, adapter) {
      await createAuditStreamTables(db, adapter, 'provider_');
      await db.schema
        .createTable('audit_retention')
        .addColumn('tenant_id', 'text', (c) => c.primaryKey().references('tenants.id').onDelete('cascade'))
        .addColumn('days', 'integer', (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .execute();
    },
  },
];
