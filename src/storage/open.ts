import type { Clock } from '../core/clock.js';
import type { Config } from '../core/config.js';
import { PostgresStorage } from './postgres/postgres-storage.js';
import { SqliteStorage } from './sqlite/sqlite-storage.js';
import type { Storage } from './storage.js';

/** Opens the storage the configuration names: PostgreSQL when `databaseUrl` is set, SQLite files otherwise. */
export function openStorage(config: Pick<Config, 'dataDir' | 'databaseUrl' | 'databaseSchema' | 'databasePoolSize'>, clock: Clock): Storage {
  if (config.databaseUrl !== undefined) {
    return new PostgresStorage({ url: config.databaseUrl, schema: config.databaseSchema, poolSize: config.databasePoolSize, clock });
  }
  return new SqliteStorage(config.dataDir, clock);
}
