import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Problems, adminRoute } from './admin-schemas.js';

const Bool = Type.Boolean();

/** The whole security-settings document; `checkSecuritySettings` applies the rules that span fields. */
const SecuritySettings = Type.Object(
  {
    password: Type.Object(
      {
        minLength: Type.Integer({ minimum: 6, maximum: 256, description: 'Default 12' }),
        maxLength: Type.Integer({ minimum: 64, maximum: 256, description: 'Default 256; not below minLength' }),
        requireLowercase: Bool,
        requireUppercase: Bool,
        requireDigit: Bool,
        requireSpecial: Bool,
        firstAndLastNonNumeric: Bool,
        historySize: Type.Integer({ minimum: 0, maximum: 24, description: 'Recent passwords refused (default 5; 0 allows reuse)' }),
      },
      { additionalProperties: false },
    ),
    lockout: Type.Object(
      {
        threshold: Type.Integer({ minimum: 1, maximum: 100, description: 'Consecutive failures that lock an account (default 5)' }),
        mode: Type.Union([Type.Literal('duration'), Type.Literal('admin')], { description: '`admin`: only an administrator unlocks' }),
        durationMinutes: Type.Integer({ minimum: 1, maximum: 10080 }),
      },
      { additionalProperties: false },
    ),
    session: Type.Object({ idleTimeoutMinutes: Type.Union([Type.Literal(15), Type.Literal(30), Type.Literal(60)], { description: 'Console idle timeout (default 30)' }) }, { additionalProperties: false }),
    mfa: Type.Object(
      {
        required: Type.Union([Type.Literal('none'), Type.Literal('all'), Type.Literal('roles')], { description: 'Who must use MFA for the console' }),
        roles: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 50, description: 'Role keys or ids, for `roles`' }),
      },
      { additionalProperties: false },
    ),
    ipAllowlist: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 200, description: 'IPv4/IPv6 CIDRs requests may come from; empty allows any. Must include the address of the change.' }),
    loginThrottle: Type.Optional(
      Type.Object(
        {
          maxFailures: Type.Integer({ minimum: 0, maximum: 100000, description: 'Failed password sign-ins from one client address that make it wait (default 50; 0 turns the throttle off)' }),
          windowMinutes: Type.Integer({ minimum: 1, maximum: 1440, description: 'The window the failures are counted in (default 15)' }),
        },
        { additionalProperties: false, description: 'Per-address throttle of password sign-ins: 429 `rate_limited` with Retry-After, without checking the password. Always present in answers; optional in a PUT (absent keeps the default).' },
      ),
    ),
    orgAccessControl: Type.Boolean({ description: 'Users reach only objects of their organizations and their descendants' }),
  },
  { additionalProperties: false },
);

/** The tenant's security settings (`account.admin`). */
export function settingsRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get('/settings/security', adminRoute('account.admin', { tags: ['settings'], summary: 'Security settings: password rules, lockout, idle timeout, MFA policy, IP allowlist, sign-in throttle, organizational access control', response: { 200: SecuritySettings, ...Problems } }), async (request) =>
    rt.securityAdmin.get(authOf(request), tenantOf(request).id),
  );

  app.put(
    '/settings/security',
    adminRoute('account.admin', {
      tags: ['settings'],
      summary: 'Replace the security settings (the whole document); recorded with before and after',
      body: SecuritySettings,
      response: { 200: SecuritySettings, ...Problems },
    }),
    async (request) => rt.securityAdmin.put(authOf(request), tenantOf(request).id, request.body),
  );
}
