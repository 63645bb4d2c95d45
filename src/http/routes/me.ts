import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';

const Password = Type.String({ minLength: 1, maxLength: 1024 });
const Problems = { 400: { $ref: 'Problem#' }, 401: { $ref: 'Problem#' }, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' }, 409: { $ref: 'Problem#' } };

const Me = Type.Object(
  {
    id: Type.String(),
    username: Type.String(),
    email: Type.String(),
    fullName: Type.Union([Type.String(), Type.Null()]),
    kind: Type.String(),
    tenant: Type.String(),
    roles: Type.Array(Type.String()),
    permissions: Type.Array(Type.String()),
    mfa: Type.Object({ enrolled: Type.Boolean(), recoveryCodesLeft: Type.Integer() }, { additionalProperties: false }),
    via: Type.String(),
    sessionId: Type.String(),
    lastLoginAt: Type.Union([Type.String(), Type.Null()]),
  },
  { additionalProperties: false },
);

const Session = Type.Object(
  {
    id: Type.String(),
    current: Type.Boolean(),
    kind: Type.String(),
    authMethod: Type.String(),
    createdAt: Type.String(),
    lastSeenAt: Type.String(),
    expiresAt: Type.String(),
    ip: Type.Union([Type.String(), Type.Null()]),
    userAgent: Type.Union([Type.String(), Type.Null()]),
  },
  { additionalProperties: false },
);

/** The signed-in principal's own account: profile, password, MFA, sessions. */
export function meRoutes(app: FastifyInstance, rt: Runtime): void {
  const own = { tenant: { from: 'credential' as const }, permission: null };
  const consoleOnly = { ...own, credentials: 'session' as const };

  app.get('/me', { config: own, schema: { tags: ['me'], summary: 'The signed-in user or API user', response: { 200: Me, ...Problems } } }, async (request) =>
    rt.account.me(authOf(request), tenantOf(request).name),
  );

  app.get('/me/sessions', { config: own, schema: { tags: ['me'], summary: 'My sessions and tokens', response: { 200: Type.Object({ sessions: Type.Array(Session) }, { additionalProperties: false }), ...Problems } } }, async (request) => ({
    sessions: await rt.sessions.list(authOf(request)),
  }));

  app.delete(
    '/me/sessions',
    {
      config: consoleOnly,
      schema: {
        tags: ['me'],
        summary: 'End my other sessions (or one of them); needs my password',
        body: Type.Object({ password: Password, sessionId: Type.Optional(Type.String({ maxLength: 40 })) }, { additionalProperties: false }),
        response: { 200: Type.Object({ ended: Type.Integer() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => rt.login.endSessions(authOf(request), request.body as { password: string; sessionId?: string }),
  );

  app.post(
    '/me/password',
    {
      config: own,
      schema: {
        tags: ['me'],
        summary: 'Change my password (current password required); optionally end my other sessions',
        body: Type.Object({ currentPassword: Password, newPassword: Password, endOtherSessions: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: Type.Object({ endedSessions: Type.Integer() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => rt.login.changePassword(authOf(request), request.body as { currentPassword: string; newPassword: string; endOtherSessions?: boolean }),
  );

  app.post(
    '/me/mfa/totp',
    {
      config: consoleOnly,
      schema: {
        tags: ['me'],
        summary: 'Start TOTP enrollment: a seed for the authenticator app',
        body: Type.Object({ password: Password }, { additionalProperties: false }),
        response: { 200: Type.Object({ secret: Type.String(), otpauthUri: Type.String() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => rt.account.beginTotp(authOf(request), tenantOf(request).name, (request.body as { password: string }).password),
  );

  app.post(
    '/me/mfa/totp/confirm',
    {
      config: consoleOnly,
      schema: {
        tags: ['me'],
        summary: 'Confirm TOTP enrollment with a first code; returns 10 recovery codes (shown once)',
        body: Type.Object({ code: Type.String({ pattern: '^[0-9]{6}$' }), endOtherSessions: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: Type.Object({ recoveryCodes: Type.Array(Type.String()), endedSessions: Type.Integer() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => {
      const body = request.body as { code: string; endOtherSessions?: boolean };
      return rt.account.confirmTotp(authOf(request), body.code, body.endOtherSessions ?? false);
    },
  );

  app.post(
    '/me/mfa/recovery-codes',
    {
      config: consoleOnly,
      schema: {
        tags: ['me'],
        summary: 'Replace my recovery codes (password required)',
        body: Type.Object({ password: Password }, { additionalProperties: false }),
        response: { 200: Type.Object({ recoveryCodes: Type.Array(Type.String()) }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => ({ recoveryCodes: await rt.account.regenerateRecoveryCodes(authOf(request), (request.body as { password: string }).password) }),
  );

  app.delete(
    '/me/mfa',
    {
      config: consoleOnly,
      schema: {
        tags: ['me'],
        summary: 'Turn my MFA off (password required; tenant policy may require it again at next sign-in)',
        body: Type.Object({ password: Password, endOtherSessions: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: Type.Object({ endedSessions: Type.Integer() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => {
      const body = request.body as { password: string; endOtherSessions?: boolean };
      return rt.account.disableMfa(authOf(request), body.password, body.endOtherSessions ?? false);
    },
  );
}
