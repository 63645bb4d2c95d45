import type { Migration } from '../migration.js';
import { tenantsMigrations } from './0001-tenants.js';
import { keyRingsMigrations } from './0002-key-rings.js';
import { providerAuditMigrations } from './0003-provider-audit.js';

/** Control-plane migrations, in the order they apply; one file per feature, ordered by name here. */
export const controlMigrations: readonly Migration[] = [...keyRingsMigrations, ...tenantsMigrations, ...providerAuditMigrations].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
