import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CustosError } from '../../core/errors.js';
import type { Runtime } from '../../runtime.js';
import { authOf, sourceOf, tenantOf } from '../plugins/tenant-binding.js';
import { Problems, adminRoute } from './admin-schemas.js';
import { SAML_REQUEST_MS, SAML_STATE_COOKIE } from '../../iam/sso/saml-service.js';
import { SAML_ACS_PATH } from '../../iam/sso/saml-settings.js';
import { sendSignIn } from './auth.js';

/**
 * The browser-binding cookie: sent back only to the ACS, and only with the IdP's cross-site form post, hence
 * SameSite=None (Secure, HttpOnly).
 */
const STATE_COOKIE = { path: SAML_ACS_PATH, httpOnly: true, secure: true, sameSite: 'none' } as const;

const TenantName = Type.String({ minLength: 3, maxLength: 63, pattern: '^[a-z0-9][a-z0-9-]*[a-z0-9]$', description: 'Tenant name' });
const PublicProblems = { 400: { $ref: 'Problem#' }, 401: { $ref: 'Problem#' }, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' } };

/** Largest form the ACS accepts: a signed response with a few certificates is a few KiB; 256 KiB leaves room. */
const ACS_BODY_LIMIT = 256 * 1024;
/** SAML bindings: RelayState is at most 80 bytes. */
const RELAY_STATE = /^([a-z0-9][a-z0-9-]*[a-z0-9])\.[A-Za-z0-9_-]{16}$/;

const SamlSettingsBody = Type.Object(
  {
    enabled: Type.Boolean({ description: 'Console users may sign in through the IdP' }),
    idpEntityId: Type.String({ minLength: 1, maxLength: 1024, description: "The IdP's entity id (the Issuer of its responses)" }),
    idpSsoUrl: Type.String({ minLength: 1, maxLength: 2048, description: "The IdP's single sign-on URL (HTTP-Redirect binding); https only" }),
    idpCertificates: Type.Array(Type.String({ minLength: 1, maxLength: 16384 }), { minItems: 1, maxItems: 5, description: "PEM certificates of the IdP's signing keys, each valid now (several for a rollover)" }),
    passwordLogin: Type.Optional(Type.Boolean({ description: 'Console users may still sign in with a password while SAML is on (default true; false only while enabled). API users keep passwords and certificates.' })),
  },
  { additionalProperties: false },
);

const SamlSettingsAnswer = Type.Object(
  {
    enabled: Type.Boolean(),
    idpEntityId: Type.String(),
    idpSsoUrl: Type.String(),
    idpCertificates: Type.Array(Type.String()),
    passwordLogin: Type.Boolean(),
    serviceProvider: Type.Object(
      {
        entityId: Type.String({ description: "This tenant's SP entity id: the Audience the IdP's assertions must name" }),
        acsUrl: Type.String({ description: 'Assertion consumer service (HTTP-POST binding): the Destination and Recipient of responses' }),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);

/**
 * SAML 2.0 single sign-on, service-provider side: the sign-in start (an
 * AuthnRequest by HTTP-Redirect), the assertion consumer service
 * (HTTP-POST), and the tenant's IdP configuration (`account.admin`).
 * Registered after `authRoutes` (it answers the same `SignInResult`).
 */
export function samlRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get(
    '/auth/sso/saml/login',
    {
      config: { tenant: { from: 'query', field: 'tenant' } },
      schema: {
        tags: ['authentication'],
        summary: "Start a SAML sign-in: redirects (302) to the tenant's IdP with an AuthnRequest",
        description: 'HTTP-Redirect binding. The request is remembered for 10 minutes; the IdP answers at `POST /auth/sso/saml/acs` with the RelayState it was given. 404 not_found when SAML is not enabled for the tenant.',
        querystring: Type.Object({ tenant: TenantName }, { additionalProperties: false }),
        response: { 302: Type.Null({ description: 'Location: the IdP single sign-on URL with SAMLRequest and RelayState' }), ...PublicProblems },
      },
    },
    async (request, reply) => {
      const { url, binding } = await rt.saml.startLogin(tenantOf(request));
      reply.setCookie(SAML_STATE_COOKIE, binding, { ...STATE_COOKIE, maxAge: SAML_REQUEST_MS / 1000 });
      return reply.header('cache-control', 'no-store').redirect(url, 302);
    },
  );

  // The ACS takes a form (application/x-www-form-urlencoded), in a scope of its own so no other route parses forms.
  void app.register(async (scope) => {
    scope.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: ACS_BODY_LIMIT }, (_request, body, done) => {
      // Copy then check: exactly one SAMLResponse and one RelayState; the tenant comes from RelayState only.
      const form = new URLSearchParams(body as string);
      const responses = form.getAll('SAMLResponse');
      const relays = form.getAll('RelayState');
      if (responses.length !== 1 || relays.length !== 1) {
        done(new CustosError('validation_failed', 'the form must carry one SAMLResponse and one RelayState'), undefined);
        return;
      }
      const relay = RELAY_STATE.exec(relays[0]!);
      if (!relay) {
        done(new CustosError('validation_failed', 'RelayState is not one this service issued'), undefined);
        return;
      }
      done(null, { SAMLResponse: responses[0]!, RelayState: relays[0]!, tenant: relay[1]! });
    });

    scope.post(
      '/auth/sso/saml/acs',
      {
        config: { tenant: { from: 'body', field: 'tenant' } },
        schema: {
          tags: ['authentication'],
          summary: 'SAML assertion consumer service (HTTP-POST binding): signs the mapped console user in',
          description:
            "Form fields `SAMLResponse` (base64) and `RelayState` (as issued by `/auth/sso/saml/login`: `<tenant>.<random>`; the tenant is taken from it, a `tenant` field sent in the form is ignored). The response must be signed (the assertion at least) by one of the tenant's IdP certificates, name this tenant's SP entity id as Audience and the ACS URL as Destination and Recipient, be within its validity (1 minute of clock skew) and answer an outstanding request of this tenant (InResponseTo, once). Its NameID (an email address) must be that of exactly one active console user of the tenant. Answers like `POST /auth/login`: the session cookie and, in the body, the CSRF token; or, when Custos MFA applies to the user, the `mfa_required` challenge (answered at `/auth/mfa/verify`). Every refusal is 401 invalid_credentials, recorded with its reason.",
          consumes: ['application/x-www-form-urlencoded'],
          body: Type.Object(
            {
              SAMLResponse: Type.String({ minLength: 1, maxLength: ACS_BODY_LIMIT }),
              RelayState: Type.String({ minLength: 1, maxLength: 80 }),
              tenant: Type.Optional({ ...TenantName, description: 'Not sent: taken from RelayState' }),
            },
            { additionalProperties: false },
          ),
          response: { 200: { $ref: 'SignInResult#' }, ...PublicProblems },
        },
      },
      async (request, reply) => {
        const body = request.body as { SAMLResponse: string; RelayState: string };
        const binding = request.cookies?.[SAML_STATE_COOKIE];
        reply.clearCookie(SAML_STATE_COOKIE, STATE_COOKIE);
        const result = await rt.saml.consume(tenantOf(request), { samlResponse: body.SAMLResponse, relayState: body.RelayState, binding }, sourceOf(request));
        return sendSignIn(rt, request, reply, result);
      },
    );
  });

  app.get(
    '/settings/sso/saml',
    adminRoute('account.admin', { tags: ['settings'], summary: "SAML single sign-on: the tenant's IdP, and what the IdP must know of this service provider", response: { 200: SamlSettingsAnswer, ...Problems } }),
    async (request) => rt.samlSettings.get(authOf(request), tenantOf(request)),
  );

  app.put(
    '/settings/sso/saml',
    adminRoute('account.admin', {
      tags: ['settings'],
      summary: 'Replace the SAML settings (the whole document); recorded with before and after (certificates as SHA-256 fingerprints)',
      body: SamlSettingsBody,
      response: { 200: SamlSettingsAnswer, ...Problems },
    }),
    async (request) => rt.samlSettings.put(authOf(request), tenantOf(request), request.body),
  );
}
