import { CustosError } from './errors.js';

/** DNS-label-like: lower-case letters, digits and inner hyphens, 3–63 characters. */
const TENANT_NAME = /^[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]$/;

export const EDITIONS = ['standard', 'enterprise'] as const;
export type Edition = (typeof EDITIONS)[number];

/** Checks a tenant name and returns it; throws `invalid_tenant_name` otherwise. */
export function checkTenantName(name: unknown): string {
  if (typeof name !== 'string' || !TENANT_NAME.test(name)) {
    throw new CustosError(
      'invalid_tenant_name',
      'tenant names are 3-63 characters of lower-case letters, digits and hyphens, starting and ending with a letter or digit',
    );
  }
  return name;
}

export function checkEdition(edition: unknown): Edition {
  if (typeof edition !== 'string' || !(EDITIONS as readonly string[]).includes(edition)) {
    throw new CustosError('invalid_edition', `edition must be one of ${EDITIONS.join(', ')}`);
  }
  return edition as Edition;
}

/** A deliberately plain email check: one @, no spaces, a dot in the domain, at most 254 characters. */
const EMAIL = /^[^\s@]{1,64}@[^\s@]+\.[^\s@]+$/;

export function checkEmail(email: unknown): string {
  if (typeof email !== 'string' || email.length > 254 || !EMAIL.test(email)) {
    throw new CustosError('validation_failed', 'a valid email address is required');
  }
  return email;
}
