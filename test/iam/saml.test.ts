import { generate } from 'selfsigned';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { SignedXml } from 'xml-crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashSecret } from '../../src/iam/credentials.js';
import { serviceProvider } from '../../src/iam/sso/saml-settings.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, cookieValue, createUser, signIn, strongPassword, tenantWithAdmin, totpNow, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

const EMAIL_FORMAT = 'urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress';
const IDP = 'https://idp.example/saml';
const MIN = 60_000;

interface KeyPair {
  cert: string;
  key: string;
}

async function idpKeyPair(cn: string, from = new Date(Date.now() - 3600_000), to = new Date(Date.now() + 365 * 24 * 3600_000)): Promise<KeyPair> {
  const pems = await generate([{ name: 'commonName', value: cn }], { keyType: 'rsa', keySize: 2048, algorithm: 'sha256', notBeforeDate: from, notAfterDate: to });
  return { cert: pems.cert, key: pems.private };
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

interface ResponseOptions {
  email: string;
  requestId: string;
  audience: string;
  destination: string;
  recipient: string;
  issuer?: string;
  notBefore?: number;
  notOnOrAfter?: number;
  /** The signed assertion's own InResponseTo (SubjectConfirmationData): the request's ID by default, null for none. */
  subjectInResponseTo?: string | null;
}

/** An IdP's Response with one assertion, as XML text (unsigned). */
function responseXml(o: ResponseOptions): string {
  const now = Date.now();
  const notBefore = o.notBefore ?? now - MIN;
  const notOnOrAfter = o.notOnOrAfter ?? now + 5 * MIN;
  const issuer = o.issuer ?? IDP;
  const subjectInResponseTo = o.subjectInResponseTo === undefined ? o.requestId : o.subjectInResponseTo;
  const id = (p: string) => `_${p}${Math.random().toString(16).slice(2)}${Date.now()}`;
  return (
    `<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${id('r')}" Version="2.0" IssueInstant="${iso(now)}" Destination="${o.destination}" InResponseTo="${o.requestId}">` +
    `<saml:Issuer>${issuer}</saml:Issuer>` +
    `<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>` +
    `<saml:Assertion ID="${id('a')}" Version="2.0" IssueInstant="${iso(now)}">` +
    `<saml:Issuer>${issuer}</saml:Issuer>` +
    `<saml:Subject><saml:NameID Format="${EMAIL_FORMAT}">${o.email}</saml:NameID>` +
    `<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="${iso(notOnOrAfter)}" Recipient="${o.recipient}"${subjectInResponseTo === null ? '' : ` InResponseTo="${subjectInResponseTo}"`}/></saml:SubjectConfirmation></saml:Subject>` +
    `<saml:Conditions NotBefore="${iso(notBefore)}" NotOnOrAfter="${iso(notOnOrAfter)}"><saml:AudienceRestriction><saml:Audience>${o.audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions>` +
    `<saml:AuthnStatement AuthnInstant="${iso(now)}" SessionIndex="${id('s')}"><saml:AuthnContext><saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>` +
    `</saml:Assertion></samlp:Response>`
  );
}

/** Signs the element `what` (the Assertion or the whole Response) with the IdP key, the signature after its Issuer. */
function sign(xml: string, pair: KeyPair, what: 'Assertion' | 'Response'): string {
  const sig = new SignedXml({ privateKey: pair.key, publicCert: pair.cert, signatureAlgorithm: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256', canonicalizationAlgorithm: 'http://www.w3.org/2001/10/xml-exc-c14n#' });
  const target = `//*[local-name(.)='${what}']`;
  sig.addReference({ xpath: target, digestAlgorithm: 'http://www.w3.org/2001/04/xmlenc#sha256', transforms: ['http://www.w3.org/2000/09/xmldsig#enveloped-signature', 'http://www.w3.org/2001/10/xml-exc-c14n#'] });
  sig.computeSignature(xml, { location: { reference: `${target}/*[local-name(.)='Issuer']`, action: 'after' } });
  return sig.getSignedXml();
}

describeEachStorage('SAML single sign-on', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let t: { tenantId: string; name: string; admin: SignedIn; adminEmail: string };
  let other: { tenantId: string; name: string; admin: SignedIn; adminEmail: string };
  let idp: KeyPair;
  let stranger: KeyPair;
  let sp: { entityId: string; acsUrl: string };

  const settings = (patch: Record<string, unknown> = {}) => ({ enabled: true, idpEntityId: IDP, idpSsoUrl: 'https://idp.example/sso', idpCertificates: [idp.cert], ...patch });
  const putSettings = (body: unknown, headers: Record<string, string> = t.admin.headers) => app.inject({ method: 'PUT', url: '/api/v1/settings/sso/saml', headers, payload: body as Record<string, unknown> });

  /** Starts a sign-in: the RelayState and the AuthnRequest ID the IdP would answer. */
  async function start(tenant = t): Promise<{ relayState: string; requestId: string; location: URL; setCookie: string }> {
    const res = await app.inject({ url: `/api/v1/auth/sso/saml/login?tenant=${tenant.name}` });
    expect(res.statusCode, res.body).toBe(302);
    const location = new URL(res.headers.location as string);
    const relayState = location.searchParams.get('RelayState')!;
    const secret = relayState.slice(relayState.lastIndexOf('.') + 1);
    const row = await rt.storage.tenant(tenant.tenantId).read((db) => db.selectFrom('saml_requests').select('request_id').where('relay_hash', '=', hashSecret(secret)).executeTakeFirstOrThrow());
    const setCookie = ([] as string[]).concat(res.headers['set-cookie'] ?? []).find((c) => c.startsWith('custos_saml_state=')) ?? '';
    return { relayState, requestId: row.request_id, location, setCookie };
  }

  /** The IdP's form post, from the browser that started the sign-in (its state cookie: the RelayState's secret) unless `browser` says otherwise. */
  const post = (samlResponse: string, relayState: string, browser: { stateCookie?: string | null } = {}) => {
    const state = browser.stateCookie === undefined ? relayState.slice(relayState.lastIndexOf('.') + 1) : browser.stateCookie;
    return app.inject({
      method: 'POST',
      url: '/api/v1/auth/sso/saml/acs',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(state === null ? {} : { cookie: `custos_saml_state=${state}` }) },
      payload: new URLSearchParams({ SAMLResponse: Buffer.from(samlResponse).toString('base64'), RelayState: relayState }).toString(),
    });
  };

  /** A full round: start, the IdP's response (built and signed by `make`), the ACS answer. */
  async function round(make: (r: { requestId: string }) => string, tenant = t): Promise<LightMyRequestResponse> {
    const s = await start(tenant);
    return post(make({ requestId: s.requestId }), s.relayState);
  }

  const good = (email: string, requestId: string, patch: Partial<ResponseOptions> = {}) => responseXml({ email, requestId, audience: sp.entityId, destination: sp.acsUrl, recipient: sp.acsUrl, ...patch });

  /** 401 invalid_credentials, no session cookie, and the failure recorded with its reason (and, for a bad response, what was wrong). */
  async function expectRefused(res: LightMyRequestResponse, reason: string, detail?: RegExp): Promise<void> {
    expectProblem(res, 401, 'invalid_credentials');
    expect(cookieValue(res, 'custos_session')).toBeUndefined();
    const ev = (await rt.audit.query(t.tenantId, { types: ['auth.login.failure'], limit: 1 })).events[0]!;
    expect(ev.details).toMatchObject({ reason, method: 'saml' });
    if (detail) expect(ev.details?.detail).toMatch(detail);
  }

  beforeAll(async () => {
    rt = await makeRuntime(kind);
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'saml-a');
    other = await tenantWithAdmin(app, rt, 'saml-b');
    idp = await idpKeyPair('idp.example');
    stranger = await idpKeyPair('attacker.example');
    sp = serviceProvider(rt.config.publicUrl, t.name);
    const res = await putSettings(settings());
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().serviceProvider).toEqual(sp);
    await createUser(rt, t, t.admin.cookie, { username: 'alice', email: 'Alice@Saml-A.example', roles: ['viewer'] });
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  describe('sign-in', () => {
    it('lists saml among the sign-in methods and redirects to the IdP with an AuthnRequest', async () => {
      expect((await app.inject({ url: `/api/v1/auth/options?tenant=${t.name}` })).json()).toEqual({ tenant: t.name, methods: ['password', 'saml'] });
      expect((await app.inject({ url: `/api/v1/auth/options?tenant=${other.name}` })).json()).toEqual({ tenant: other.name, methods: ['password'] });
      const s = await start();
      expect(s.location.origin + s.location.pathname).toBe('https://idp.example/sso');
      expect(s.location.searchParams.get('SAMLRequest')).toBeTruthy();
      expect(s.relayState).toMatch(/^saml-a\.[A-Za-z0-9_-]{16}$/);
      expect(s.requestId).toMatch(/^_[0-9a-f]{40}$/);
      // The browser that starts the sign-in gets the RelayState's secret as a cookie, sent back with the IdP's post only.
      expect(s.setCookie).toMatch(new RegExp(`^custos_saml_state=${s.relayState.slice(s.relayState.lastIndexOf('.') + 1)};`));
      expect(s.setCookie).toMatch(/Path=\/api\/v1\/auth\/sso\/saml\/acs/);
      expect(s.setCookie).toMatch(/HttpOnly/);
      expect(s.setCookie).toMatch(/Secure/);
      expect(s.setCookie).toMatch(/SameSite=None/);
      // Not enabled: no redirect.
      expectProblem(await app.inject({ url: `/api/v1/auth/sso/saml/login?tenant=${other.name}` }), 404, 'not_found');
    });

    it('a response with a signed assertion signs the mapped console user in (email case-insensitive), once', async () => {
      const s = await start();
      const xml = sign(good('alice@saml-a.example', s.requestId), idp, 'Assertion');
      const res = await post(xml, s.relayState);
      expect(res.statusCode, res.body).toBe(200);
      const body = res.json();
      expect(body).toMatchObject({ status: 'ok', user: { username: 'alice', kind: 'console' } });
      expect(typeof body.csrfToken).toBe('string');
      const cookie = `custos_session=${cookieValue(res, 'custos_session')!}`;
      const me = await app.inject({ url: '/api/v1/me', headers: { cookie } });
      expect(me.statusCode, me.body).toBe(200);
      expect(me.json()).toMatchObject({ username: 'alice' });
      const sessions = (await app.inject({ url: '/api/v1/me/sessions', headers: { cookie } })).json().sessions;
      expect(sessions.find((x: { current: boolean }) => x.current)).toMatchObject({ authMethod: 'saml' });
      const ev = (await rt.audit.query(t.tenantId, { types: ['auth.login.success'], limit: 1 })).events[0]!;
      expect(ev.details).toMatchObject({ method: 'saml' });
      expect(ev.principal).toMatchObject({ name: 'alice' });
      // Replayed: the same response (and InResponseTo) a second time.
      await expectRefused(await post(xml, s.relayState), 'unknown_request');
    });

    it('takes the tenant from RelayState only, and exactly one SAMLResponse and RelayState', async () => {
      const s = await start();
      const xml = encodeURIComponent(Buffer.from(sign(good('alice@saml-a.example', s.requestId), idp, 'Assertion')).toString('base64'));
      const state = `custos_saml_state=${s.relayState.slice(s.relayState.lastIndexOf('.') + 1)}`;
      const form = (payload: string) => app.inject({ method: 'POST', url: '/api/v1/auth/sso/saml/acs', headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: state }, payload });
      expectProblem(await form(`SAMLResponse=${xml}&SAMLResponse=x&RelayState=${s.relayState}`), 400, 'validation_failed');
      expectProblem(await form(`SAMLResponse=${xml}`), 400, 'validation_failed');
      expectProblem(await form(`SAMLResponse=${xml}&RelayState=nonsense`), 400, 'validation_failed');
      // The same random part under another tenant's name: that tenant issued nothing (and has SAML off).
      expectProblem(await form(`SAMLResponse=${xml}&RelayState=${other.name}${s.relayState.slice(s.relayState.indexOf('.'))}`), 401, 'invalid_credentials');
      // A tenant field in the form is ignored.
      const res = await form(`tenant=${other.name}&SAMLResponse=${xml}&RelayState=${s.relayState}`);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().user.username).toBe('alice');
    });

    it('is documented in the OpenAPI document: the ACS takes a form, the start redirects, the settings need account.admin', async () => {
      const doc = (await app.inject('/api/openapi.json')).json();
      expect(Object.keys(doc.paths['/api/v1/auth/sso/saml/acs'].post.requestBody.content)).toEqual(['application/x-www-form-urlencoded']);
      expect(doc.paths['/api/v1/auth/sso/saml/login'].get.responses['302']).toBeDefined();
      expect(doc.paths['/api/v1/settings/sso/saml'].put['x-custos-permission']).toBe('account.admin');
      expect(doc.paths['/api/v1/settings/sso/saml'].get['x-custos-permission']).toBe('account.admin');
    });

    it('Custos MFA still applies: a user it is required of gets the mfa_required challenge, and the session carries method saml', async () => {
      const u = await createUser(rt, t, t.admin.cookie, { username: 'guarded', roles: ['account-administrator'] });
      const security = structuredClone(await rt.securitySettings.get(t.tenantId));
      security.mfa = { required: 'roles', roles: ['account-administrator'] };
      await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, security));
      try {
        const res = await round(({ requestId }) => sign(good(u.email, requestId), idp, 'Assertion'));
        expect(res.statusCode, res.body).toBe(200);
        const body = res.json();
        expect(body).toMatchObject({ status: 'challenge', challenge: 'mfa_required' });
        expect(cookieValue(res, 'custos_session')).toBeUndefined();
        // Enrolling at sign-in, as after a password: a wrong code is refused, the right one ends the sign-in.
        const secret = body.mfaEnrollment.secret as string;
        expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: body.flowToken, code: totpNow(secret, Date.now()) === '000000' ? '111111' : '000000' } }), 401, 'invalid_code');
        const done = await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: body.flowToken, code: totpNow(secret, Date.now()) } });
        expect(done.statusCode, done.body).toBe(200);
        expect(done.json()).toMatchObject({ status: 'ok', user: { username: 'guarded' } });
        const cookie = `custos_session=${cookieValue(done, 'custos_session')!}`;
        const sessions = (await app.inject({ url: '/api/v1/me/sessions', headers: { cookie } })).json().sessions;
        expect(sessions.find((x: { current: boolean }) => x.current)).toMatchObject({ authMethod: 'saml' });
        const ev = (await rt.audit.query(t.tenantId, { types: ['auth.login.success'], limit: 1 })).events[0]!;
        expect(ev).toMatchObject({ principal: { name: 'guarded' }, details: { method: 'saml' } });
        // Enrolled now, and with no policy: the challenge again.
        security.mfa = { required: 'none', roles: [] };
        await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, security));
        const again = await round(({ requestId }) => sign(good(u.email, requestId), idp, 'Assertion'));
        expect(again.json()).toMatchObject({ status: 'challenge', challenge: 'mfa_required' });
        expect(again.json().mfaEnrollment).toBeUndefined();
      } finally {
        security.mfa = { required: 'none', roles: [] };
        await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, security));
      }
    });

    it('accepts a response whose Response and Assertion are both signed', async () => {
      const res = await round(({ requestId }) => sign(sign(good('alice@saml-a.example', requestId), idp, 'Assertion'), idp, 'Response'));
      expect(res.statusCode, res.body).toBe(200);
    });
  });

  describe('refusals: each 401 invalid_credentials, no session, recorded', () => {
    it('an unsigned response', async () => {
      await expectRefused(await round(({ requestId }) => good('alice@saml-a.example', requestId)), 'invalid_response', /^Invalid signature$/);
    });

    it('a response signed only on the Response, not the assertion', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId), idp, 'Response')), 'invalid_response', /^Invalid signature$/);
    });

    it('a response signed by a key whose certificate is not configured', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId), stranger, 'Assertion')), 'invalid_response', /^Invalid signature$/);
    });

    it('an assertion for another tenant\'s audience', async () => {
      const audience = serviceProvider(rt.config.publicUrl, other.name).entityId;
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { audience }), idp, 'Assertion')), 'invalid_response', /audience mismatch/);
    });

    it('an expired assertion (NotOnOrAfter past, beyond the clock skew)', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { notBefore: Date.now() - 20 * MIN, notOnOrAfter: Date.now() - 2 * MIN }), idp, 'Assertion')), 'invalid_response', /No valid subject confirmation|expired/);
    });

    it('an assertion not yet valid (NotBefore in the future, beyond the clock skew)', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { notBefore: Date.now() + 5 * MIN }), idp, 'Assertion')), 'invalid_response', /not yet valid/);
    });

    it('a wrong Destination or a wrong Recipient', async () => {
      const elsewhere = 'https://elsewhere.example/acs';
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { destination: elsewhere }), idp, 'Assertion')), 'invalid_response', /^Destination is not the ACS URL$/);
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { recipient: elsewhere }), idp, 'Assertion')), 'invalid_response', /^Recipient is not the ACS URL$/);
    });

    it('an unknown InResponseTo, or a RelayState this tenant never issued', async () => {
      await expectRefused(await round(() => sign(good('alice@saml-a.example', `_${'0'.repeat(40)}`), idp, 'Assertion')), 'invalid_response', /InResponseTo is not valid/);
      const s = await start();
      await expectRefused(await post(sign(good('alice@saml-a.example', s.requestId), idp, 'Assertion'), `${t.name}.${'A'.repeat(16)}`), 'unknown_request');
    });

    it('a signed assertion that does not itself answer this request (its InResponseTo absent)', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { subjectInResponseTo: null }), idp, 'Assertion')), 'invalid_response', /^assertion InResponseTo is not the request$/);
    });

    it('another IdP issuer', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('alice@saml-a.example', requestId, { issuer: 'https://other-idp.example' }), idp, 'Assertion')), 'invalid_response', /^issuer mismatch$/);
    });

    it('a NameID changed after signing (signature wrapping style tamper)', async () => {
      await createUser(rt, t, t.admin.cookie, { username: 'mallory', email: 'mallory@saml-a.example', roles: ['viewer'] });
      const res = await round(({ requestId }) => sign(good('mallory@saml-a.example', requestId), idp, 'Assertion').replace('mallory@saml-a.example', 'admin@saml-a.example'));
      await expectRefused(res, 'invalid_response', /^Invalid signature$/);
    });

    it('an unknown email, an API user, a suspended user', async () => {
      await expectRefused(await round(({ requestId }) => sign(good('nobody@saml-a.example', requestId), idp, 'Assertion')), 'unknown_user');
      await apiUser(app, rt, t, t.admin.cookie, 'robot', ['viewer']);
      await expectRefused(await round(({ requestId }) => sign(good('robot@saml-a.example', requestId), idp, 'Assertion')), 'wrong_user_kind');
      const u = await createUser(rt, t, t.admin.cookie, { username: 'sleeper', roles: ['viewer'] });
      expect((await app.inject({ method: 'POST', url: `/api/v1/users/${u.id}/suspend`, headers: t.admin.headers })).statusCode).toBe(200);
      await expectRefused(await round(({ requestId }) => sign(good(u.email, requestId), idp, 'Assertion')), 'suspended');
    });

    it('a response posted from another browser than the one that started the sign-in (no state cookie, or another one): login CSRF', async () => {
      const mine = await start();
      const xml = sign(good('alice@saml-a.example', mine.requestId), idp, 'Assertion');
      await expectRefused(await post(xml, mine.relayState, { stateCookie: null }), 'other_browser');
      const theirs = await start();
      await expectRefused(await post(xml, mine.relayState, { stateCookie: theirs.relayState.slice(theirs.relayState.lastIndexOf('.') + 1) }), 'other_browser');
      // Refused before the request is used: the browser that started it still signs in.
      const res = await post(xml, mine.relayState);
      expect(res.statusCode, res.body).toBe(200);
      expect(cookieValue(res, 'custos_session')).toBeTruthy();
    });

    it('a NameID that is not printable ASCII (case folding differs between JavaScript and the database)', async () => {
      await createUser(rt, t, t.admin.cookie, { username: 'kate', email: 'kate@saml-a.example', roles: ['viewer'] });
      await expectRefused(await round(({ requestId }) => sign(good('\u212Aate@saml-a.example', requestId), idp, 'Assertion')), 'name_id_not_email');
    });

    it('a locked account', async () => {
      const u = await createUser(rt, t, t.admin.cookie, { username: 'locked1', roles: ['viewer'] });
      for (let i = 0; i < 5; i++) expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'locked1', password: 'wrong-password-123' } }), 401, 'invalid_credentials');
      await expectRefused(await round(({ requestId }) => sign(good(u.email, requestId), idp, 'Assertion')), 'locked');
    });

    it('a response signed by a configured certificate that has expired since it was saved', async () => {
      const brief = await idpKeyPair('brief.example', new Date(Date.now() - 3600_000), new Date(Date.now() + 3000));
      expect((await putSettings(settings({ idpCertificates: [brief.cert] }))).statusCode).toBe(200);
      try {
        const s = await start();
        await new Promise((resolve) => setTimeout(resolve, 3500));
        await expectRefused(await post(sign(good('alice@saml-a.example', s.requestId), brief, 'Assertion'), s.relayState), 'no_valid_certificate');
      } finally {
        expect((await putSettings(settings())).statusCode).toBe(200);
      }
    });

    it('SAML disabled after the sign-in started', async () => {
      const s = await start();
      expect((await putSettings(settings({ enabled: false }))).statusCode).toBe(200);
      try {
        await expectRefused(await post(sign(good('alice@saml-a.example', s.requestId), idp, 'Assertion'), s.relayState), 'saml_disabled');
      } finally {
        expect((await putSettings(settings())).statusCode).toBe(200);
      }
    });
  });

  describe('settings', () => {
    it('passwordLogin false refuses console passwords with the same 401, API users keep theirs', async () => {
      const pw = strongPassword();
      const u = await createUser(rt, t, t.admin.cookie, { username: 'carol', roles: ['viewer'] });
      const first = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'carol', password: u.temporaryPassword, email: u.email, newPassword: pw });
      const robot = await apiUser(app, rt, t, t.admin.cookie, 'robot2', ['viewer']);
      expect((await putSettings(settings({ passwordLogin: false }))).statusCode).toBe(200);
      try {
        expect((await app.inject({ url: `/api/v1/auth/options?tenant=${t.name}` })).json().methods).toEqual(['saml']);
        const res = await app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'carol', password: pw }, headers: { cookie: first.deviceCookie } });
        expectProblem(res, 401, 'invalid_credentials');
        const ev = (await rt.audit.query(t.tenantId, { types: ['auth.login.failure'], limit: 1 })).events[0]!;
        expect(ev.details).toMatchObject({ reason: 'password_login_disabled' });
        const token = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot2', password: robot.password } });
        expect(token.statusCode, token.body).toBe(200);
      } finally {
        expect((await putSettings(settings())).statusCode).toBe(200);
      }
      const again = await app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username: 'carol', password: pw }, headers: { cookie: first.deviceCookie } });
      expect(again.statusCode, again.body).toBe(200);
    });

    it('validates the document: PEM certificates valid now, an https SSO URL; 400 otherwise', async () => {
      expectProblem(await putSettings(settings({ idpCertificates: ['-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n'] })), 400, 'validation_failed');
      expectProblem(await putSettings(settings({ idpCertificates: [idp.key] })), 400, 'validation_failed');
      const expired = await idpKeyPair('old.example', new Date(Date.now() - 7 * 24 * 3600_000), new Date(Date.now() - 24 * 3600_000));
      expectProblem(await putSettings(settings({ idpCertificates: [expired.cert] })), 400, 'validation_failed');
      expectProblem(await putSettings(settings({ idpSsoUrl: 'http://idp.example/sso' })), 400, 'validation_failed');
      expectProblem(await putSettings(settings({ enabled: false, passwordLogin: false })), 400, 'validation_failed');
      expectProblem(await putSettings({ ...settings(), extra: 1 }), 400, 'validation_failed');
      // Nothing changed.
      expect((await app.inject({ url: '/api/v1/settings/sso/saml', headers: t.admin.headers })).json()).toMatchObject({ enabled: true, idpCertificates: [idp.cert.trim()] });
    });

    it('only account administrators read or change them; a change is recorded with before and after', async () => {
      const u = await createUser(rt, t, t.admin.cookie, { username: 'viewer1', roles: ['viewer'] });
      const viewer = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'viewer1', password: u.temporaryPassword, email: u.email });
      expectProblem(await putSettings(settings({ enabled: false }), viewer.headers), 403, 'forbidden');
      expectProblem(await app.inject({ url: '/api/v1/settings/sso/saml', headers: viewer.headers }), 403, 'forbidden');
      // An administrator without every permission may not choose the IdP: it could sign in as any console user.
      const role = await app.inject({ method: 'POST', url: '/api/v1/roles', headers: t.admin.headers, payload: { name: 'SSO admin', permissions: ['account.admin', 'users.read'] } });
      expect(role.statusCode, role.body).toBe(201);
      const partial = await createUser(rt, t, t.admin.cookie, { username: 'partial1', roles: [role.json().id as string] });
      const partialAdmin = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'partial1', password: partial.temporaryPassword, email: partial.email });
      const refused = await putSettings(settings({ idpEntityId: 'https://evil.example/idp' }), partialAdmin.headers);
      expectProblem(refused, 403, 'forbidden');
      expect(refused.json().detail).toMatch(/needs every permission/);
      expect((await app.inject({ url: '/api/v1/settings/sso/saml', headers: t.admin.headers })).json().idpEntityId).toBe(IDP);
      expect((await putSettings(settings({ idpEntityId: 'https://idp.example/other' }))).statusCode).toBe(200);
      const ev = (await rt.audit.query(t.tenantId, { types: ['iam.settings.saml.update'], limit: 1 })).events[0]!;
      expect(ev.change).toMatchObject({ before: { idpEntityId: IDP }, after: { idpEntityId: 'https://idp.example/other' } });
      expect(JSON.stringify(ev.change)).not.toContain('BEGIN CERTIFICATE');
      expect((await putSettings(settings())).statusCode).toBe(200);
    });
  });
});
