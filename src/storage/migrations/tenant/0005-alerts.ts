import type { Migration } from '../migration.js';

/** Alert rules over the tenant's activity stream, and a record of each time one fired. */
export const alertsMigrations: readonly Migration[] = [
  {
    name: '0005_alerts',
    async up(db, adapter) {
      await db.schema
        .createTable('alert_rules')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('enabled', 'integer', (c) => c.notNull())
        .addColumn('event_types', 'text', (c) => c.notNull())
        .addColumn('outcomes', 'text')
        .addColumn('match', 'text')
        .addColumn('threshold', 'integer', (c) => c.notNull())
        .addColumn('window_seconds', 'integer', (c) => c.notNull())
        .addColumn('emails', 'text', (c) => c.notNull())
        .addColumn('webhook_ids', 'text', (c) => c.notNull())
        .addColumn('last_fired_at', adapter.bigintType)
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('alert_firings')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('rule_id', 'text', (c) => c.notNull())
        .addColumn('fired_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('event_id', 'text', (c) => c.notNull())
        .addColumn('event_seq', adapter.bigintType, (c) => c.notNull())
        .addColumn('count', 'integer', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('alert_firings_rule_idx').on('alert_firings').columns(['rule_id', 'fired_at']).execute();
    },
  },
];
