import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { CreateUserInput } from '../../iam/user-service.js';
import type { Runtime } from '../../runtime.js';
import { IDEMPOTENCY_KEY_PATTERN, idempotent } from '../idempotency.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Id, IdParams, NoContent, Problems, adminRoute } from './admin-schemas.js';

const Username = Type.String({ minLength: 2, maxLength: 100, pattern: '^[A-Za-z0-9][A-Za-z0-9._@+-]{1,99}$', description: 'Letters, digits and . _ @ + -' });
const Email = Type.String({ minLength: 3, maxLength: 254, pattern: '^[^\\s@]{1,64}@[^\\s@]+\\.[^\\s@]+$' });
const FullName = Type.String({ maxLength: 200 });
const RoleKey = Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z0-9-]{1,64}$', description: 'A built-in role key (e.g. `viewer`) or a custom role id' });
const Roles = Type.Array(RoleKey, { maxItems: 20 });
const OrgIds = Type.Array(Id, { maxItems: 50 });

const User = Type.Object(
  {
    id: Type.String(),
    username: Type.String(),
    email: Type.String(),
    fullName: Type.Union([Type.String(), Type.Null()]),
    kind: Type.Union([Type.Literal('console'), Type.Literal('api')]),
    status: Type.Union([Type.Literal('active'), Type.Literal('suspended')]),
    locked: Type.Boolean(),
    lockedUntil: Type.Union([Type.String({ description: 'RFC 3339 time, or `until-unlocked` (an administrator must unlock)' }), Type.Null()]),
    mustChangePassword: Type.Boolean(),
    roles: Type.Array(Type.String()),
    orgIds: Type.Array(Type.String()),
    lastLoginAt: Type.Union([Type.String(), Type.Null()]),
    createdAt: Type.String(),
    updatedAt: Type.String(),
  },
  { additionalProperties: false },
);

/**
 * User administration: console users and API users of the caller's tenant.
 * Reading needs `users.read`, every change `users.manage`; the user service
 * refuses grants of permissions the caller lacks and, under organizational
 * access control, users outside the caller's organizations (404).
 */
export function userRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get(
    '/users',
    adminRoute('users.read', {
      tags: ['users'],
      summary: 'Users and API users in username order (only those in reach under organizational access control); pass `nextCursor` back as `cursor` for the next page',
      querystring: Type.Object({ cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 400 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })) }, { additionalProperties: false }),
      response: { 200: Type.Object({ users: Type.Array(User), nextCursor: Type.Union([Type.String(), Type.Null()]) }, { additionalProperties: false }), ...Problems },
    }),
    async (request) => {
      const q = request.query as { cursor?: string; limit: number };
      return rt.users.list(authOf(request), tenantOf(request).id, { limit: q.limit, ...(q.cursor !== undefined ? { cursor: q.cursor } : {}) });
    },
  );

  app.get('/users/:id', adminRoute('users.read', { tags: ['users'], summary: 'One user', params: IdParams, response: { 200: User, ...Problems } }), async (request) =>
    rt.users.get(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.post(
    '/users',
    adminRoute('users.manage', {
      tags: ['users'],
      summary: 'Create a console user or API user',
      description: 'A random temporary password (valid 72 hours, to be changed at first sign-in) is mailed to the user; it is never part of the answer. An `Idempotency-Key` header makes a retry return the first answer (for 24 hours).',
      headers: Type.Object({ 'idempotency-key': Type.Optional(Type.String({ pattern: IDEMPOTENCY_KEY_PATTERN, description: 'Client-chosen key: a retry with the same key and body replays the first answer' })) }),
      body: Type.Object(
        {
          username: Username,
          email: Email,
          fullName: Type.Optional(FullName),
          kind: Type.Optional(Type.Union([Type.Literal('console'), Type.Literal('api')], { default: 'console' })),
          roles: Type.Optional(Roles),
          orgIds: Type.Optional(OrgIds),
        },
        { additionalProperties: false },
      ),
      response: { 201: User, 422: { $ref: 'Problem#' }, ...Problems },
    }),
    async (request, reply) => {
      const t = tenantOf(request);
      return idempotent(request, reply, rt.clock, async () => ({ status: 201, body: await rt.users.create(authOf(request), { id: t.id, name: t.name }, request.body as CreateUserInput) }));
    },
  );

  app.patch(
    '/users/:id',
    adminRoute('users.manage', {
      tags: ['users'],
      summary: "Change a user's email address or full name",
      params: IdParams,
      body: Type.Object({ email: Type.Optional(Email), fullName: Type.Optional(Type.Union([FullName, Type.Null()])) }, { additionalProperties: false, minProperties: 1 }),
      response: { 200: User, ...Problems },
    }),
    async (request) => rt.users.update(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, request.body as { email?: string; fullName?: string | null }),
  );

  app.put(
    '/users/:id/roles',
    adminRoute('users.manage', {
      tags: ['users'],
      summary: "Replace a user's roles (you cannot change your own, nor grant or take away permissions you do not hold)",
      params: IdParams,
      body: Type.Object({ roles: Roles }, { additionalProperties: false }),
      response: { 200: User, ...Problems },
    }),
    async (request) => rt.users.setRoles(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, (request.body as { roles: string[] }).roles),
  );

  app.put(
    '/users/:id/orgs',
    adminRoute('users.manage', {
      tags: ['users'],
      summary: "Replace a user's organizations",
      params: IdParams,
      body: Type.Object({ orgIds: OrgIds }, { additionalProperties: false }),
      response: { 200: User, ...Problems },
    }),
    async (request) => rt.users.setOrgs(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, (request.body as { orgIds: string[] }).orgIds),
  );

  const actions = [
    ['suspend', 'Suspend a user: every session and token ends at once; sign-in fails until activated', (auth, tenantId, id) => rt.users.suspend(auth, tenantId, id)],
    ['activate', 'Activate a suspended user', (auth, tenantId, id) => rt.users.activate(auth, tenantId, id)],
    ['unlock', 'Unlock a user locked out by failed sign-ins', (auth, tenantId, id) => rt.users.unlock(auth, tenantId, id)],
  ] as const satisfies ReadonlyArray<readonly [string, string, (auth: ReturnType<typeof authOf>, tenantId: string, id: string) => Promise<unknown>]>;
  for (const [action, summary, act] of actions) {
    app.post(`/users/:id/${action}`, adminRoute('users.manage', { tags: ['users'], summary, params: IdParams, response: { 200: User, ...Problems } }), async (request) =>
      act(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
    );
  }

  app.post(
    '/users/:id/password-reset',
    adminRoute('users.manage', {
      tags: ['users'],
      summary: 'Mail the user a password-reset link (single use, 2 hours)',
      params: IdParams,
      response: { 202: Type.Object({ status: Type.Literal('accepted') }, { additionalProperties: false }), ...Problems },
    }),
    async (request, reply) => {
      const t = tenantOf(request);
      await rt.users.triggerPasswordReset(authOf(request), { id: t.id, name: t.name }, (request.params as { id: string }).id);
      return reply.code(202).send({ status: 'accepted' as const });
    },
  );

  app.delete(
    '/users/:id',
    adminRoute('users.manage', { tags: ['users'], summary: 'Delete a user: sessions, tokens, devices, MFA and credentials go with it', params: IdParams, response: { 204: NoContent, ...Problems } }),
    async (request, reply) => {
      await rt.users.delete(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
      return reply.code(204).send();
    },
  );
}
