import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { TlsOptions } from 'node:tls';
import { newUlid } from '../core/ids.js';
import type { Runtime } from '../runtime.js';
import { VERSION } from '../version.js';
import cookie from '@fastify/cookie';
import { errorsPlugin } from './plugins/errors.js';
import { metricsPlugin } from './plugins/metrics.js';
import { openapiPlugin } from './plugins/openapi.js';
import { securityHeadersPlugin } from './plugins/security-headers.js';
import { registerTenantBinding } from './plugins/tenant-binding.js';
import { healthRoutes } from './routes/health.js';
import { apiCredentialRoutes } from './routes/api-credentials.js';
import { authRoutes } from './routes/auth.js';
import { listRoutes } from './routes/lists.js';
import { loginOptionsRoutes } from './routes/login-options.js';
import { meRoutes } from './routes/me.js';
import { activityRoutes } from './routes/activity.js';
import { alertRoutes } from './routes/alerts.js';
import { keyRoutes } from './routes/keys.js';
import { orgRoutes } from './routes/orgs.js';
import { roleRoutes } from './routes/roles.js';
import { samlRoutes } from './routes/saml.js';
import { settingsRoutes } from './routes/settings.js';
import { userRoutes } from './routes/users.js';

export interface BuildAppOptions {
  runtime: Runtime;
  /** TLS material and client-certificate options; absent in tests that use `app.inject()`. The server never listens without it. */
  https?: HttpsOptions;
  /** Whether the process is draining (readiness answers 503). */
  isShuttingDown?: () => boolean;
}

/** What `buildApp` passes to the HTTPS server: its certificate and key, and whether it asks clients for a certificate. */
export type HttpsOptions = Pick<TlsOptions, 'cert' | 'key' | 'requestCert' | 'rejectUnauthorized'>;

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;
const PROBES = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * One log line per request, when it completes — request (method, path,
 * address, user agent), status and time together — instead of Fastify's two
 * (arrival and completion), which cost a single-record read about a tenth of
 * its CPU with redaction. The arrival line is still written at `debug`, for
 * finding a request that never completes. Probes are not logged.
 */
class RequestLog extends LogController {
  constructor() {
    super({ requestIdLogLabel: 'requestId', disableRequestLogging: (req: { url: string }) => PROBES.has(req.url) });
  }

  override incomingRequest(request: FastifyRequest, reply: FastifyReply): void {
    if (request.log.level === 'debug' || request.log.level === 'trace') super.incomingRequest(request, reply);
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (this.isLogDisabled(request)) return;
    if (error) reply.log.error({ req: request, res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored');
    else reply.log.info({ req: request, res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}

/**
 * Builds the Fastify app without listening: `serve` listens on it, tests call
 * `app.inject()`. Plugin order matters: errors and headers first, OpenAPI
 * before the routes it documents, then routes — tenant routes inside one
 * encapsulated scope whose binding hook runs before any of their handlers.
 */
export async function buildApp(opts: BuildAppOptions): Promise<FastifyInstance> {
  const { runtime } = opts;
  const serverOptions: FastifyServerOptions & { https?: HttpsOptions } = {
    loggerInstance: runtime.logger,
    bodyLimit: runtime.config.bodyLimitBytes,
    trustProxy: runtime.config.trustedProxies.length > 0 ? [...runtime.config.trustedProxies] : false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : newUlid();
    },
    // Request lines carry the request id as `requestId`.
    logController: new RequestLog(),
    return503OnClosing: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
  };
  if (opts.https) serverOptions.https = opts.https;
  const app = Fastify(serverOptions).withTypeProvider<TypeBoxTypeProvider>() as unknown as FastifyInstance;

  await app.register(errorsPlugin);
  await app.register(cookie);
  await app.register(securityHeadersPlugin);
  await app.register(metricsPlugin);
  await app.register(openapiPlugin, { version: VERSION });

  healthRoutes(app, { storage: runtime.storage, isShuttingDown: opts.isShuttingDown ?? (() => false) });

  await app.register(
    async (tenantScope) => {
      registerTenantBinding(tenantScope, {
        tenants: runtime.tenants,
        storage: runtime.storage,
        clock: runtime.clock,
        sessions: runtime.sessions,
        settings: runtime.securitySettings,
        audit: runtime.audit,
      });
      loginOptionsRoutes(tenantScope, runtime);
      authRoutes(tenantScope, runtime);
      samlRoutes(tenantScope, runtime);
      meRoutes(tenantScope, runtime);
      listRoutes(tenantScope, runtime);
      userRoutes(tenantScope, runtime);
      roleRoutes(tenantScope, runtime);
      orgRoutes(tenantScope, runtime);
      settingsRoutes(tenantScope, runtime);
      activityRoutes(tenantScope, runtime);
      keyRoutes(tenantScope, runtime);
      alertRoutes(tenantScope, runtime);
      apiCredentialRoutes(tenantScope, runtime);
    },
    { prefix: '/api/v1' },
  );

  return app;
}
