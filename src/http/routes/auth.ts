import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { DEVICE_COOKIE, DEVICE_MAX_MS, SESSION_COOKIE, SESSION_MAX_MS, parseCredential } from '../../iam/credentials.js';
import { peerCertificates } from '../../iam/client-certificates.js';
import type { SignInResult } from '../../iam/login-service.js';
import type { Runtime } from '../../runtime.js';
import { authOf, sourceOf, tenantOf } from '../plugins/tenant-binding.js';

const TenantName = Type.String({ minLength: 3, maxLength: 63, pattern: '^[a-z0-9][a-z0-9-]*[a-z0-9]$', description: 'Tenant name' });
const Username = Type.String({ minLength: 1, maxLength: 200 });
/** Passwords are taken exactly as sent: any Unicode, up to 1,024 characters here (policies cap at 256). */
const Password = Type.String({ minLength: 1, maxLength: 1024 });
const FlowToken = Type.String({ minLength: 1, maxLength: 100, description: 'From the previous challenge answer' });
const Problems = { 400: { $ref: 'Problem#' }, 401: { $ref: 'Problem#' }, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' } };
/** Password sign-ins: also 429 `rate_limited` (with Retry-After) for an address that failed too often. */
const SignInProblems = { ...Problems, 429: { $ref: 'Problem#' } };

const SignIn = Type.Union(
  [
    Type.Object(
      {
        status: Type.Literal('ok'),
        user: Type.Object({ id: Type.String(), username: Type.String(), kind: Type.String() }, { additionalProperties: false }),
        session: Type.Object({ id: Type.String(), expiresAt: Type.String(), idleTimeoutMinutes: Type.Optional(Type.Integer()) }, { additionalProperties: false }),
        csrfToken: Type.Optional(Type.String({ description: 'Console sessions: send as X-CSRF-Token with every change made with the session cookie' })),
        accessToken: Type.Optional(Type.String({ description: 'API users: the bearer token (1 hour)' })),
        recoveryCodes: Type.Optional(Type.Array(Type.String(), { description: 'Shown once, after MFA enrollment' })),
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        status: Type.Literal('challenge'),
        challenge: Type.Union([Type.Literal('device_verification_required'), Type.Literal('password_change_required'), Type.Literal('mfa_required')]),
        flowToken: Type.String(),
        mfaEnrollment: Type.Optional(Type.Object({ secret: Type.String(), otpauthUri: Type.String() }, { additionalProperties: false })),
      },
      { additionalProperties: false },
    ),
  ],
  { $id: 'SignInResult' },
);

function cookieOptions(maxAgeMs: number, path = '/') {
  return { path, secure: true, httpOnly: true, sameSite: 'strict' as const, maxAge: Math.floor(maxAgeMs / 1000) };
}

/**
 * Renders a sign-in step: sets the session cookie (and the device cookie) and
 * never puts the session secret in the body. A completed sign-in ends the
 * session the browser still held, so a session id never survives
 * re-authentication.
 */
export async function sendSignIn(rt: Runtime, request: FastifyRequest, reply: FastifyReply, result: SignInResult): Promise<Static<typeof SignIn>> {
  if (result.deviceToken) reply.setCookie(DEVICE_COOKIE, result.deviceToken, cookieOptions(DEVICE_MAX_MS, '/api/v1/auth'));
  if (result.status === 'challenge') {
    return { status: 'challenge', challenge: result.challenge, flowToken: result.flowToken, ...(result.mfaEnrollment ? { mfaEnrollment: result.mfaEnrollment } : {}) };
  }
  if (result.user.kind === 'api') {
    // An API user finishing a challenge gets its bearer token in the body, never as a cookie.
    return { status: 'ok', user: result.user, session: { id: result.session.sessionId, expiresAt: result.session.expiresAt }, accessToken: result.session.token };
  }
  const previous = parseCredential(request.cookies[SESSION_COOKIE]);
  if (previous && request.tenant && previous.tenantId === request.tenant.id) await rt.sessions.endBySecret(previous.tenantId, previous.secret);
  reply.setCookie(SESSION_COOKIE, result.session.token, cookieOptions(SESSION_MAX_MS));
  return {
    status: 'ok',
    user: result.user,
    session: { id: result.session.sessionId, expiresAt: result.session.expiresAt, idleTimeoutMinutes: result.session.idleTimeoutMinutes },
    csrfToken: result.session.csrfToken,
    ...(result.recoveryCodes ? { recoveryCodes: result.recoveryCodes } : {}),
  };
}

/**
 * Sign-in and its challenges, API tokens, password change during sign-in,
 * forgotten passwords, sign-out. Everything but sign-out runs before
 * authentication, so the tenant comes from the body.
 */
export function authRoutes(app: FastifyInstance, rt: Runtime): void {
  const pre = { tenant: { from: 'body' as const, field: 'tenant' } };

  app.addSchema(SignIn);

  app.post(
    '/auth/login',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Sign in to the console',
        description: 'Answers a session (cookie `custos_session`, plus a CSRF token) or the next challenge. Every failure is 401 invalid_credentials; an address with too many recent failures gets 429 rate_limited with Retry-After, without its password being checked (tenant setting `loginThrottle`).',
        body: Type.Object({ tenant: TenantName, username: Username, password: Password, deviceToken: Type.Optional(Type.String({ maxLength: 100 })) }, { additionalProperties: false }),
        response: { 200: { $ref: 'SignInResult#' }, ...SignInProblems },
      },
    },
    async (request, reply) => {
      const body = request.body as { username: string; password: string; deviceToken?: string };
      const t = tenantOf(request);
      const result = await rt.login.login(t, { username: body.username, password: body.password, deviceToken: body.deviceToken ?? request.cookies[DEVICE_COOKIE], source: sourceOf(request) });
      return sendSignIn(rt, request, reply, result);
    },
  );

  app.post(
    '/auth/device/verify',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Answer the new-device challenge with the mailed 6-digit code',
        body: Type.Object({ tenant: TenantName, flowToken: FlowToken, code: Type.String({ pattern: '^[0-9]{6}$' }) }, { additionalProperties: false }),
        response: { 200: { $ref: 'SignInResult#' }, ...Problems },
      },
    },
    async (request, reply) => {
      const body = request.body as { flowToken: string; code: string };
      return sendSignIn(rt, request, reply, await rt.login.verifyDevice(tenantOf(request), { ...body, source: sourceOf(request) }));
    },
  );

  app.post(
    '/auth/password/change',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Answer the password-change challenge (temporary password at first sign-in)',
        body: Type.Object({ tenant: TenantName, flowToken: FlowToken, currentPassword: Password, newPassword: Password }, { additionalProperties: false }),
        response: { 200: { $ref: 'SignInResult#' }, ...Problems },
      },
    },
    async (request, reply) => {
      const body = request.body as { flowToken: string; currentPassword: string; newPassword: string };
      return sendSignIn(rt, request, reply, await rt.login.changePasswordInFlow(tenantOf(request), { ...body, source: sourceOf(request) }));
    },
  );

  app.post(
    '/auth/mfa/verify',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Answer the MFA challenge with a TOTP code or a recovery code (confirms a pending enrollment)',
        body: Type.Object(
          { tenant: TenantName, flowToken: FlowToken, code: Type.Optional(Type.String({ pattern: '^[0-9]{6}$' })), recoveryCode: Type.Optional(Type.String({ maxLength: 40 })) },
          { additionalProperties: false },
        ),
        response: { 200: { $ref: 'SignInResult#' }, ...Problems },
      },
    },
    async (request, reply) => {
      const body = request.body as { flowToken: string; code?: string; recoveryCode?: string };
      return sendSignIn(rt, request, reply, await rt.login.verifyMfa(tenantOf(request), { ...body, source: sourceOf(request) }));
    },
  );

  app.post(
    '/auth/token',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'API users: a bearer token (1 hour) for username and password, or for a registered TLS client certificate',
        description:
          'With `password`: the password sign-in (lockout applies). Without it: the TLS client certificate of this connection must be within its validity and either match a fingerprint pinned for the API user or chain, by signature, to a CA registered for it (`/users/{id}/credentials`). Every failure is 401 invalid_credentials; with `password`, an address with too many recent failures gets 429 rate_limited with Retry-After (tenant setting `loginThrottle`).',
        body: Type.Object({ tenant: TenantName, username: Username, password: Type.Optional(Password) }, { additionalProperties: false }),
        response: {
          200: Type.Union([
            Type.Object({ status: Type.Literal('ok'), accessToken: Type.String(), tokenType: Type.Literal('Bearer'), expiresAt: Type.String(), expiresIn: Type.Integer() }, { additionalProperties: false }),
            Type.Object({ status: Type.Literal('challenge'), challenge: Type.String(), flowToken: Type.String() }, { additionalProperties: false }),
          ]),
          ...SignInProblems,
        },
      },
    },
    async (request) => {
      const body = request.body as { username: string; password?: string };
      const t = tenantOf(request);
      const result =
        body.password !== undefined
          ? await rt.login.issueToken(t, { username: body.username, password: body.password, source: sourceOf(request) })
          : await rt.clientCertificates.issueToken(t, { username: body.username, chain: peerCertificates(request.raw.socket), source: sourceOf(request) });
      if (result.status === 'challenge') return { status: 'challenge' as const, challenge: result.challenge, flowToken: result.flowToken };
      return { status: 'ok' as const, accessToken: result.session.token, tokenType: 'Bearer' as const, expiresAt: result.session.expiresAt, expiresIn: Math.round((Date.parse(result.session.expiresAt) - rt.clock.now()) / 1000) };
    },
  );

  app.post(
    '/auth/password/forgot',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Mail a password-reset link (always 202, whether or not the user exists)',
        body: Type.Object({ tenant: TenantName, username: Username }, { additionalProperties: false }),
        response: { 202: Type.Object({ status: Type.Literal('accepted') }, { additionalProperties: false }), 400: { $ref: 'Problem#' } },
      },
    },
    async (request, reply) => {
      const body = request.body as { username: string };
      await rt.login.forgotPassword(tenantOf(request), { username: body.username, source: sourceOf(request) });
      return reply.code(202).send({ status: 'accepted' as const });
    },
  );

  app.post(
    '/auth/password/reset',
    {
      config: pre,
      schema: {
        tags: ['authentication'],
        summary: 'Set a new password with a reset link (single use, 2 hours); signs nobody in',
        body: Type.Object({ tenant: TenantName, token: Type.String({ maxLength: 100 }), newPassword: Password }, { additionalProperties: false }),
        response: { 204: Type.Null(), ...Problems },
      },
    },
    async (request, reply) => {
      const body = request.body as { token: string; newPassword: string };
      await rt.login.resetPassword(tenantOf(request), { ...body, source: sourceOf(request) });
      return reply.code(204).send();
    },
  );

  app.post(
    '/auth/logout',
    {
      config: { tenant: { from: 'credential' }, permission: null, credentials: 'session' },
      schema: { tags: ['authentication'], summary: 'Sign out: end this session', response: { 204: Type.Null(), ...Problems } },
    },
    async (request, reply) => {
      await rt.login.logout(authOf(request));
      reply.clearCookie(SESSION_COOKIE, { path: '/' });
      return reply.code(204).send();
    },
  );
}
