import type { FastifySchema } from 'fastify';
import { Type } from 'typebox';
import type { Permission } from '../../iam/permissions.js';
import type { TenantBindingRule } from '../plugins/tenant-binding.js';

/** A lower-case ULID, as `newId()` makes them. */
export const Id = Type.String({ pattern: '^[0-9a-hjkmnp-tv-z]{26}$', description: 'Object id (lower-case ULID)' });

export const IdParams = Type.Object({ id: Id }, { additionalProperties: false });

/** Error answers every administration route may give. */
export const Problems = {
  400: { $ref: 'Problem#' },
  401: { $ref: 'Problem#' },
  403: { $ref: 'Problem#' },
  404: { $ref: 'Problem#' },
  409: { $ref: 'Problem#' },
  423: { $ref: 'Problem#' },
} as const;

export const NoContent = Type.Null({ description: 'No content' });

/** OpenAPI security requirement: the console session cookie (with X-CSRF-Token on changes) or an API bearer token. */
const SESSION_OR_BEARER: ReadonlyArray<Record<string, readonly string[]>> = [{ session: [] }, { bearer: [] }];

export interface AdminRouteOptions {
  config: { tenant: TenantBindingRule; permission: Permission };
  schema: FastifySchema & { security: typeof SESSION_OR_BEARER; 'x-custos-permission': Permission };
}

/**
 * Options of a tenant administration route: bound to the tenant of the
 * caller's credential, guarded by `permission` (checked by the binding hook
 * before the handler, and again by the service), and documented in the
 * OpenAPI operation as `x-custos-permission` so the document says who may call it.
 */
export function adminRoute(permission: Permission, schema: FastifySchema): AdminRouteOptions {
  return {
    config: { tenant: { from: 'credential' }, permission },
    schema: { ...schema, description: `${schema.description ? `${schema.description}\n\n` : ''}Requires permission \`${permission}\`.`, security: SESSION_OR_BEARER, 'x-custos-permission': permission },
  };
}
