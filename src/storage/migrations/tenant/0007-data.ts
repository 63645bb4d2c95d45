import type { Migration } from '../migration.js';

/**
 * Customer data: lists with their declared schema, and records. Plain field
 * values are a JSON document; `pii` and `sensitive` values are per-field
 * ciphertexts under the list's data key; oHashes and blind indexes are
 * columns so that match keys and equality search use an index.
 */
export const dataMigrations: readonly Migration[] = [
  {
    name: '0007_data',
    async up(db, adapter) {
      const big = adapter.bigintType;
      const blob = adapter.blobType;
      await db.schema
        .createTable('lists')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('key', 'integer', (c) => c.notNull().unique())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('org_id', 'text')
        .addColumn('fields', 'text', (c) => c.notNull())
        .addColumn('schema_version', 'integer', (c) => c.notNull())
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('updated_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('records')
        .addColumn('list_key', 'integer', (c) => c.notNull())
        .addColumn('id', 'text', (c) => c.notNull())
        .addColumn('customer_id', 'text')
        .addColumn('email_sha256', 'text')
        .addColumn('email_md5', 'text')
        .addColumn('email_bi', blob)
        .addColumn('mobile_bi', blob)
        .addColumn('k_sha256', big)
        .addColumn('k_md5', big)
        .addColumn('k_mobile', big)
        .addColumn('plain', 'text', (c) => c.notNull())
        .addColumn('protected', blob)
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('updated_at', big, (c) => c.notNull())
        .addPrimaryKeyConstraint('records_pk', ['list_key', 'id'])
        .execute();
      // Lookup keys are 48-bit prefixes of the hashes (small index entries, far fewer pages
      // to write per batch); a hit is confirmed on the full value. The email is found through
      // its SHA-256 oHash (then its blind index), so it needs no index of its own.
      await db.schema.createIndex('records_customer_idx').on('records').columns(['list_key', 'customer_id']).unique().execute();
      await db.schema.createIndex('records_sha256_idx').on('records').columns(['list_key', 'k_sha256']).execute();
      await db.schema.createIndex('records_md5_idx').on('records').columns(['list_key', 'k_md5']).execute();
      await db.schema.createIndex('records_mobile_idx').on('records').columns(['list_key', 'k_mobile']).execute();
      await db.schema
        .createTable('record_index')
        .addColumn('list_key', 'integer', (c) => c.notNull())
        .addColumn('field', 'text', (c) => c.notNull())
        .addColumn('value', blob, (c) => c.notNull())
        .addColumn('record_id', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('record_index_pk', ['list_key', 'field', 'value', 'record_id'])
        .execute();
      await db.schema.createIndex('record_index_record_idx').on('record_index').columns(['list_key', 'record_id']).execute();
    },
  },
];
