import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CustosError } from '../../core/errors.js';
import type { Runtime } from '../../runtime.js';

const Query = Type.Object(
  { tenant: Type.String({ minLength: 3, maxLength: 63, pattern: '^[a-z0-9][a-z0-9-]*[a-z0-9]$', description: 'Tenant name' }) },
  { additionalProperties: false },
);

const LoginOptions = Type.Object(
  {
    tenant: Type.String(),
    methods: Type.Array(Type.String({ description: 'password | saml' })),
  },
  { additionalProperties: false },
);

/**
 * `GET /api/v1/auth/options?tenant=NAME`: how console users of a tenant sign
 * in, asked by the console before it shows a login form: `password` unless
 * the tenant turned password sign-in off for SAML, `saml` when SAML is
 * enabled. Runs before authentication, so the tenant comes from the query.
 */
export function loginOptionsRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get(
    '/auth/options',
    {
      config: { tenant: { from: 'query', field: 'tenant' } },
      schema: {
        tags: ['authentication'],
        summary: 'Sign-in methods of a tenant',
        querystring: Query,
        response: { 200: LoginOptions, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' } },
      },
    },
    async (request) => {
      const tenant = request.tenant;
      if (!tenant) throw new CustosError('internal_error');
      const saml = await rt.samlSettings.current(tenant.id);
      const methods = saml.enabled ? (saml.passwordLogin ? ['password', 'saml'] : ['saml']) : ['password'];
      return { tenant: tenant.name, methods };
    },
  );
}
