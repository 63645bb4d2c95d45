/** Table types of SAML single sign-on, added to the tenant schema. */

/**
 * An AuthnRequest this tenant sent and has not yet seen answered: the
 * response's `InResponseTo` must name one, once. Found by the SHA-256 of the
 * random part of the RelayState that travelled with the request.
 */
export interface SamlRequestsTable {
  relay_hash: Buffer;
  /** The AuthnRequest's ID (what the response's InResponseTo must be). */
  request_id: string;
  created_at: number;
  expires_at: number;
}

declare module '../../storage/schema.js' {
  interface TenantDB {
    saml_requests: SamlRequestsTable;
  }
}
