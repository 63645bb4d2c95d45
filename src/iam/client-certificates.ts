import { X509Certificate, timingSafeEqual } from 'node:crypto';
import { TLSSocket, type DetailedPeerCertificate } from 'node:tls';
import type { Kysely, Selectable } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Source } from '../core/principal.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { ApiCredentialsTable } from './iam-tables.js';
import { authorize, type AuthContext } from './authorize.js';
import type { LoginService, SignInResult, TenantRef } from './login-service.js';
import { checkTargetWithinActor } from './user-service.js';

/** What an administrator sees of a registered client-certificate credential (never more than public data). */
export interface ApiCredentialView {
  id: string;
  kind: 'ca' | 'fingerprint';
  name: string;
  /** SHA-256 fingerprint (`AB:CD:…`): of the CA certificate, or the pinned one. */
  fingerprint: string;
  /** Subject of the CA certificate (`null` for a pinned fingerprint). */
  subject: string | null;
  /** End of the CA certificate's validity (`null` for a pinned fingerprint). */
  notAfter: string | null;
  createdAt: string;
}

export type RegisterApiCredentialInput = { kind: 'ca'; name: string; certificate: string } | { kind: 'fingerprint'; name: string; fingerprint: string };

/** Why a presented certificate was refused (recorded in the activity stream, never told to the client). */
export type CertificateRefusal = 'no_certificate' | 'certificate_not_yet_valid' | 'certificate_expired' | 'certificate_not_for_client_auth' | 'certificate_untrusted';

/** At most this many credentials per API user. */
export const MAX_CREDENTIALS_PER_USER = 20;
/** Intermediates between the client certificate and a registered CA (the client sends them in the handshake). */
export const MAX_INTERMEDIATES = 4;
/** Largest PEM accepted for a CA certificate. */
const MAX_PEM_CHARS = 16_384;
const PEM_BLOCK = /-----BEGIN CERTIFICATE-----/g;
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0';

/** Normalises a SHA-256 fingerprint given as hex, with or without colons or spaces, to Node's `AB:CD:…` form. */
export function normaliseFingerprint(text: unknown): string {
  const hex = typeof text === 'string' ? text.replace(/[:\s]/g, '') : '';
  if (!/^[0-9A-Fa-f]{64}$/.test(hex)) throw new CustosError('validation_failed', 'fingerprint must be a SHA-256 fingerprint: 64 hexadecimal digits, colons allowed');
  return hex.toUpperCase().match(/../g)!.join(':');
}

/**
 * The certificates the TLS peer presented: its own first, then the chain it
 * sent (as Node links it by issuer name; nothing here is trusted yet). Empty
 * when the connection is not TLS or no certificate was sent. Duplicates and
 * Node's self-reference at the root are dropped.
 */
export function peerCertificates(socket: unknown): X509Certificate[] {
  if (!(socket instanceof TLSSocket)) return [];
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let cert: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  for (let i = 0; cert?.raw !== undefined && i <= MAX_INTERMEDIATES + 1; i++) {
    const x = new X509Certificate(cert.raw);
    if (seen.has(x.fingerprint256)) break;
    seen.add(x.fingerprint256);
    out.push(x);
    cert = cert.issuerCertificate;
  }
  return out;
}

function within(cert: X509Certificate, now: number): boolean {
  return cert.validFromDate.getTime() <= now && now <= cert.validToDate.getTime();
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** `issuer` issued `child`: names (and key ids, when present) match, and the signature verifies under the issuer's key. */
function issuedBy(child: X509Certificate, issuer: X509Certificate): boolean {
  // `a.checkIssued(b)`: whether `a` was (by names and key ids) issued by `b`.
  return child.checkIssued(issuer) && child.verify(issuer.publicKey);
}

export interface TrustAnchors {
  /** Registered CA certificates, by credential id. */
  cas: { id: string; cert: X509Certificate }[];
  /** Pinned SHA-256 fingerprints (normalised), by credential id. */
  pins: { id: string; fingerprint: string }[];
}

/**
 * Decides whether a client certificate chain authenticates against one API
 * user's trust anchors at `now`. The client certificate must be within its
 * validity and, if it names extended key usages, allow client authentication;
 * then either its SHA-256 fingerprint equals a pinned one, or a path of real
 * signature checks leads from it, through up to {@link MAX_INTERMEDIATES}
 * CA certificates the client sent (each a CA, each within validity), to a
 * registered CA that is within its validity. Issuer names alone never link a
 * path. Not checked: revocation (CRL/OCSP), path-length and name constraints
 * — register the CA that issues the API clients, not a broad root.
 */
export function verifyClientChain(chain: readonly X509Certificate[], anchors: TrustAnchors, now: number): { ok: true; credentialId: string } | { ok: false; reason: CertificateRefusal } {
  const leaf = chain[0];
  if (!leaf) return { ok: false, reason: 'no_certificate' };
  if (now < leaf.validFromDate.getTime()) return { ok: false, reason: 'certificate_not_yet_valid' };
  if (now > leaf.validToDate.getTime()) return { ok: false, reason: 'certificate_expired' };
  const eku = leaf.keyUsage;
  if (eku && eku.length > 0 && !eku.includes(CLIENT_AUTH) && !eku.includes(ANY_EXTENDED_KEY_USAGE)) return { ok: false, reason: 'certificate_not_for_client_auth' };

  const fingerprint = leaf.fingerprint256;
  for (const pin of anchors.pins) if (sameText(fingerprint, pin.fingerprint)) return { ok: true, credentialId: pin.id };

  const cas = anchors.cas.filter((a) => a.cert.ca && within(a.cert, now));
  const intermediates = chain.slice(1, 1 + MAX_INTERMEDIATES).filter((c) => c.ca && within(c, now));
  const climb = (cert: X509Certificate, depth: number, used: ReadonlySet<X509Certificate>): string | null => {
    for (const a of cas) if (issuedBy(cert, a.cert)) return a.id;
    if (depth >= MAX_INTERMEDIATES) return null;
    for (const next of intermediates) {
      if (used.has(next) || !issuedBy(cert, next)) continue;
      const found = climb(next, depth + 1, new Set([...used, next]));
      if (found) return found;
    }
    return null;
  };
  const found = climb(leaf, 0, new Set([leaf]));
  return found ? { ok: true, credentialId: found } : { ok: false, reason: 'certificate_untrusted' };
}

function view(row: Selectable<ApiCredentialsTable>): ApiCredentialView {
  if (row.kind === 'fingerprint') return { id: row.id, kind: 'fingerprint', name: row.name, fingerprint: row.value, subject: null, notAfter: null, createdAt: rfc3339(row.created_at) };
  const cert = new X509Certificate(row.value);
  return { id: row.id, kind: 'ca', name: row.name, fingerprint: cert.fingerprint256, subject: cert.subject, notAfter: cert.validToDate.toISOString(), createdAt: rfc3339(row.created_at) };
}

function anchorsOf(rows: readonly Selectable<ApiCredentialsTable>[]): TrustAnchors {
  const anchors: TrustAnchors = { cas: [], pins: [] };
  for (const r of rows) {
    if (r.kind === 'fingerprint') anchors.pins.push({ id: r.id, fingerprint: r.value });
    else anchors.cas.push({ id: r.id, cert: new X509Certificate(r.value) });
  }
  return anchors;
}

/** Copy-then-check of a CA certificate in PEM: exactly one certificate, a CA, not expired. Returns it re-encoded. */
function checkCaCertificate(pem: unknown, now: number): X509Certificate {
  if (typeof pem !== 'string' || pem.length > MAX_PEM_CHARS) throw new CustosError('validation_failed', `certificate must be a PEM certificate of at most ${MAX_PEM_CHARS} characters`);
  if ((pem.match(PEM_BLOCK) ?? []).length !== 1) throw new CustosError('validation_failed', 'certificate must hold exactly one PEM certificate (register each CA on its own)');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw new CustosError('validation_failed', 'certificate is not a readable PEM X.509 certificate');
  }
  if (!cert.ca) throw new CustosError('validation_failed', 'certificate is not a CA certificate (basicConstraints CA:TRUE); pin a client certificate by fingerprint instead');
  if (cert.validToDate.getTime() < now) throw new CustosError('validation_failed', 'the CA certificate has expired');
  return cert;
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.trim().length === 0 || name.length > 100) throw new CustosError('validation_failed', 'name must be 1-100 characters');
  return name.trim();
}

/**
 * Client certificates of API users: administrators (`users.manage`) register,
 * per API user, the CAs that issue its certificates or the SHA-256
 * fingerprints of certificates pinned one by one; `POST /auth/token` without a
 * password then issues a token to the TLS peer whose certificate verifies
 * against that user's credentials ({@link verifyClientChain}). Every
 * registration, removal, issued token and refusal is recorded. Removing a
 * credential ends the user's tokens obtained by certificate. Registering or
 * removing a credential of an API user whose roles give a permission the
 * administrator lacks is refused (403 `forbidden`): a registered certificate
 * signs in as that user, with all its permissions.
 *
 * Lockout: certificate failures do not count toward the password lockout (no
 * password was guessed), and a certificate sign-in does not reset the count
 * the password path built up. A locked account is refused like on every other
 * pathway (the account state is one), as is a suspended one; suspension also
 * ends every token at once.
 */
export class ClientCertificates {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #login: LoginService;

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; login: LoginService }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#login = deps.login;
  }

  /** The API user `userId`, within the actor's organizational reach; `not_found` otherwise, `conflict` for a console user. */
  async #apiUser(db: Kysely<TenantDB>, auth: AuthContext, userId: string): Promise<{ id: string; username: string }> {
    const u = await db.selectFrom('users').select(['id', 'username', 'kind']).where('id', '=', userId).executeTakeFirst();
    if (!u) throw new CustosError('not_found');
    if (auth.reachableOrgs !== null) {
      const orgs = await db.selectFrom('user_orgs').select('org_id').where('user_id', '=', userId).execute();
      if (orgs.length > 0 && !orgs.some((o) => auth.reachableOrgs!.has(o.org_id))) throw new CustosError('not_found');
    }
    if (u.kind !== 'api') throw new CustosError('conflict', 'client certificates are only for API users');
    return u;
  }

  async list(auth: AuthContext, tenantId: string, userId: string): Promise<ApiCredentialView[]> {
    authorize(auth, 'users.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      await this.#apiUser(db, auth, userId);
      const rows = await db.selectFrom('api_credentials').selectAll().where('user_id', '=', userId).orderBy('created_at').orderBy('id').execute();
      return rows.map(view);
    });
  }

  async register(auth: AuthContext, tenantId: string, userId: string, input: RegisterApiCredentialInput): Promise<ApiCredentialView> {
    authorize(auth, 'users.manage');
    const now = this.#clock.now();
    const name = checkName(input.name);
    let value: string;
    if (input.kind === 'ca') value = checkCaCertificate(input.certificate, now).toString();
    else if (input.kind === 'fingerprint') value = normaliseFingerprint(input.fingerprint);
    else throw new CustosError('validation_failed', 'kind must be ca or fingerprint');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const user = await this.#apiUser(db, auth, userId);
      // Whoever holds the certificate signs in as the user: no certificates for users above the actor.
      await checkTargetWithinActor(db, auth, userId, 'register a client certificate for');
      const existing = await db.selectFrom('api_credentials').select(['kind', 'value']).where('user_id', '=', userId).execute();
      if (existing.length >= MAX_CREDENTIALS_PER_USER) throw new CustosError('conflict', `an API user has at most ${MAX_CREDENTIALS_PER_USER} client-certificate credentials`);
      if (existing.some((e) => e.kind === input.kind && e.value === value)) throw new CustosError('conflict', 'this credential is already registered for the user');
      const row = { id: newId(now), user_id: userId, kind: input.kind, name, value, created_at: now };
      await db.insertInto('api_credentials').values(row).execute();
      const v = view(row);
      // Detail keys avoid words such as "credential" and "token", which the stream's redaction treats as secrets.
      await this.#audit.append(db, tenantId, {
        type: 'iam.user.credential.add',
        outcome: 'success',
        actor: auth,
        resource: { type: 'user', id: user.id, name: user.username },
        details: { anchorId: v.id, kind: v.kind, name: v.name, fingerprint: v.fingerprint, subject: v.subject, notAfter: v.notAfter },
      });
      return v;
    });
  }

  /** Removes a credential and ends the user's tokens obtained by certificate (they may have come from it). */
  async remove(auth: AuthContext, tenantId: string, userId: string, credentialId: string): Promise<{ endedSessions: number }> {
    authorize(auth, 'users.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const user = await this.#apiUser(db, auth, userId);
      await checkTargetWithinActor(db, auth, userId, 'remove a client certificate of');
      const row = await db.selectFrom('api_credentials').selectAll().where('id', '=', credentialId).where('user_id', '=', userId).executeTakeFirst();
      if (!row) throw new CustosError('not_found');
      await db.deleteFrom('api_credentials').where('id', '=', credentialId).execute();
      const ended = await db.deleteFrom('sessions').where('user_id', '=', userId).where('auth_method', '=', 'certificate').executeTakeFirst();
      const v = view(row);
      const endedSessions = Number(ended.numDeletedRows);
      await this.#audit.append(db, tenantId, {
        type: 'iam.user.credential.remove',
        outcome: 'success',
        actor: auth,
        resource: { type: 'user', id: user.id, name: user.username },
        details: { anchorId: v.id, kind: v.kind, name: v.name, fingerprint: v.fingerprint, endedSessions },
      });
      return { endedSessions };
    });
  }

  /**
   * `POST /auth/token` without a password: a bearer token for the API user
   * `username` if the TLS client certificate `chain` (leaf first, as
   * presented) verifies against that user's credentials. Unknown user,
   * console user, suspended user, no certificate and every certificate
   * failure answer the same `invalid_credentials`; the activity stream gets
   * the real reason.
   */
  async issueToken(tenant: TenantRef, input: { username: string; chain: readonly X509Certificate[]; source?: Source }): Promise<SignInResult> {
    const leaf = input.chain[0];
    const presented = leaf ? { fingerprint: leaf.fingerprint256, subject: leaf.subject.slice(0, 300), issuer: leaf.issuer.slice(0, 300) } : null;
    const outcome = await this.#storage.tenant(tenant.id).transaction(async (db) => {
      const user = await db.selectFrom('users').selectAll().where('username', '=', input.username).executeTakeFirst();
      // The same queries whoever is named (no user enumeration by timing): an id no row has for anyone but an API user.
      const rows = await db.selectFrom('api_credentials').selectAll().where('user_id', '=', user?.kind === 'api' ? user.id : '').execute();
      const now = this.#clock.now();
      const verdict = verifyClientChain(input.chain, anchorsOf(rows), now);
      let reason: string | null = null;
      if (!user) reason = 'unknown_user';
      else if (user.kind !== 'api') reason = 'wrong_user_kind';
      else if (user.status !== 'active') reason = 'suspended';
      else if (user.locked_until !== null && user.locked_until > now) reason = 'locked';
      else if (!verdict.ok) reason = rows.length === 0 && verdict.reason === 'certificate_untrusted' ? 'no_registered_credentials' : verdict.reason;
      if (reason !== null || !user || !verdict.ok) {
        await this.#audit.append(db, tenant.id, {
          type: 'auth.token.failure',
          outcome: 'failure',
          code: 'invalid_credentials',
          actor: { principal: { type: 'api-user', id: user?.id ?? 'unknown', name: input.username.slice(0, 200) }, source: input.source },
          resource: user ? { type: 'user', id: user.id, name: user.username } : undefined,
          details: { method: 'certificate', reason, trustAnchors: rows.length, certificate: presented },
        });
        return { ok: false as const };
      }
      // Token issuance leaves the password failure count alone (a certificate proves nothing about the password).
      return { ok: true as const, result: await this.#login.issueTokenForCertificate(db, tenant, user, input.source) };
    });
    if (!outcome.ok) throw new CustosError('invalid_credentials');
    return outcome.result;
  }
}
