import { CustosError } from '../core/errors.js';
import type { Actor } from '../core/principal.js';
import type { Permission } from './permissions.js';

/**
 * An authenticated principal of a tenant, as every service operation sees
 * it: who (for the activity stream), its permissions (the union of its
 * roles'), and — when the tenant enforces organizational access control — the
 * organizations whose objects it may reach (its own and their descendants).
 */
export interface AuthContext extends Actor {
  readonly tenantId: string;
  readonly userId: string;
  readonly username: string;
  readonly kind: 'console' | 'api';
  readonly roles: readonly string[];
  readonly permissions: ReadonlySet<Permission>;
  /** Organizations reachable (own + descendants); `null` when the tenant does not enforce organizational access. */
  readonly reachableOrgs: ReadonlySet<string> | null;
  /** The session or token id hash, to end it. */
  readonly credentialPublicId: string;
  readonly authMethod: 'password' | 'certificate' | 'saml';
  readonly via: 'session' | 'token';
}

/** The organization an object is assigned to (`null`: unassigned, reachable by everyone with the permission). */
export interface Scoped {
  readonly orgId: string | null;
}

/**
 * The one authorization decision. Deny by default: the principal needs the
 * permission, and, for an object under organizational access control, must
 * reach the object's organization. Throws `forbidden` when denied, or
 * `not_found` when `hide` is set (objects the principal may not see are not
 * disclosed to exist).
 */
export function authorize(actor: AuthContext, permission: Permission, resource?: Scoped, opts: { hide?: boolean } = {}): void {
  if (!can(actor, permission, resource)) throw new CustosError(opts.hide && actor.permissions.has(permission) ? 'not_found' : 'forbidden');
}

export function can(actor: AuthContext, permission: Permission, resource?: Scoped): boolean {
  if (!actor.permissions.has(permission)) return false;
  if (resource && resource.orgId !== null && actor.reachableOrgs !== null && !actor.reachableOrgs.has(resource.orgId)) return false;
  return true;
}

/** Whether organizational scope limits what this principal sees (for list queries). */
export function orgFilter(actor: AuthContext): ReadonlySet<string> | null {
  return actor.reachableOrgs;
}
