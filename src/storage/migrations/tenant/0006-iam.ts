import type { Migration } from '../migration.js';

/**
 * Identity and access: account state of users (lockout, last sign-in),
 * custom roles, the organization tree, security settings, server-side
 * sessions and API tokens, sign-in flows with their challenges, trusted
 * devices, password history and reset links, MFA, and the client
 * certificates API users may authenticate with.
 */
export const iamMigrations: readonly Migration[] = [
  {
    name: '0006_iam',
    async up(db, adapter) {
      const big = adapter.bigintType;
      const blob = adapter.blobType;
      await db.schema.alterTable('users').addColumn('failed_attempts', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.alterTable('users').addColumn('locked_until', big).execute();
      await db.schema.alterTable('users').addColumn('last_login_at', big).execute();
      await db.schema.alterTable('users').addColumn('password_changed_at', big).execute();
      await db.schema.alterTable('users').addColumn('full_name', 'text').execute();

      await db.schema
        .createTable('roles')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('permissions', 'text', (c) => c.notNull())
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('updated_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('orgs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('parent_id', 'text', (c) => c.references('orgs.id'))
        .addColumn('created_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('user_orgs')
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('org_id', 'text', (c) => c.notNull().references('orgs.id'))
        .addPrimaryKeyConstraint('user_orgs_pk', ['user_id', 'org_id'])
        .execute();
      await db.schema
        .createTable('tenant_settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .addColumn('updated_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('sessions')
        .addColumn('id_hash', blob, (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('auth_method', 'text', (c) => c.notNull())
        .addColumn('csrf_hash', blob)
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('last_seen_at', big, (c) => c.notNull())
        .addColumn('expires_at', big, (c) => c.notNull())
        .addColumn('ip', 'text')
        .addColumn('user_agent', 'text')
        .addColumn('public_id', 'text', (c) => c.notNull().unique())
        .execute();
      await db.schema.createIndex('sessions_user_idx').on('sessions').column('user_id').execute();
      await db.schema
        .createTable('login_flows')
        .addColumn('id_hash', blob, (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('pending', 'text', (c) => c.notNull())
        .addColumn('code_hash', blob)
        .addColumn('code_expires_at', big)
        .addColumn('code_attempts', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('expires_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('devices')
        .addColumn('id_hash', blob, (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('last_used_at', big, (c) => c.notNull())
        .addColumn('expires_at', big, (c) => c.notNull())
        .addColumn('user_agent', 'text')
        .execute();
      await db.schema
        .createTable('password_history')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('password_hash', 'text', (c) => c.notNull())
        .addColumn('created_at', big, (c) => c.notNull())
        .execute();
      await db.schema.createIndex('password_history_user_idx').on('password_history').columns(['user_id', 'id']).execute();
      await db.schema
        .createTable('password_resets')
        .addColumn('token_hash', blob, (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('created_at', big, (c) => c.notNull())
        .addColumn('expires_at', big, (c) => c.notNull())
        .addColumn('used_at', big)
        .execute();
      await db.schema
        .createTable('mfa_totp')
        .addColumn('user_id', 'text', (c) => c.primaryKey().references('users.id').onDelete('cascade'))
        .addColumn('confirmed_at', big)
        .addColumn('last_counter', big)
        .addColumn('created_at', big, (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('mfa_recovery_codes')
        .addColumn('code_hash', blob, (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('used_at', big)
        .execute();
      await db.schema
        .createTable('api_credentials')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addColumn('created_at', big, (c) => c.notNull())
        .execute();
    },
  },
];
