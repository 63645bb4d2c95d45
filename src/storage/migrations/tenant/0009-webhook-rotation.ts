import type { Migration } from '../migration.js';

/** Until when a webhook endpoint's previous signing secret still signs deliveries (after a rotation). */
export const webhookRotationMigrations: readonly Migration[] = [
  {
    name: '0009_webhook_rotation',
    async up(db, adapter) {
      await db.schema.alterTable('webhook_endpoints').addColumn('previous_secret_until', adapter.bigintType).execute();
    },
  },
];
