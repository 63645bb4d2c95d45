import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditService } from '../../audit/audit-service.js';
import { CustosError } from '../../core/errors.js';
import type { Clock } from '../../core/clock.js';
import type { Source } from '../../core/principal.js';
import { authorize, type AuthContext } from '../../iam/authorize.js';
import { SESSION_COOKIE, parseCredential, secretMatches, type ParsedCredential } from '../../iam/credentials.js';
import type { Permission } from '../../iam/permissions.js';
import { ipAllowed, type SecuritySettingsStore } from '../../iam/security-settings.js';
import type { SessionService } from '../../iam/session-service.js';
import type { TenantService } from '../../ops/tenant-service.js';
import type { Storage, TenantStore } from '../../storage/storage.js';
import type { TenantsTable } from '../../storage/schema.js';

/** The tenant a request is bound to, and its store: the only store a tenant route can reach. */
export interface BoundTenant {
  readonly id: string;
  readonly name: string;
  readonly edition: string;
  readonly store: TenantStore;
}

/**
 * How a tenant route finds its tenant. `credential`: from the authenticated
 * session or token (the tenant is never taken from input once a user is
 * signed in). `query` / `body`: by name from a field of the request, for the
 * few routes that run before authentication (login, reset, login options).
 */
export type TenantBindingRule = { from: 'credential' } | { from: 'query' | 'body'; field: string };

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the tenant-binding hook before any tenant route's handler runs. */
    tenant: BoundTenant | null;
    /** The tenant id an authenticated credential names; set by authentication. */
    credentialTenantId: string | null;
    /** The authenticated principal of a `credential` route. */
    auth: AuthContext | null;
  }
  interface FastifyContextConfig {
    tenant?: TenantBindingRule;
    /** The permission a `credential` route requires; `null` for routes any signed-in principal may use (its own profile). */
    permission?: Permission | null;
    /** Which credentials a `credential` route accepts (default both). */
    credentials?: 'session' | 'token' | 'both';
  }
}

/** Control-plane answers are cached this long; a suspension made by another process takes effect within it. */
const CACHE_TTL_MS = 1000;
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface TenantBindingDeps {
  tenants: TenantService;
  storage: Storage;
  clock: Clock;
  sessions: SessionService;
  settings: SecuritySettingsStore;
  audit: AuditService;
}

/** Where a request came from: the client address (X-Forwarded-For only from trusted proxies), the user agent. */
export function sourceOf(request: FastifyRequest): Source {
  const ua = request.headers['user-agent'];
  return { ip: request.ip, userAgent: typeof ua === 'string' ? ua.slice(0, 300) : undefined };
}

function presentedCredential(request: FastifyRequest): { via: 'session' | 'token'; cred: ParsedCredential } | null {
  const header = request.headers.authorization;
  if (typeof header === 'string' && header.length > 0) {
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    const cred = m ? parseCredential(m[1]) : null;
    return cred ? { via: 'token', cred } : null;
  }
  const cookie = request.cookies?.[SESSION_COOKIE];
  const cred = cookie ? parseCredential(cookie) : null;
  return cred ? { via: 'session', cred } : null;
}

/**
 * Binds requests to tenants and authenticates them. Registered once, inside
 * the encapsulated scope that holds every tenant route: each route there must
 * declare its binding rule — and a credential route its permission — or the
 * server refuses to start. Before any tenant route's handler runs, the hook:
 * resolves the tenant (404 `tenant_not_found`, 403 `tenant_suspended`);
 * enforces the tenant's IP allowlist (403 `ip_not_allowed`, recorded);
 * for credential routes authenticates the session or bearer token (401
 * `authentication_required`), checks the CSRF token of cookie-authenticated
 * changes (403 `csrf_invalid`) and authorizes the route's permission (403
 * `forbidden`).
 */
export function registerTenantBinding(app: FastifyInstance, deps: TenantBindingDeps): void {
  const byName = new Map<string, { row: TenantsTable | undefined; at: number }>();
  const byId = new Map<string, { row: TenantsTable | undefined; at: number }>();

  const lookup = async (key: string, kind: 'name' | 'id'): Promise<TenantsTable | undefined> => {
    const cache = kind === 'name' ? byName : byId;
    const now = deps.clock.now();
    const hit = cache.get(key);
    if (hit && now - hit.at < CACHE_TTL_MS) return hit.row;
    const row = kind === 'name' ? await deps.tenants.findUsable(key) : await deps.tenants.findUsableById(key);
    if (cache.size > 10000) cache.clear();
    cache.set(key, { row, at: now });
    return row;
  };

  if (!app.hasRequestDecorator('tenant')) {
    app.decorateRequest('tenant', null);
    app.decorateRequest('credentialTenantId', null);
    app.decorateRequest('auth', null);
  }

  app.addHook('onRoute', (route) => {
    const rule = route.config?.tenant;
    if (!rule) throw new TypeError(`tenant route ${route.method.toString()} ${route.url} declares no tenant binding rule`);
    if (rule.from === 'credential' && route.config?.permission === undefined) {
      throw new TypeError(`tenant route ${route.method.toString()} ${route.url} declares no permission`);
    }
  });

  app.addHook('preHandler', async (request: FastifyRequest) => {
    const config = request.routeOptions.config;
    const rule = config.tenant;
    if (!rule) throw new CustosError('internal_error');
    let row: TenantsTable | undefined;
    let presented: ReturnType<typeof presentedCredential> = null;
    if (rule.from === 'credential') {
      presented = presentedCredential(request);
      const accepts = config.credentials ?? 'both';
      if (!presented || (accepts !== 'both' && accepts !== presented.via)) throw new CustosError('authentication_required');
      request.credentialTenantId = presented.cred.tenantId;
      row = await lookup(presented.cred.tenantId, 'id');
      // A credential of a deleted tenant is simply no longer valid.
      if (!row) throw new CustosError('authentication_required');
    } else {
      const source = (rule.from === 'query' ? request.query : request.body) as Record<string, unknown> | undefined;
      const name = source?.[rule.field];
      if (typeof name !== 'string') throw new CustosError('validation_failed', `${rule.field} is required`);
      row = await lookup(name, 'name');
      if (!row) throw new CustosError('tenant_not_found');
    }
    if (row.status === 'suspended') throw new CustosError('tenant_suspended');
    request.tenant = { id: row.id, name: row.name, edition: row.edition, store: deps.storage.tenant(row.id) };

    const settings = await deps.settings.get(row.id);
    if (!ipAllowed(request.ip, settings.ipAllowlist)) {
      await deps.audit.record(row.id, {
        type: 'auth.ip.denied',
        outcome: 'denied',
        code: 'ip_not_allowed',
        actor: { principal: { type: 'user', id: 'unknown' }, source: sourceOf(request), request: { id: request.id, method: request.method, path: request.url.split('?')[0]! } },
      });
      throw new CustosError('ip_not_allowed');
    }

    if (presented) {
      const auth = await deps.sessions.authenticate(row.id, presented.cred.secret, presented.via, sourceOf(request));
      if (presented.via === 'session' && !SAFE_METHODS.has(request.method)) {
        const csrf = request.headers['x-csrf-token'];
        const parsed = typeof csrf === 'string' ? parseCredential(csrf) : null;
        if (!parsed || parsed.tenantId !== row.id || !secretMatches(parsed.secret, auth.csrfHash)) throw new CustosError('csrf_invalid');
      }
      request.auth = { ...auth, request: { id: request.id, method: request.method, path: request.url.split('?')[0]! } };
      if (config.permission) authorize(request.auth, config.permission);
    }
  });
}

/** The authenticated principal of a credential route (the binding hook guarantees it). */
export function authOf(request: FastifyRequest): AuthContext {
  if (!request.auth) throw new CustosError('authentication_required');
  return request.auth;
}

/** The tenant of a tenant route (the binding hook guarantees it). */
export function tenantOf(request: FastifyRequest): BoundTenant {
  if (!request.tenant) throw new CustosError('internal_error');
  return request.tenant;
}
