import type { Migration } from '../migration.js';
import { usersMigrations } from './0001-users.js';
import { auditMigrations } from './0003-audit.js';
import { dataKeysMigrations } from './0002-data-keys.js';
import { notifyMigrations } from './0004-notify.js';
import { alertsMigrations } from './0005-alerts.js';
import { iamMigrations } from './0006-iam.js';
import { dataMigrations } from './0007-data.js';
import { loginThrottleMigrations } from './0008-login-throttle.js';
import { webhookRotationMigrations } from './0009-webhook-rotation.js';
import { recordKeysMigrations } from './0010-record-keys.js';
import { samlMigrations } from './0012-saml.js';

/**
 * Tenant-store migrations, in the order they apply; every tenant store gets
 * every one. Each feature keeps its migrations in a file of its own, named
 * after the first migration's number; this list orders them by name.
 */
export const tenantMigrations: readonly Migration[] = [...dataKeysMigrations, ...notifyMigrations, ...alertsMigrations, ...iamMigrations, ...dataMigrations, ...loginThrottleMigrations, ...webhookRotationMigrations, ...recordKeysMigrations, ...samlMigrations, ...usersMigrations, ...auditMigrations].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
