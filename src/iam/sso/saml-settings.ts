import { X509Certificate, createHash } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { AuditService } from '../../audit/audit-service.js';
import type { Clock } from '../../core/clock.js';
import { rfc3339 } from '../../core/clock.js';
import { CustosError } from '../../core/errors.js';
import type { TenantDB } from '../../storage/schema.js';
import type { Storage } from '../../storage/storage.js';
import { authorize, type AuthContext } from '../authorize.js';
import { ALL_PERMISSIONS } from '../permissions.js';

/** A tenant's SAML 2.0 identity provider, as an Account Administrator configures it. */
export interface SamlSettings {
  /** Whether console users may sign in through the IdP (default off). */
  enabled: boolean;
  /** The IdP's entity id: the Issuer its responses must carry. */
  idpEntityId: string;
  /** The IdP's single sign-on URL (HTTP-Redirect binding); https only. */
  idpSsoUrl: string;
  /** PEM certificates whose keys may sign the IdP's responses (1–5, for rollover). */
  idpCertificates: string[];
  /**
   * Whether console users may still sign in with a password while SAML is on
   * (default true). API users keep passwords and client certificates either way.
   */
  passwordLogin: boolean;
}

export const DEFAULT_SAML_SETTINGS: Readonly<SamlSettings> = Object.freeze({ enabled: false, idpEntityId: '', idpSsoUrl: '', idpCertificates: [], passwordLogin: true });

const KEY = 'saml';
const MAX_CERTIFICATES = 5;
const PEM = /^-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?$/;

function fail(why: string): never {
  throw new CustosError('validation_failed', why);
}

/** The certificate of one PEM block, if it is exactly one well-formed certificate. */
function parseCertificate(pem: string): X509Certificate | undefined {
  if (!PEM.test(pem.trim() + '\n')) return undefined;
  try {
    return new X509Certificate(pem);
  } catch {
    return undefined;
  }
}

/**
 * Checks a complete SAML settings document (copy-then-check: unknown members
 * are refused): the entity id, an https SSO URL without credentials, and 1–5
 * PEM certificates each within its validity at `now`.
 */
export function checkSamlSettings(input: unknown, now: number): SamlSettings {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) fail('settings must be an object');
  const o = { ...(input as Record<string, unknown>) };
  for (const k of Object.keys(o)) if (!['enabled', 'idpEntityId', 'idpSsoUrl', 'idpCertificates', 'passwordLogin'].includes(k)) fail(`unknown member ${k}`);
  if (typeof o.enabled !== 'boolean') fail('enabled must be true or false');
  const passwordLogin = o.passwordLogin ?? true;
  if (typeof passwordLogin !== 'boolean') fail('passwordLogin must be true or false');
  if (typeof o.idpEntityId !== 'string' || o.idpEntityId.trim().length === 0 || o.idpEntityId.length > 1024) fail('idpEntityId must be 1 to 1024 characters');
  if (typeof o.idpSsoUrl !== 'string' || o.idpSsoUrl.length > 2048) fail('idpSsoUrl must be an https URL');
  let url: URL;
  try {
    url = new URL(o.idpSsoUrl);
  } catch {
    fail('idpSsoUrl must be an https URL');
  }
  if (url.protocol !== 'https:' || url.username !== '' || url.password !== '' || url.hash !== '') fail('idpSsoUrl must be an https URL without credentials or fragment');
  const certs = o.idpCertificates;
  if (!Array.isArray(certs) || certs.length < 1 || certs.length > MAX_CERTIFICATES) fail(`idpCertificates must hold 1 to ${MAX_CERTIFICATES} PEM certificates`);
  const pems = certs.map((c, i) => {
    if (typeof c !== 'string' || c.length > 16384) fail(`idpCertificates[${i}] is not a PEM certificate`);
    const x = parseCertificate(c);
    if (!x) fail(`idpCertificates[${i}] is not a PEM certificate`);
    if (Date.parse(x.validFrom) > now || Date.parse(x.validTo) <= now) fail(`idpCertificates[${i}] is not valid now (valid from ${rfc3339(Date.parse(x.validFrom))} to ${rfc3339(Date.parse(x.validTo))})`);
    return x.toString().trim();
  });
  if (o.enabled === false && passwordLogin === false) fail('passwordLogin can be false only while SAML is enabled');
  return { enabled: o.enabled, idpEntityId: o.idpEntityId.trim(), idpSsoUrl: url.toString(), idpCertificates: pems, passwordLogin };
}

/** The certificates (PEM) within their validity at `now`: a certificate that expired after it was saved no longer vouches for a response. */
export function certificatesValidAt(pems: readonly string[], now: number): string[] {
  return pems.filter((p) => {
    const x = parseCertificate(p);
    return x !== undefined && Date.parse(x.validFrom) <= now && Date.parse(x.validTo) > now;
  });
}

/** The settings as the activity stream records them: certificates by SHA-256 fingerprint. */
function forStream(s: SamlSettings): Record<string, unknown> {
  return { ...s, idpCertificates: s.idpCertificates.map((p) => createHash('sha256').update(new X509Certificate(p).raw).digest('hex')) };
}

/** Reads a tenant's SAML settings inside the caller's transaction (defaults when never set). */
export async function readSamlSettings(db: Kysely<TenantDB>): Promise<SamlSettings> {
  const row = await db.selectFrom('tenant_settings').select('value').where('key', '=', KEY).executeTakeFirst();
  return row ? { ...DEFAULT_SAML_SETTINGS, ...(JSON.parse(row.value) as Partial<SamlSettings>) } : DEFAULT_SAML_SETTINGS;
}

/** What the IdP must be told about this tenant's service provider. */
export interface SamlServiceProvider {
  /** This tenant's SP entity id: the Audience its assertions must name. */
  entityId: string;
  /** The assertion consumer service (HTTP-POST binding): the Destination and Recipient of responses. */
  acsUrl: string;
}

/** The assertion consumer service's path, shared by every tenant (the tenant travels in RelayState). */
export const SAML_ACS_PATH = '/api/v1/auth/sso/saml/acs';

export function serviceProvider(publicUrl: string, tenantName: string): SamlServiceProvider {
  const base = publicUrl.replace(/\/+$/, '');
  return { entityId: `${base}/saml/sp/${tenantName}`, acsUrl: `${base}${SAML_ACS_PATH}` };
}

/**
 * Account administration of a tenant's SAML settings (`account.admin`):
 * read them (with what the IdP needs to know of this service provider),
 * replace the whole document, validated and recorded as
 * `iam.settings.saml.update` with before and after.
 */
export class SamlSettingsService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #publicUrl: string;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; publicUrl: string }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#publicUrl = deps.publicUrl;
  }

  /** The settings as of now, for sign-in (no cache: sign-ins through the IdP are rare next to requests). */
  async current(tenantId: string): Promise<SamlSettings> {
    return this.#storage.tenant(tenantId).read((db) => readSamlSettings(db));
  }

  async get(auth: AuthContext, tenant: { id: string; name: string }): Promise<SamlSettings & { serviceProvider: SamlServiceProvider }> {
    authorize(auth, 'account.admin');
    const s = await this.current(tenant.id);
    return { ...s, serviceProvider: serviceProvider(this.#publicUrl, tenant.name) };
  }

  async put(auth: AuthContext, tenant: { id: string; name: string }, input: unknown): Promise<SamlSettings & { serviceProvider: SamlServiceProvider }> {
    authorize(auth, 'account.admin');
    // The IdP configured here can sign in as any console user of the tenant: only an administrator who holds every
    // permission may choose it (as nobody may act on a user holding a permission they lack).
    const missing = ALL_PERMISSIONS.filter((p) => !auth.permissions.has(p));
    if (missing.length > 0) throw new CustosError('forbidden', `single sign-on can sign in as any console user: configuring it needs every permission (missing: ${missing.join(', ')})`);
    const after = checkSamlSettings(input, this.#clock.now());
    await this.#storage.tenant(tenant.id).transaction(async (db) => {
      const before = await readSamlSettings(db);
      const now = this.#clock.now();
      await db
        .insertInto('tenant_settings')
        .values({ key: KEY, value: JSON.stringify(after), updated_at: now })
        .onConflict((oc) => oc.column('key').doUpdateSet({ value: JSON.stringify(after), updated_at: now }))
        .execute();
      await this.#audit.append(db, tenant.id, {
        type: 'iam.settings.saml.update',
        outcome: 'success',
        actor: auth,
        resource: { type: 'saml-settings', id: tenant.id },
        change: { before: forStream(before), after: forStream(after) },
      });
    });
    return { ...after, serviceProvider: serviceProvider(this.#publicUrl, tenant.name) };
  }
}
