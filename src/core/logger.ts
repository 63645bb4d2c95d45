import { pino, type DestinationStream, type Logger } from 'pino';

export const CENSOR = '[redacted]';

/**
 * Names of properties whose values never reach a log line, at any depth of
 * what is logged (compared lower-case). The request and response serializers
 * below already omit bodies and headers; this is the second belt.
 */
export const SECRET_KEYS: ReadonlySet<string> = new Set([
  'authorization',
  'cookie',
  'set-cookie',
  'x-csrf-token',
  'password',
  'newpassword',
  'currentpassword',
  'temporarypassword',
  'token',
  'secret',
  'privatekey',
  'databaseurl',
]);

/** How deep redaction looks into logged objects; anything deeper is replaced whole. */
const MAX_DEPTH = 8;

/** The prototype of what pino's error serializer returns: walked like a plain object. */
const SERIALIZED_ERROR = Object.getPrototypeOf(pino.stdSerializers.err(new Error('probe'))) as unknown;

function isPlain(value: object): boolean {
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null || proto === SERIALIZED_ERROR;
}

/**
 * `value` with the values of secret-named properties replaced by
 * {@link CENSOR}, in plain objects, arrays and errors at any depth. Copies
 * only what it changes: the caller's objects are never modified. Other
 * objects (class instances, buffers, dates) are left to pino's JSON.
 */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (depth >= MAX_DEPTH) return CENSOR;
  if (Array.isArray(value)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      const r = redactSecrets(v, depth + 1);
      if (r !== v) (out ??= value.slice())[i] = r;
    }
    return out ?? value;
  }
  // Errors anywhere are logged as pino's `err` serializer shows them (message, stack, own properties), redacted.
  if (value instanceof Error) return redactSecrets(pino.stdSerializers.err(value), depth);
  return isPlain(value) ? redactRecord(value as Record<string, unknown>, depth) : value;
}

/** The object branch of {@link redactSecrets}; properties named in `unwalked` are kept as they are unless secret-named. */
function redactRecord(record: Record<string, unknown>, depth: number, unwalked?: ReadonlySet<string>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const key of Object.keys(record)) {
    const v = record[key];
    const r = SECRET_KEYS.has(key.toLowerCase()) ? CENSOR : unwalked?.has(key) ? v : redactSecrets(v, depth + 1);
    if (r !== v) (out ??= { ...record })[key] = r;
  }
  return out ?? record;
}

/** Properties of a log call that have serializers: they are redacted after serializing, not walked raw. */
const SERIALIZED: ReadonlySet<string> = new Set(['req', 'res', 'err']);

const serializeErr = (err: Error) => redactSecrets(pino.stdSerializers.err(err));

/**
 * JSON logs (pino) with secrets redacted. Redaction is done here, in one
 * pass that copies only what it changes, rather than with pino's `redact`
 * paths: those re-parse every path and clone each logged object per line,
 * four times the cost of the rest of a request's log line (see
 * docs/PERFORMANCE.md), and matched one level below the top only.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const logger = pino(
    {
      level,
      base: { service: 'custos' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        log: (obj) => redactRecord(obj, 0, SERIALIZED),
      },
      serializers: {
        // Chosen fields only: never headers, query strings or bodies.
        req: (req: { id: string; method: string; url: string; ip?: string; headers?: Record<string, string | undefined> }) => ({
          id: req.id,
          method: req.method,
          url: req.url.split('?')[0],
          ip: req.ip,
          userAgent: req.headers?.['user-agent'],
        }),
        res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
        // An error's own properties are logged too (a driver's `code`, say): secret-named ones are redacted.
        err: serializeErr,
      },
    },
    destination,
  );
  // Bindings of child loggers (and of theirs, which inherit this) are redacted too: pino applies no formatter to them.
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called below with the child's own `this`
  const child = logger.child as unknown as (this: Logger, bindings: Record<string, unknown>, options?: unknown) => Logger;
  logger.child = function (this: Logger, bindings: Record<string, unknown>, options?: unknown) {
    return child.call(this, redactSecrets(bindings) as Record<string, unknown>, options);
  } as unknown as Logger['child'];
  return logger;
}

export type { Logger };
