import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { OrgInput } from '../../iam/org-service.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Id, IdParams, NoContent, Problems, adminRoute } from './admin-schemas.js';

const OrgName = Type.String({ minLength: 1, maxLength: 100 });
const ParentId = Type.Union([Id, Type.Null()], { description: 'The parent organization; null for a top-level one' });

const Org = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    parentId: Type.Union([Type.String(), Type.Null()]),
    childCount: Type.Integer(),
    userCount: Type.Integer(),
    createdAt: Type.String(),
  },
  { additionalProperties: false },
);

/**
 * The organization tree. Reading needs `users.read`, changing `orgs.manage`;
 * under organizational access control the caller sees and changes only the
 * organizations it reaches.
 */
export function orgRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get('/orgs', adminRoute('users.read', { tags: ['organizations'], summary: 'Organizations (those in reach under organizational access control)', response: { 200: Type.Object({ orgs: Type.Array(Org) }, { additionalProperties: false }), ...Problems } }), async (request) => ({
    orgs: await rt.orgs.list(authOf(request), tenantOf(request).id),
  }));

  app.get('/orgs/:id', adminRoute('users.read', { tags: ['organizations'], summary: 'One organization', params: IdParams, response: { 200: Org, ...Problems } }), async (request) =>
    rt.orgs.get(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.post(
    '/orgs',
    adminRoute('orgs.manage', {
      tags: ['organizations'],
      summary: 'Create an organization',
      body: Type.Object({ name: OrgName, parentId: Type.Optional(ParentId) }, { additionalProperties: false }),
      response: { 201: Org, ...Problems },
    }),
    async (request, reply) => reply.code(201).send(await rt.orgs.create(authOf(request), tenantOf(request).id, request.body as OrgInput)),
  );

  app.patch(
    '/orgs/:id',
    adminRoute('orgs.manage', {
      tags: ['organizations'],
      summary: 'Rename an organization or move it (with its sub-organizations) under another',
      params: IdParams,
      body: Type.Object({ name: Type.Optional(OrgName), parentId: Type.Optional(ParentId) }, { additionalProperties: false, minProperties: 1 }),
      response: { 200: Org, ...Problems },
    }),
    async (request) => rt.orgs.update(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, request.body as OrgInput),
  );

  app.delete(
    '/orgs/:id',
    adminRoute('orgs.manage', { tags: ['organizations'], summary: 'Delete an organization without sub-organizations or users', params: IdParams, response: { 204: NoContent, ...Problems } }),
    async (request, reply) => {
      await rt.orgs.delete(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
      return reply.code(204).send();
    },
  );
}
