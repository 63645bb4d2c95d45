import type { Migration } from '../migration.js';

/**
 * SAML single sign-on: the AuthnRequests sent and not yet answered (their
 * RelayState hash, ID and expiry), shared by every server process so that
 * any of them can check a response's InResponseTo, and use it up once; and
 * how a sign-in in progress passed its first factor (`login_flows.auth_method`:
 * null for a password, `saml`), so that its MFA step ends in a session of the
 * right method. The SAML configuration itself is a document in `tenant_settings`.
 */
export const samlMigrations: readonly Migration[] = [
  {
    name: '0012_saml',
    async up(db, adapter) {
      await db.schema
        .createTable('saml_requests')
        .addColumn('relay_hash', adapter.blobType, (c) => c.primaryKey())
        .addColumn('request_id', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', adapter.bigintType, (c) => c.notNull())
        .addColumn('expires_at', adapter.bigintType, (c) => c.notNull())
        .execute();
      await db.schema.createIndex('saml_requests_expires_idx').on('saml_requests').column('expires_at').execute();
      await db.schema.alterTable('login_flows').addColumn('auth_method', 'text').execute();
    },
  },
];
