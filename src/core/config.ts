import { readFileSync } from 'node:fs';
import path from 'node:path';
import { CustosError } from './errors.js';

/** Value kinds a configuration key can take. */
type Kind = 'string' | 'port' | 'int' | 'list' | 'enum';

interface KeySpec {
  /** Environment variable that sets it. */
  env: string;
  /** Command-line flag (long form) that sets it, where one exists. */
  flag?: string;
  kind: Kind;
  /** Default, or a function of the data directory for paths inside it. */
  default: string | number | readonly string[] | undefined | ((dataDir: string) => string);
  /** Masked by `custos config show`. */
  secret?: boolean;
  choices?: readonly string[];
  min?: number;
  max?: number;
  description: string;
  /** The name and variable it had before, still read (after the current ones) so that existing deployments keep their setting. */
  formerly?: { key: string; env: string };
}

/**
 * Every configuration key, its sources and its default. Precedence: command-line
 * flag > `CUSTOS_*` environment variable > `custos.config.json` in the data
 * directory > default. The README's configuration reference is this table.
 */
export const CONFIG_SPEC = {
  dataDir: { env: 'CUSTOS_DATA_DIR', flag: '--data-dir', kind: 'string', default: './.custos', description: 'Directory holding every file of the deployment (control store, tenant stores, TLS files, master key). Cannot be set in the config file, which lives inside it.' },
  host: { env: 'CUSTOS_HOST', flag: '--host', kind: 'string', default: '127.0.0.1', description: 'Address the HTTPS server binds.' },
  port: { env: 'CUSTOS_PORT', flag: '--port', kind: 'port', default: 8443, description: 'Port of the HTTPS server.' },
  publicUrl: { env: 'CUSTOS_PUBLIC_URL', kind: 'string', default: undefined, description: 'URL users reach the server at (for links in mail); defaults to https://HOST:PORT.' },
  databaseUrl: { env: 'CUSTOS_DATABASE_URL', flag: '--database-url', kind: 'string', default: undefined, secret: true, description: 'postgres://… to store everything in PostgreSQL; unset for embedded SQLite under the data directory.' },
  databaseSchema: { env: 'CUSTOS_DATABASE_SCHEMA', kind: 'string', default: 'custos', description: 'PostgreSQL schema of the control plane; tenant schemas are named after their tenant ids.' },
  databasePoolSize: { env: 'CUSTOS_DATABASE_POOL_SIZE', kind: 'int', default: 10, min: 1, max: 500, description: 'PostgreSQL control-plane connections per Custos process.' },
  databaseTenantPoolSize: { env: 'CUSTOS_DATABASE_TENANT_POOL_SIZE', kind: 'int', default: 4, min: 1, max: 100, description: "PostgreSQL connections per tenant per Custos process (each tenant's connections log in as its own role); idle ones close after 30 s." },
  databasePreparedStatements: { env: 'CUSTOS_DATABASE_PREPARED_STATEMENTS', kind: 'int', default: 256, min: 0, max: 10000, description: 'Named prepared statements each PostgreSQL connection keeps (parsed and planned once, not on every execution); 0 turns them off, as a connection pooler in transaction mode that does not track them needs (PgBouncer before 1.21, or without max_prepared_statements).' },
  tlsCert: { env: 'CUSTOS_TLS_CERT', flag: '--cert', kind: 'string', default: (d: string) => path.join(d, 'tls', 'cert.pem'), description: 'PEM certificate (chain) the server presents; `custos init` makes a self-signed one for localhost.' },
  tlsKey: { env: 'CUSTOS_TLS_KEY', flag: '--key', kind: 'string', default: (d: string) => path.join(d, 'tls', 'key.pem'), description: 'PEM private key of the certificate.' },
  masterKeyFile: { env: 'CUSTOS_MASTER_KEY_FILE', kind: 'string', default: (d: string) => path.join(d, 'master.key'), description: 'Provider master key file (32 random bytes, mode 0600). Never stored in a database.' },
  logLevel: { env: 'CUSTOS_LOG_LEVEL', flag: '--log-level', kind: 'enum', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info', description: 'Minimum level of the JSON log written to standard output.' },
  trustedProxies: { env: 'CUSTOS_TRUSTED_PROXIES', kind: 'list', default: [], description: 'Comma-separated addresses or CIDRs whose X-Forwarded-For is believed.' },
  workers: { env: 'CUSTOS_WORKERS', flag: '--workers', kind: 'int', default: 1, min: 1, max: 64, description: 'Server processes sharing the port (node:cluster); set it to the number of cores. Scheduled work runs in the first.' },
  shutdownTimeoutMs: { env: 'CUSTOS_SHUTDOWN_TIMEOUT_MS', kind: 'int', default: 10000, min: 0, max: 600000, description: 'How long SIGTERM waits for in-flight requests before closing them.' },
  bodyLimitBytes: { env: 'CUSTOS_BODY_LIMIT_BYTES', kind: 'int', default: 1048576, min: 1024, max: 1073741824, description: 'Largest JSON request body accepted.' },
  dataThreads: { env: 'CUSTOS_DATA_THREADS', kind: 'int', default: 2, min: 0, max: 16, description: 'Worker threads per server process for the bulk cryptography of customer data: they decrypt and format the pages of a list export, and encrypt the new records of an import, while the main thread talks to storage and serves other requests; 0 does this work on the main thread. Formerly exportThreads (CUSTOS_EXPORT_THREADS), still read.', formerly: { key: 'exportThreads', env: 'CUSTOS_EXPORT_THREADS' } },
  auditCheckpointDir: { env: 'CUSTOS_AUDIT_CHECKPOINT_DIR', kind: 'string', default: undefined, description: 'Directory outside the data directory where signed activity-stream checkpoints are appended (one JSON-lines file per stream, fsync\'d); `custos audit verify --checkpoints DIR` uses them to detect a truncated stream. Unset: no external copy.' },
  smtpUrl: { env: 'CUSTOS_SMTP_URL', kind: 'string', default: undefined, secret: true, description: 'smtp://user:pass@host:port (STARTTLS when offered) or smtps://… to send mail; unset keeps mail in each tenant\'s outbox (custos mail list).' },
  mailFrom: { env: 'CUSTOS_MAIL_FROM', kind: 'string', default: 'Custos <no-reply@localhost>', description: 'From address of the mail Custos sends.' },
} as const satisfies Record<string, KeySpec>;

export type ConfigKey = keyof typeof CONFIG_SPEC;

/** The effective configuration. Frozen once loaded. */
export interface Config {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  readonly publicUrl: string;
  readonly databaseUrl: string | undefined;
  readonly databaseSchema: string;
  readonly databasePoolSize: number;
  readonly databaseTenantPoolSize: number;
  readonly databasePreparedStatements: number;
  readonly tlsCert: string;
  readonly tlsKey: string;
  readonly masterKeyFile: string;
  readonly logLevel: string;
  readonly trustedProxies: readonly string[];
  readonly workers: number;
  readonly shutdownTimeoutMs: number;
  readonly bodyLimitBytes: number;
  readonly dataThreads: number;
  readonly auditCheckpointDir: string | undefined;
  readonly smtpUrl: string | undefined;
  readonly mailFrom: string;
}

/** Where each effective value came from, for `custos config show`. */
export type ConfigSource = 'flag' | 'env' | 'file' | 'default';

export interface LoadedConfig {
  config: Config;
  sources: Record<ConfigKey, ConfigSource>;
}

export interface ConfigInputs {
  /** Values from command-line flags, keyed by config key. */
  flags?: Partial<Record<ConfigKey, string | number | undefined>>;
  env?: NodeJS.ProcessEnv;
  /** Working directory that relative paths resolve against. */
  cwd?: string;
}

export const CONFIG_FILE_NAME = 'custos.config.json';

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

function parseValue(key: ConfigKey, raw: unknown, origin: string): string | number | string[] {
  const spec: KeySpec = CONFIG_SPEC[key];
  const fail = (why: string): never => {
    throw new CustosError('invalid_configuration', `${origin}: ${key} ${why}`);
  };
  switch (spec.kind) {
    case 'string':
      if (typeof raw !== 'string' || raw.length === 0) fail('must be a non-empty string');
      return raw as string;
    case 'enum':
      if (typeof raw !== 'string' || !spec.choices?.includes(raw)) fail(`must be one of ${spec.choices?.join(', ')}`);
      return raw as string;
    case 'list': {
      if (Array.isArray(raw)) {
        if (!raw.every((v) => typeof v === 'string')) fail('must be a list of strings');
        return raw as string[];
      }
      if (typeof raw !== 'string') fail('must be a comma-separated string');
      return (raw as string).split(',').map((s) => s.trim()).filter((s) => s.length > 0);
    }
    case 'port':
    case 'int': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
      const min = spec.kind === 'port' ? 0 : (spec.min ?? Number.MIN_SAFE_INTEGER);
      const max = spec.kind === 'port' ? 65535 : (spec.max ?? Number.MAX_SAFE_INTEGER);
      if (!Number.isInteger(n) || n < min || n > max) fail(`must be an integer from ${min} to ${max}`);
      return n;
    }
  }
}

function readConfigFile(dataDir: string): Record<string, unknown> {
  const file = path.join(dataDir, CONFIG_FILE_NAME);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CustosError('invalid_configuration', `cannot read ${CONFIG_FILE_NAME}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new CustosError('invalid_configuration', `${CONFIG_FILE_NAME} is not valid JSON`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new CustosError('invalid_configuration', `${CONFIG_FILE_NAME} must hold a JSON object`);
  }
  const obj = parsed as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    if (!(k in CONFIG_SPEC) && !Object.values(CONFIG_SPEC).some((spec: KeySpec) => spec.formerly?.key === k)) throw new CustosError('invalid_configuration', `${CONFIG_FILE_NAME}: unknown key ${k}`);
    if (k === 'dataDir') throw new CustosError('invalid_configuration', `${CONFIG_FILE_NAME}: dataDir cannot be set in the file that lives inside it`);
  }
  return obj;
}

/**
 * Resolves the effective configuration: flag > environment > config file >
 * default. Relative paths resolve against `cwd`.
 */
export function loadConfig(inputs: ConfigInputs = {}): LoadedConfig {
  const env = inputs.env ?? process.env;
  const flags = inputs.flags ?? {};
  const cwd = inputs.cwd ?? process.cwd();
  const values: Record<string, unknown> = {};
  const sources = {} as Record<ConfigKey, ConfigSource>;

  const pick = (key: ConfigKey, file: Record<string, unknown>): void => {
    const spec: KeySpec = CONFIG_SPEC[key];
    const flagValue = flags[key];
    const was = spec.formerly;
    if (was && file[key] === undefined && file[was.key] !== undefined) file = { ...file, [key]: file[was.key] };
    if (flagValue !== undefined) {
      values[key] = parseValue(key, flagValue, `flag ${spec.flag ?? key}`);
      sources[key] = 'flag';
    } else if (env[spec.env] !== undefined && env[spec.env] !== '') {
      values[key] = parseValue(key, env[spec.env], `environment ${spec.env}`);
      sources[key] = 'env';
    } else if (was && env[was.env] !== undefined && env[was.env] !== '') {
      values[key] = parseValue(key, env[was.env], `environment ${was.env}`);
      sources[key] = 'env';
    } else if (file[key] !== undefined) {
      values[key] = parseValue(key, file[key], CONFIG_FILE_NAME);
      sources[key] = 'file';
    } else {
      const d = spec.default;
      values[key] = typeof d === 'function' ? d(values.dataDir as string) : d;
      sources[key] = 'default';
    }
  };

  pick('dataDir', {});
  values.dataDir = path.resolve(cwd, values.dataDir as string);
  const file = readConfigFile(values.dataDir as string);
  for (const key of Object.keys(CONFIG_SPEC) as ConfigKey[]) {
    if (key !== 'dataDir') pick(key, file);
  }
  for (const key of ['tlsCert', 'tlsKey', 'masterKeyFile'] as const) {
    values[key] = path.resolve(cwd, values[key] as string);
  }
  if (values.databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(values.databaseUrl as string)) {
    throw new CustosError('invalid_configuration', 'databaseUrl must start with postgres://');
  }
  if (values.smtpUrl !== undefined && !/^smtps?:\/\//.test(values.smtpUrl as string)) {
    throw new CustosError('invalid_configuration', 'smtpUrl must start with smtp:// or smtps://');
  }
  if (!SCHEMA_NAME.test(values.databaseSchema as string)) {
    throw new CustosError('invalid_configuration', 'databaseSchema must be a lower-case SQL identifier');
  }
  if (values.publicUrl === undefined) {
    const host = values.host as string;
    const shownHost = host === '0.0.0.0' || host === '::' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
    values.publicUrl = `https://${shownHost}:${values.port as number}`;
  }
  return { config: Object.freeze(values) as unknown as Config, sources };
}

/** Masks the password (and any secret) so the result can be printed or logged. */
export function maskSecret(key: ConfigKey, value: unknown): unknown {
  if (value === undefined || !('secret' in CONFIG_SPEC[key])) return value;
  if ((key === 'databaseUrl' || key === 'smtpUrl') && typeof value === 'string') {
    try {
      const u = new URL(value);
      if (u.password) u.password = '****';
      return u.toString();
    } catch {
      return '****';
    }
  }
  return '****';
}

/** The effective configuration with secrets masked, for display. */
export function describeConfig(loaded: LoadedConfig): Array<{ key: ConfigKey; value: unknown; source: ConfigSource; env: string }> {
  return (Object.keys(CONFIG_SPEC) as ConfigKey[]).map((key) => ({
    key,
    value: maskSecret(key, loaded.config[key]),
    source: loaded.sources[key],
    env: CONFIG_SPEC[key].env,
  }));
}
