import type { Migration } from '../migration.js';

/**
 * Failed password sign-ins per client address, in one-minute buckets: the
 * per-address throttle of the login paths (a per-account lockout alone does
 * not slow one address trying one password against many accounts).
 */
export const loginThrottleMigrations: readonly Migration[] = [
  {
    name: '0008_login_throttle',
    async up(db) {
      await db.schema
        .createTable('login_ip_failures')
        .addColumn('ip', 'text', (c) => c.notNull())
        .addColumn('bucket', 'integer', (c) => c.notNull())
        .addColumn('failures', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('login_ip_failures_pk', ['ip', 'bucket'])
        .execute();
      await db.schema.createIndex('login_ip_failures_bucket_idx').on('login_ip_failures').column('bucket').execute();
    },
  },
];
