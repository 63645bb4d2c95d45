import type { Migration } from '../migration.js';

/**
 * Data keys (DEKs) of the tenant's protected objects, each wrapped by a
 * version of the tenant's key ring; tenant secrets (webhook signing secrets,
 * MFA seeds, connection credentials) encrypted under them; and the progress of
 * resumable key jobs (re-encryption).
 */
export const dataKeysMigrations: readonly Migration[] = [
  {
    name: '0002_data_keys',
    async up(db, adapter) {
      await db.schema
        .createTable('data_keys')
        .addColumn('object_type', 'text', (c) => c.notNull())
        .addColumn('object_id', 'text', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('kek_version', 'integer', (c) => c.notNull())
        .addColumn('wrapped_dek', adapter.blobType, (c) => c.notNull())
        .addColumn('wrapped_index_key', adapter.blobType, (c) => c.notNull())
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addPrimaryKeyConstraint('data_keys_pk', ['object_type', 'object_id', 'generation'])
        .execute();
      await db.schema
        .createTable('tenant_secrets')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('purpose', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('ciphertext', adapter.blobType, (c) => c.notNull())
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .addUniqueConstraint('tenant_secrets_purpose_name', ['purpose', 'name'])
        .execute();
      await db.schema
        .createTable('key_jobs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('targets', 'text', (c) => c.notNull())
        .addColumn('source_index', 'integer', (c) => c.notNull())
        .addColumn('cursor', 'text')
        .addColumn('processed', 'integer', (c) => c.notNull())
        .addColumn('total', 'integer', (c) => c.notNull())
        .addColumn('started_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('updated_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('finished_at', adapter.bigintType)
        .execute();
    },
  },
];
