import type { Command } from 'commander';
import { loadConfig, type ConfigKey, type LoadedConfig } from '../core/config.js';
import { CustosError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/logger.js';
import { isInitialized } from '../ops/init.js';
import { openRuntime, type Runtime } from '../runtime.js';

/** Maps commander's option names (camel-cased flags) to configuration keys. */
const FLAG_KEYS: Partial<Record<string, ConfigKey>> = {
  dataDir: 'dataDir',
  databaseUrl: 'databaseUrl',
  host: 'host',
  port: 'port',
  cert: 'tlsCert',
  key: 'tlsKey',
  logLevel: 'logLevel',
  workers: 'workers',
};

/** The effective configuration for a command: its flags (and the program's) over environment, file and defaults. */
export function configFor(cmd: Command): LoadedConfig {
  const opts = cmd.optsWithGlobals<Record<string, unknown>>();
  const flags: Partial<Record<ConfigKey, string>> = {};
  for (const [name, value] of Object.entries(opts)) {
    const key = FLAG_KEYS[name];
    if (key && typeof value === 'string') flags[key] = value;
  }
  return loadConfig({ flags });
}

/** Logger for provider commands other than `serve`: warnings and errors, JSON, on standard error. */
export function cliLogger(level = 'warn'): Logger {
  return createLogger(level, process.stderr);
}

/** Opens the runtime for a provider command; the data directory must have been initialised. */
export async function runtimeFor(cmd: Command, opts: { migrateTenants?: boolean } = {}): Promise<Runtime> {
  const loaded = configFor(cmd);
  if (!isInitialized(loaded.config)) {
    throw new CustosError('invalid_configuration', `${loaded.config.dataDir} is not initialised; run custos init`);
  }
  return openRuntime(loaded.config, { logger: cliLogger(), migrateTenants: opts.migrateTenants ?? false });
}

/** Runs `fn` with a runtime and closes it afterwards. */
export async function withRuntime<T>(cmd: Command, fn: (rt: Runtime) => Promise<T>): Promise<T> {
  const rt = await runtimeFor(cmd);
  try {
    return await fn(rt);
  } finally {
    await rt.close();
  }
}
