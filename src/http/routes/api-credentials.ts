import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { RegisterApiCredentialInput } from '../../iam/client-certificates.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';

const Id = Type.String({ pattern: '^[0-9a-hjkmnp-tv-z]{26}$', description: 'Object id' });
const Name = Type.String({ minLength: 1, maxLength: 100, description: 'What the credential is for (e.g. the client system)' });
const Problems = { 400: { $ref: 'Problem#' }, 401: { $ref: 'Problem#' }, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' }, 409: { $ref: 'Problem#' } };

const Credential = Type.Object(
  {
    id: Type.String(),
    kind: Type.Union([Type.Literal('ca'), Type.Literal('fingerprint')]),
    name: Type.String(),
    fingerprint: Type.String({ description: 'SHA-256 fingerprint of the CA certificate, or the pinned one' }),
    subject: Type.Union([Type.String(), Type.Null()]),
    notAfter: Type.Union([Type.String(), Type.Null()]),
    createdAt: Type.String(),
  },
  { additionalProperties: false },
);

const Register = Type.Union([
  Type.Object(
    { kind: Type.Literal('ca'), name: Name, certificate: Type.String({ minLength: 1, maxLength: 16384, description: 'One CA certificate, PEM (basicConstraints CA:TRUE)' }) },
    { additionalProperties: false },
  ),
  Type.Object(
    { kind: Type.Literal('fingerprint'), name: Name, fingerprint: Type.String({ minLength: 64, maxLength: 95, description: 'SHA-256 fingerprint of one client certificate, hex, colons allowed' }) },
    { additionalProperties: false },
  ),
]);

/**
 * Client-certificate credentials of API users, for administrators
 * (`users.manage`): the CAs that issue a user's certificates, or pinned
 * certificate fingerprints. `POST /auth/token` without a password checks the
 * TLS client certificate against them.
 */
export function apiCredentialRoutes(app: FastifyInstance, rt: Runtime): void {
  const admin = { tenant: { from: 'credential' as const }, permission: 'users.manage' as const };
  const params = Type.Object({ id: Id }, { additionalProperties: false });

  app.get(
    '/users/:id/credentials',
    {
      config: admin,
      schema: { tags: ['users'], summary: "An API user's client-certificate credentials", params, response: { 200: Type.Object({ credentials: Type.Array(Credential) }, { additionalProperties: false }), ...Problems } },
    },
    async (request) => {
      const { id } = request.params as { id: string };
      return { credentials: await rt.clientCertificates.list(authOf(request), tenantOf(request).id, id) };
    },
  );

  app.post(
    '/users/:id/credentials',
    {
      config: admin,
      schema: {
        tags: ['users'],
        summary: 'Register a CA certificate or pin a certificate fingerprint for an API user',
        params,
        body: Register,
        response: { 201: Credential, ...Problems },
      },
    },
    async (request, reply) => {
      const { id } = request.params as { id: string };
      const created = await rt.clientCertificates.register(authOf(request), tenantOf(request).id, id, request.body as RegisterApiCredentialInput);
      return reply.code(201).send(created);
    },
  );

  app.delete(
    '/users/:id/credentials/:credentialId',
    {
      config: admin,
      schema: {
        tags: ['users'],
        summary: "Remove a credential; ends the API user's tokens obtained by certificate",
        params: Type.Object({ id: Id, credentialId: Id }, { additionalProperties: false }),
        response: { 204: Type.Null(), ...Problems },
      },
    },
    async (request, reply) => {
      const { id, credentialId } = request.params as { id: string; credentialId: string };
      await rt.clientCertificates.remove(authOf(request), tenantOf(request).id, id, credentialId);
      return reply.code(204).send();
    },
  );
}
