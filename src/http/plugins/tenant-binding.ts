import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CustosError } from '../../core/errors.js';
import type { Clock } from '../../core/clock.js';
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
  }
  interface FastifyContextConfig {
    tenant?: TenantBindingRule;
  }
}

/** Control-plane answers are cached this long; a suspension made by another process takes effect within it. */
const CACHE_TTL_MS = 1000;

/**
 * Binds requests to tenants. Registered once, inside the encapsulated scope
 * that holds every tenant route: each route there must declare its binding
 * rule (checked when the route is added), and the hook resolves it before the
 * handler runs. An unknown tenant is 404 `tenant_not_found`, a suspended one
 * 403 `tenant_suspended`.
 */
export function registerTenantBinding(app: FastifyInstance, deps: { tenants: TenantService; storage: Storage; clock: Clock }): void {
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

  app.decorateRequest('tenant', null);
  app.decorateRequest('credentialTenantId', null);

  app.addHook('onRoute', (route) => {
    if (!route.config?.tenant) {
      throw new TypeError(`tenant route ${route.method.toString()} ${route.url} declares no tenant binding rule`);
    }
  });

  app.addHook('preHandler', async (request: FastifyRequest) => {
    const rule = request.routeOptions.config.tenant;
    if (!rule) throw new CustosError('internal_error');
    let row: TenantsTable | undefined;
    if (rule.from === 'credential') {
      if (request.credentialTenantId === null) throw new CustosError('authentication_required');
      row = await lookup(request.credentialTenantId, 'id');
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
  });
}
