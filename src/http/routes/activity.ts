import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { checkFilter } from '../../audit/audit-filter.js';
import type { AuditFilter, AuditOutcome, ExportFormat } from '../../audit/audit-types.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Problems, adminRoute } from './admin-schemas.js';

const Time = (description: string) => Type.String({ minLength: 10, maxLength: 40, description: `${description}: RFC 3339 time, e.g. 2026-01-31T00:00:00Z` });
const Outcome = Type.Union([Type.Literal('success'), Type.Literal('failure'), Type.Literal('denied')]);
const Filters = {
  since: Type.Optional(Time('Only events at or after this time')),
  until: Type.Optional(Time('Only events before this time')),
  type: Type.Optional(Type.Array(Type.String({ pattern: '^[a-z0-9_.*-]{1,128}$' }), { maxItems: 20, description: 'Event types; `*` matches any run of characters (`auth.*`). Repeat the parameter for several.' })),
  outcome: Type.Optional(Outcome),
};

const Event = Type.Object(
  {
    seq: Type.Integer({ description: 'Position in the stream' }),
    id: Type.String(),
    time: Type.String(),
    type: Type.String(),
    tenant: Type.Union([Type.String(), Type.Null()]),
    principal: Type.Object({ type: Type.String(), id: Type.String(), name: Type.Optional(Type.String()) }, { additionalProperties: false }),
    source: Type.Optional(Type.Object({ ip: Type.Optional(Type.String()), userAgent: Type.Optional(Type.String()), sessionId: Type.Optional(Type.String()) }, { additionalProperties: false })),
    request: Type.Optional(Type.Object({ id: Type.String(), method: Type.String(), path: Type.String() }, { additionalProperties: false })),
    resource: Type.Optional(Type.Object({ type: Type.String(), id: Type.Optional(Type.String()), name: Type.Optional(Type.String()) }, { additionalProperties: false })),
    outcome: Outcome,
    code: Type.Optional(Type.String()),
    details: Type.Optional(Type.Object({}, { additionalProperties: true })),
    change: Type.Optional(Type.Object({ before: Type.Optional(Type.Object({}, { additionalProperties: true })), after: Type.Optional(Type.Object({}, { additionalProperties: true })) }, { additionalProperties: false })),
  },
  { additionalProperties: false },
);

interface FilterQuery {
  since?: string;
  until?: string;
  type?: string[];
  outcome?: AuditOutcome;
}

function filterOf(q: FilterQuery): AuditFilter {
  return {
    ...(q.since !== undefined ? { since: q.since } : {}),
    ...(q.until !== undefined ? { until: q.until } : {}),
    ...(q.type !== undefined ? { types: q.type } : {}),
    ...(q.outcome !== undefined ? { outcome: q.outcome } : {}),
  };
}

const CONTENT_TYPES: Record<ExportFormat, string> = { jsonl: 'application/x-ndjson; charset=utf-8', csv: 'text/csv; charset=utf-8' };

/**
 * The tenant's activity stream (`activity.read`): a filtered, paged query
 * (newest first), and a streamed export (oldest first). Exports are
 * recorded in the stream before they start, as the CLI's are — a bulk copy
 * of the audit trail leaving the system is what an investigator must be
 * able to see. Page queries are not recorded: the console polls them, and an
 * event per look at the stream would bury the events it exists to show.
 */
export function activityRoutes(app: FastifyInstance, rt: Runtime): void {
  app.get(
    '/activity',
    adminRoute('activity.read', {
      tags: ['activity'],
      summary: 'Activity stream events, newest first; pass `nextCursor` back as `cursor` for older ones',
      querystring: Type.Object({ ...Filters, cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })) }, { additionalProperties: false }),
      response: { 200: Type.Object({ events: Type.Array(Event), nextCursor: Type.Optional(Type.String()) }, { additionalProperties: false }), ...Problems },
    }),
    async (request) => {
      const q = request.query as FilterQuery & { cursor?: string; limit: number };
      return rt.audit.query(tenantOf(request).id, { ...filterOf(q), ...(q.cursor !== undefined ? { cursor: q.cursor } : {}), limit: q.limit });
    },
  );

  app.get(
    '/activity/export',
    adminRoute('activity.read', {
      tags: ['activity'],
      summary: 'Export matching events, oldest first, as JSON Lines or CSV (streamed; the export itself is recorded)',
      querystring: Type.Object({ ...Filters, format: Type.Union([Type.Literal('jsonl'), Type.Literal('csv')], { default: 'jsonl' }) }, { additionalProperties: false }),
      response: {
        200: {
          description: 'One event per line: JSON Lines (the stored event with `seq`), or RFC 4180 CSV with a header row',
          content: { 'application/x-ndjson': { schema: { type: 'string' } }, 'text/csv': { schema: { type: 'string' } } },
        },
        ...Problems,
      },
    }),
    async (request, reply) => {
      const q = request.query as FilterQuery & { format: ExportFormat };
      const auth = authOf(request);
      const t = tenantOf(request);
      const filter = filterOf(q);
      checkFilter(filter);
      await rt.audit.record(t.id, { type: 'audit.export', outcome: 'success', actor: auth, resource: { type: 'activity-stream', id: t.id }, details: { format: q.format, filter: { ...filter } } });
      // The first page is read before anything is sent, so a failure there is still a problem document.
      const chunks = rt.audit.export(t.id, filter, q.format)[Symbol.asyncIterator]();
      const first = await chunks.next();
      async function* rest(): AsyncGenerator<string> {
        if (first.done) return;
        yield first.value;
        for (let next = await chunks.next(); !next.done; next = await chunks.next()) yield next.value;
      }
      const extension = q.format === 'csv' ? 'csv' : 'jsonl';
      return reply
        .type(CONTENT_TYPES[q.format])
        .header('content-disposition', `attachment; filename="activity-${t.name}.${extension}"`)
        .send(Readable.from(rest()));
    },
  );
}
