import type { Migration } from '../migration.js';
import { usersMigrations } from './0001-users.js';
import { dataKeysMigrations } from './0002-data-keys.js';

/**
 * Tenant-store migrations, in the order they apply; every tenant store gets
 * every one. Each feature keeps its migrations in a file of its own, named
 * after the first migration's number; this list orders them by name.
 */
export const tenantMigrations: readonly Migration[] = [...usersMigrations, ...dataKeysMigrations].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
