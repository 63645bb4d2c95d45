import type { Clock } from '../core/clock.js';
import type { Config } from '../core/config.js';
import { deriveFromMasterKey } from '../crypto/derive.js';
import { PostgresStorage } from './postgres/postgres-storage.js';
import { SqliteStorage } from './sqlite/sqlite-storage.js';
import type { Storage } from './storage.js';

/** The password of a tenant's PostgreSQL login role: derived from the master key, never stored. */
export function tenantRolePassword(masterKey: Buffer, tenantId: string): string {
  return deriveFromMasterKey(masterKey, `postgres-role-password/${tenantId}`).toString('base64url');
}

/**
 * Opens the storage the configuration names: PostgreSQL when `databaseUrl` is
 * set, SQLite files otherwise. PostgreSQL tenant roles log in with passwords
 * derived from the master key.
 */
export function openStorage(
  config: Pick<Config, 'dataDir' | 'databaseUrl' | 'databaseSchema' | 'databasePoolSize' | 'databaseTenantPoolSize' | 'databasePreparedStatements'>,
  clock: Clock,
  masterKey: () => Buffer,
): Storage {
  if (config.databaseUrl !== undefined) {
    return new PostgresStorage({
      url: config.databaseUrl,
      schema: config.databaseSchema,
      poolSize: config.databasePoolSize,
      tenantPoolSize: config.databaseTenantPoolSize,
      preparedStatements: config.databasePreparedStatements,
      tenantRolePassword: (tenantId) => tenantRolePassword(masterKey(), tenantId),
      clock,
    });
  }
  return new SqliteStorage(config.dataDir, clock);
}
