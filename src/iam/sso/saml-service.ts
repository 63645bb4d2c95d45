import { randomBytes } from 'node:crypto';
import { SAML, ValidateInResponseTo, type CacheProvider, type Profile } from '@node-saml/node-saml';
// node-saml's own XML parser (xmldom) and XPath helper: node-saml checks neither Destination nor Recipient.
import { parseDomFromString, xpath } from '@node-saml/node-saml/lib/xml.js';
import type { AuditService } from '../../audit/audit-service.js';
import type { Clock } from '../../core/clock.js';
import { CustosError } from '../../core/errors.js';
import { randomToken } from '../../core/ids.js';
import type { Source } from '../../core/principal.js';
import type { Storage } from '../../storage/storage.js';
import { hashSecret, secretMatches } from '../credentials.js';
import type { LoginService, SignInResult, TenantRef } from '../login-service.js';
import { certificatesValidAt, serviceProvider, type SamlSettings, type SamlSettingsService } from './saml-settings.js';
import './saml-tables.js';

/** An AuthnRequest must be answered within 10 minutes. */
export const SAML_REQUEST_MS = 10 * 60_000;
/** Clock skew accepted on NotBefore / NotOnOrAfter. */
export const SAML_CLOCK_SKEW_MS = 60_000;
const EMAIL_FORMAT = 'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress';
// Printable ASCII only: the user is found by a case-insensitive match, and SQLite's lower() folds ASCII alone (JavaScript
// folds more: the Kelvin sign becomes k), so a non-ASCII NameID could name another user than the one it spells.
const EMAIL = /^[!-?A-~]{1,64}@[!-?A-~]{1,255}$/;
/** The cookie that ties a SAML sign-in to the browser that started it (see {@link SamlService.consume}). */
export const SAML_STATE_COOKIE = 'custos_saml_state';

/**
 * SAML 2.0 single sign-on, service-provider side, one IdP per tenant.
 * `startLogin` sends the browser to the IdP with an AuthnRequest (HTTP-Redirect)
 * and remembers its ID in the tenant's store (10 minutes), under the hash of
 * the random part of the RelayState `<tenant>.<random>` that travels with it.
 * `consume` takes the IdP's answer (HTTP-POST): the RelayState's request is
 * used up first (deleted, whatever the outcome, so a response is accepted at
 * most once, on any node); node-saml then checks the XML signature against
 * the tenant's IdP certificates (the assertion must be signed), the Audience
 * (this tenant's SP entity id), the validity window and that InResponseTo is
 * that request's ID; this service checks the assertion's Issuer, Recipient
 * and InResponseTo and the Response's Destination ({@link checkAssertion}),
 * and that the NameID is an email address; the login service maps it to a
 * console user and issues the session.
 */
export class SamlService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #login: LoginService;
  readonly #settings: SamlSettingsService;
  readonly #publicUrl: string;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; login: LoginService; settings: SamlSettingsService; publicUrl: string }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#login = deps.login;
    this.#settings = deps.settings;
    this.#publicUrl = deps.publicUrl;
  }

  #saml(tenant: TenantRef, settings: SamlSettings, opts: { requestId?: string; cache: CacheProvider }): SAML {
    const sp = serviceProvider(this.#publicUrl, tenant.name);
    return new SAML({
      callbackUrl: sp.acsUrl,
      entryPoint: settings.idpSsoUrl,
      issuer: sp.entityId,
      audience: sp.entityId,
      idpIssuer: settings.idpEntityId,
      idpCert: settings.idpCertificates,
      identifierFormat: EMAIL_FORMAT,
      wantAssertionsSigned: true,
      wantAuthnResponseSigned: false,
      acceptedClockSkewMs: SAML_CLOCK_SKEW_MS,
      validateInResponseTo: ValidateInResponseTo.always,
      requestIdExpirationPeriodMs: SAML_REQUEST_MS,
      cacheProvider: opts.cache,
      disableRequestedAuthnContext: true,
      ...(opts.requestId ? { generateUniqueId: () => opts.requestId! } : {}),
    });
  }

  /**
   * The IdP URL (with SAMLRequest and RelayState) to send the browser to, and
   * the secret of its RelayState, which the caller sets as the browser's
   * {@link SAML_STATE_COOKIE}; `not_found` when SAML is off.
   */
  async startLogin(tenant: TenantRef): Promise<{ url: string; binding: string }> {
    const settings = await this.#settings.current(tenant.id);
    if (!settings.enabled) throw new CustosError('not_found', 'SAML sign-in is not enabled for this tenant');
    const now = this.#clock.now();
    const requestId = `_${randomBytes(20).toString('hex')}`;
    // 96 bits: a RelayState must fit in 80 bytes with a tenant name of up to 63 characters.
    const secret = randomToken(12);
    const noCache: CacheProvider = { saveAsync: async () => null, getAsync: async () => null, removeAsync: async () => null };
    const url = await this.#saml(tenant, settings, { requestId, cache: noCache }).getAuthorizeUrlAsync(`${tenant.name}.${secret}`, undefined, {});
    await this.#storage.tenant(tenant.id).transaction(async (db) => {
      await db.deleteFrom('saml_requests').where('expires_at', '<=', now).execute();
      await db.insertInto('saml_requests').values({ relay_hash: hashSecret(secret), request_id: requestId, created_at: now, expires_at: now + SAML_REQUEST_MS }).execute();
    });
    return { url, binding: secret };
  }

  async #refuse(tenant: TenantRef, source: Source | undefined, reason: string, detail?: string): Promise<never> {
    await this.#audit.record(tenant.id, {
      type: 'auth.login.failure',
      outcome: 'failure',
      code: 'invalid_credentials',
      actor: { principal: { type: 'user', id: 'unknown' }, source },
      details: { reason, method: 'saml', ...(detail ? { detail: detail.slice(0, 200) } : {}) },
    });
    throw new CustosError('invalid_credentials');
  }

  /**
   * The assertion consumer service: validates the IdP's response and signs its
   * user in. `binding` is the browser's {@link SAML_STATE_COOKIE}: it must be
   * the RelayState's secret, so the response is taken only from the browser
   * that started the sign-in (someone who started one and kept the IdP's
   * answer cannot make another browser post it and sign that browser in as
   * themselves).
   */
  async consume(tenant: TenantRef, input: { samlResponse: string; relayState: string; binding: string | undefined }, source: Source | undefined): Promise<SignInResult> {
    const settings = await this.#settings.current(tenant.id);
    if (!settings.enabled) return this.#refuse(tenant, source, 'saml_disabled');
    const dot = input.relayState.lastIndexOf('.');
    if (dot < 0 || input.relayState.slice(0, dot) !== tenant.name) return this.#refuse(tenant, source, 'unknown_request');
    const secret = input.relayState.slice(dot + 1);
    if (input.binding === undefined || !secretMatches(input.binding, hashSecret(secret))) return this.#refuse(tenant, source, 'other_browser');
    const now = this.#clock.now();
    const certificates = certificatesValidAt(settings.idpCertificates, now);
    if (certificates.length === 0) return this.#refuse(tenant, source, 'no_valid_certificate');
    // Used up now, whatever follows: two submissions of one response cannot both get this far.
    const request = await this.#storage
      .tenant(tenant.id)
      .transaction((db) => db.deleteFrom('saml_requests').where('relay_hash', '=', hashSecret(secret)).returningAll().executeTakeFirst());
    if (!request || request.expires_at <= now) return this.#refuse(tenant, source, 'unknown_request');

    const cache: CacheProvider = {
      saveAsync: async () => null,
      // Only the request this RelayState started is outstanding for this response.
      getAsync: async (key) => (key === request.request_id ? new Date(request.created_at).toISOString() : null),
      removeAsync: async () => null,
    };
    let profile: Profile | null | undefined;
    try {
      profile = (await this.#saml(tenant, { ...settings, idpCertificates: certificates }, { cache }).validatePostResponseAsync({ SAMLResponse: input.samlResponse })).profile;
    } catch (err) {
      return this.#refuse(tenant, source, 'invalid_response', err instanceof Error ? err.message : undefined);
    }
    if (!profile) return this.#refuse(tenant, source, 'invalid_response', 'no assertion');
    const sp = serviceProvider(this.#publicUrl, tenant.name);
    const problem = await checkAssertion(profile, { issuer: settings.idpEntityId, acsUrl: sp.acsUrl, requestId: request.request_id });
    if (problem) return this.#refuse(tenant, source, 'invalid_response', problem);
    if (profile.nameIDFormat !== EMAIL_FORMAT || typeof profile.nameID !== 'string' || !EMAIL.test(profile.nameID)) return this.#refuse(tenant, source, 'name_id_not_email');
    return this.#login.signInWithSaml(tenant, { email: profile.nameID, source });
  }
}

type XmlJs = Record<string, unknown>;

/** The `name` children of a node of an xml2js document (node-saml's parse: arrays of children, attributes under `$`); none when absent. */
function child(node: unknown, name: string): XmlJs[] {
  const v = node !== null && typeof node === 'object' ? (node as XmlJs)[name] : undefined;
  return Array.isArray(v) ? (v as XmlJs[]) : [];
}

function attribute(node: XmlJs | undefined, name: string): string | undefined {
  const attrs = node?.$;
  const v = attrs !== null && typeof attrs === 'object' ? (attrs as XmlJs)[name] : undefined;
  return typeof v === 'string' ? v : undefined;
}

/**
 * Checks what node-saml 5 leaves to the caller, on the documents it parsed:
 * the signed assertion's Issuer must be the IdP's entity id; it must hold one
 * bearer SubjectConfirmation whose Recipient is the ACS URL and whose
 * InResponseTo is the request's ID (so the signed part, not only the
 * Response around it, answers this request); and the Response's Destination
 * must be the ACS URL. Returns what is wrong, or null.
 */
async function checkAssertion(profile: Profile, expected: { issuer: string; acsUrl: string; requestId: string }): Promise<string | null> {
  if (profile.issuer !== expected.issuer) return 'issuer mismatch';
  const assertion = profile.getAssertion?.()?.Assertion;
  const subjects = child(assertion, 'Subject');
  const confirmations = subjects.length === 1 ? child(subjects[0], 'SubjectConfirmation') : [];
  if (confirmations.length !== 1 || attribute(confirmations[0], 'Method') !== 'urn:oasis:names:tc:SAML:2.0:cm:bearer') return 'one bearer SubjectConfirmation expected';
  const data = child(confirmations[0], 'SubjectConfirmationData');
  if (data.length !== 1) return 'no SubjectConfirmationData';
  if (attribute(data[0], 'Recipient') !== expected.acsUrl) return 'Recipient is not the ACS URL';
  if (attribute(data[0], 'InResponseTo') !== expected.requestId) return 'assertion InResponseTo is not the request';
  const xml = profile.getSamlResponseXml?.();
  if (typeof xml !== 'string') return 'no response';
  // node-saml types these with the DOM library's Document and Attr, which this project does not load.
  const parse = parseDomFromString as (text: string) => Promise<unknown>;
  const select = xpath.selectAttributes as (node: unknown, path: string) => Array<{ nodeValue: string | null }>;
  const destination = select(await parse(xml), "/*[local-name()='Response']/@Destination");
  if (destination.length !== 1 || destination[0]!.nodeValue !== expected.acsUrl) return 'Destination is not the ACS URL';
  return null;
}
