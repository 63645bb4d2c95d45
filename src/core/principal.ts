import { hostname, userInfo } from 'node:os';

/** Who acts: a tenant's console user, a tenant's API user, a provider operator, or Custos itself. */
export type PrincipalType = 'user' | 'api-user' | 'operator' | 'system';

export interface Principal {
  readonly type: PrincipalType;
  readonly id: string;
  readonly name?: string;
}

/** Where a request came from, as far as the server can tell. */
export interface Source {
  readonly ip?: string;
  readonly userAgent?: string;
  readonly sessionId?: string;
}

/** The HTTP request an action belongs to. */
export interface RequestRef {
  readonly id: string;
  readonly method: string;
  readonly path: string;
}

/** Everything about the acting party that the activity stream records. Passed into every service operation. */
export interface Actor {
  readonly principal: Principal;
  readonly source?: Source;
  readonly request?: RequestRef;
}

/** Custos acting on its own (maintenance, scheduled rotation, retention). */
export const SYSTEM_ACTOR: Actor = Object.freeze({ principal: Object.freeze({ type: 'system', id: 'custos', name: 'Custos' }) });

/** The provider operator running a CLI command on this machine. */
export function operatorActor(): Actor {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (containers): keep "unknown"
  }
  return { principal: { type: 'operator', id: `${user}@${hostname()}`, name: user }, source: { userAgent: 'custos-cli' } };
}
