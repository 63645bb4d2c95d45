import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { CustosError } from '../core/errors.js';
import type { Runtime } from '../runtime.js';
import { buildApp } from './app.js';

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  /** Stops accepting, lets in-flight requests finish (up to the shutdown timeout), closes storage. */
  stop(): Promise<void>;
}

async function readTls(runtime: Runtime): Promise<{ cert: Buffer; key: Buffer }> {
  const { tlsCert, tlsKey } = runtime.config;
  try {
    return { cert: await readFile(tlsCert), key: await readFile(tlsKey) };
  } catch {
    throw new CustosError('invalid_configuration', `cannot read the TLS certificate ${tlsCert} or key ${tlsKey}; run custos init or pass --cert/--key`);
  }
}

/**
 * Starts the HTTPS server. There is no plain-HTTP listener. `configure` may add
 * routes before it listens (embedding, tests).
 *
 * The server asks every client for a certificate (`requestCert`) but does not
 * judge it in the handshake (`rejectUnauthorized: false`): the CAs an API
 * user's certificate may chain to are registered per tenant and per user, so
 * `POST /auth/token` checks the certificate in the application
 * (`src/iam/client-certificates.ts`). A client without a certificate is
 * served as before; the TLS stack still proves that a client presenting one
 * holds its private key.
 */
export async function startServer(runtime: Runtime, configure?: (app: FastifyInstance) => void): Promise<RunningServer> {
  let shuttingDown = false;
  const app = await buildApp({ runtime, https: { ...(await readTls(runtime)), requestCert: true, rejectUnauthorized: false }, isShuttingDown: () => shuttingDown });
  configure?.(app);
  await app.listen({ host: runtime.config.host, port: runtime.config.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : runtime.config.port;
  const host = runtime.config.host.includes(':') ? `[${runtime.config.host}]` : runtime.config.host;
  let stopping: Promise<void> | undefined;
  return {
    app,
    url: `https://${host}:${port}`,
    stop() {
      stopping ??= (async () => {
        shuttingDown = true;
        const timer = setTimeout(() => {
          runtime.logger.warn('shutdown timeout reached; closing remaining connections');
          app.server.closeAllConnections();
        }, runtime.config.shutdownTimeoutMs);
        timer.unref();
        try {
          await app.close();
        } finally {
          clearTimeout(timer);
          await runtime.close();
        }
      })();
      return stopping;
    },
  };
}
