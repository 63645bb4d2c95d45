import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * Paths pino blanks in every log line. Request and response serializers
 * below already omit bodies and most headers; this is the second belt.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-csrf-token"]',
  'res.headers["set-cookie"]',
  '*.password',
  '*.newPassword',
  '*.currentPassword',
  '*.temporaryPassword',
  '*.token',
  '*.secret',
  '*.privateKey',
  'databaseUrl',
  '*.databaseUrl',
];

/** JSON logs (pino) with secrets redacted. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'custos' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      serializers: {
        req: (req: { id: string; method: string; url: string; ip?: string; headers?: Record<string, string | undefined> }) => ({
          id: req.id,
          method: req.method,
          url: req.url.split('?')[0],
          ip: req.ip,
          userAgent: req.headers?.['user-agent'],
        }),
        res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
        err: pino.stdSerializers.err,
      },
    },
    destination,
  );
}

export type { Logger };
