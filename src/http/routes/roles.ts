import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { ALL_PERMISSIONS } from '../../iam/permissions.js';
import type { RoleInput } from '../../iam/role-service.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { NoContent, Problems, adminRoute } from './admin-schemas.js';

const PermissionName = Type.Union(
  ALL_PERMISSIONS.map((p) => Type.Literal(p)),
  { description: 'A permission of the catalogue (GET /permissions)' },
);
const RoleName = Type.String({ minLength: 1, maxLength: 64 });
const Description = Type.String({ maxLength: 500 });
const RoleParams = Type.Object({ id: Type.String({ pattern: '^[a-z0-9-]{1,64}$', description: 'A built-in role key or a custom role id' }) }, { additionalProperties: false });

const Role = Type.Object(
  {
    id: Type.String({ description: 'Built-in key or custom role id: what users are assigned' }),
    name: Type.String(),
    description: Type.String(),
    builtin: Type.Boolean({ description: 'Built-in roles are read-only' }),
    permissions: Type.Array(Type.String()),
    userCount: Type.Integer(),
    createdAt: Type.Union([Type.String(), Type.Null()]),
    updatedAt: Type.Union([Type.String(), Type.Null()]),
  },
  { additionalProperties: false },
);

/**
 * Roles: the built-in ones (read-only) and custom ones made from the
 * permission catalogue. Reading needs `users.read`; creating, changing and
 * deleting custom roles `roles.manage` — and only with permissions the caller
 * holds itself.
 */
export function roleRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get(
    '/permissions',
    adminRoute('users.read', {
      tags: ['roles'],
      summary: 'The permission catalogue',
      response: { 200: Type.Object({ permissions: Type.Array(Type.Object({ name: Type.String(), description: Type.String() }, { additionalProperties: false })) }, { additionalProperties: false }), ...Problems },
    }),
    async (request) => ({ permissions: rt.roles.permissions(authOf(request)) }),
  );

  app.get('/roles', adminRoute('users.read', { tags: ['roles'], summary: 'Built-in and custom roles with their permissions', response: { 200: Type.Object({ roles: Type.Array(Role) }, { additionalProperties: false }), ...Problems } }), async (request) => ({
    roles: await rt.roles.list(authOf(request), tenantOf(request).id),
  }));

  app.get('/roles/:id', adminRoute('users.read', { tags: ['roles'], summary: 'One role', params: RoleParams, response: { 200: Role, ...Problems } }), async (request) =>
    rt.roles.get(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.post(
    '/roles',
    adminRoute('roles.manage', {
      tags: ['roles'],
      summary: 'Create a custom role (only with permissions you hold)',
      body: Type.Object({ name: RoleName, description: Type.Optional(Description), permissions: Type.Array(PermissionName, { minItems: 1, maxItems: ALL_PERMISSIONS.length }) }, { additionalProperties: false }),
      response: { 201: Role, ...Problems },
    }),
    async (request, reply) => reply.code(201).send(await rt.roles.create(authOf(request), tenantOf(request).id, request.body as RoleInput)),
  );

  app.patch(
    '/roles/:id',
    adminRoute('roles.manage', {
      tags: ['roles'],
      summary: "Change a custom role's name, description or permissions (its holders' permissions change at once)",
      params: RoleParams,
      body: Type.Object(
        { name: Type.Optional(RoleName), description: Type.Optional(Description), permissions: Type.Optional(Type.Array(PermissionName, { minItems: 1, maxItems: ALL_PERMISSIONS.length })) },
        { additionalProperties: false, minProperties: 1 },
      ),
      response: { 200: Role, ...Problems },
    }),
    async (request) => rt.roles.update(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, request.body as RoleInput),
  );

  app.delete(
    '/roles/:id',
    adminRoute('roles.manage', { tags: ['roles'], summary: 'Delete a custom role that no user holds', params: RoleParams, response: { 204: NoContent, ...Problems } }),
    async (request, reply) => {
      await rt.roles.delete(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
      return reply.code(204).send();
    },
  );
}
