import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { Storage } from '../../storage/storage.js';

/**
 * Liveness (`/healthz`: the process answers) and readiness (`/readyz`: storage
 * answers and the server is not shutting down).
 */
export function healthRoutes(app: FastifyInstance, deps: { storage: Storage; isShuttingDown: () => boolean }): void {
  const Status = Type.Object({ status: Type.String() }, { additionalProperties: false });
  app.get('/healthz', { schema: { tags: ['operations'], summary: 'Liveness', response: { 200: Status } } }, async () => ({ status: 'ok' }));
  app.get(
    '/readyz',
    { schema: { tags: ['operations'], summary: 'Readiness', response: { 200: Status, 503: Status } } },
    async (_request, reply) => {
      if (deps.isShuttingDown()) return reply.code(503).send({ status: 'shutting-down' });
      try {
        await deps.storage.ping();
      } catch {
        return reply.code(503).send({ status: 'storage-unavailable' });
      }
      return { status: 'ready' };
    },
  );
}
