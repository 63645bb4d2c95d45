import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CONSOLE_EXPORT_LIMIT, MAX_BATCH, type Filter } from '../../data/record-service.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';

const Id = Type.String({ pattern: '^[0-9a-hjkmnp-tv-z]{26}$', description: 'A lower-case ULID' });
const Problems = { 400: { $ref: 'Problem#' }, 401: { $ref: 'Problem#' }, 403: { $ref: 'Problem#' }, 404: { $ref: 'Problem#' }, 409: { $ref: 'Problem#' }, 422: { $ref: 'Problem#' }, 423: { $ref: 'Problem#' } };

const Mask = Type.Union([
  Type.Object({ kind: Type.Literal('email') }, { additionalProperties: false }),
  Type.Object({ kind: Type.Literal('phone') }, { additionalProperties: false }),
  Type.Object({ kind: Type.Literal('full') }, { additionalProperties: false }),
  Type.Object({ kind: Type.Literal('partial'), keepFirst: Type.Integer({ minimum: 0, maximum: 8 }), keepLast: Type.Integer({ minimum: 0, maximum: 8 }) }, { additionalProperties: false }),
]);
const FieldInput = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Z][A-Z0-9_]{0,63}$' }),
    type: Type.Union(['string', 'email', 'phone', 'number', 'boolean', 'date', 'timestamp', 'json'].map((t) => Type.Literal(t))),
    classification: Type.Union([Type.Literal('pii'), Type.Literal('sensitive'), Type.Literal('plain')]),
    required: Type.Optional(Type.Boolean()),
    unique: Type.Optional(Type.Boolean()),
    indexed: Type.Optional(Type.Boolean()),
    mask: Type.Optional(Mask),
  },
  { additionalProperties: false },
);
const Field = Type.Object(
  {
    name: Type.String(),
    type: Type.String(),
    classification: Type.String(),
    required: Type.Boolean(),
    unique: Type.Boolean(),
    indexed: Type.Boolean(),
    mask: Type.Union([Mask, Type.Null()]),
    standard: Type.Boolean(),
    computed: Type.Boolean(),
  },
  { additionalProperties: false },
);
const List = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    description: Type.String(),
    orgId: Type.Union([Type.String(), Type.Null()]),
    fields: Type.Array(Field),
    schemaVersion: Type.Integer(),
    recordCount: Type.Integer(),
    createdAt: Type.String(),
    updatedAt: Type.String(),
  },
  { additionalProperties: false },
);
const Record = Type.Object(
  { id: Type.String(), fields: Type.Record(Type.String(), Type.Unknown(), { description: 'Field values; pii values masked without data.pii.view' }), createdAt: Type.String(), updatedAt: Type.String() },
  { additionalProperties: false },
);
const Values = Type.Record(Type.String({ pattern: '^[A-Z][A-Z0-9_]{0,63}$' }), Type.Unknown(), { description: 'Field name → value' });
const MatchKey = Type.Union([Type.Literal('CUSTOMER_ID_'), Type.Literal('EMAIL_ADDRESS_'), Type.Literal('EMAIL_SHA256_HASH_'), Type.Literal('EMAIL_MD5_HASH_')]);

/** Parses `filter=FIELD:value` query parameters into equality filters. */
function filtersOf(raw: string | string[] | undefined): Filter[] {
  const list = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  return list.map((f) => {
    const i = f.indexOf(':');
    if (i <= 0) return { field: f, value: '' };
    return { field: f.slice(0, i), value: f.slice(i + 1) };
  });
}

/** Lists, their schemas, their records, and exports. */
export function listRoutes(app: FastifyInstance, rt: Runtime): void {
  const perm = (permission: 'lists.read' | 'lists.write' | 'data.export') => ({ tenant: { from: 'credential' as const }, permission });

  app.get('/lists', { config: perm('lists.read'), schema: { tags: ['lists'], summary: 'Lists the principal can reach', response: { 200: Type.Object({ lists: Type.Array(List) }, { additionalProperties: false }), ...Problems } } }, async (request) => ({
    lists: await rt.lists.list(authOf(request), tenantOf(request).id),
  }));

  app.post(
    '/lists',
    {
      config: perm('lists.write'),
      schema: {
        tags: ['lists'],
        summary: 'Create a list with a declared schema (standard fields EMAIL_ADDRESS_, MOBILE_NUMBER_, CUSTOMER_ID_ and the oHashes are added)',
        body: Type.Object(
          { name: Type.String({ minLength: 1, maxLength: 100 }), description: Type.Optional(Type.String({ maxLength: 500 })), orgId: Type.Optional(Type.Union([Id, Type.Null()])), fields: Type.Optional(Type.Array(FieldInput, { maxItems: 200 })) },
          { additionalProperties: false },
        ),
        response: { 201: List, ...Problems },
      },
    },
    async (request, reply) => reply.code(201).send(await rt.lists.create(authOf(request), tenantOf(request).id, request.body as { name: string })),
  );

  app.get('/lists/:id', { config: perm('lists.read'), schema: { tags: ['lists'], summary: 'One list', params: Type.Object({ id: Id }), response: { 200: List, ...Problems } } }, async (request) =>
    rt.lists.get(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.delete('/lists/:id', { config: perm('lists.write'), schema: { tags: ['lists'], summary: 'Delete a list and its records', params: Type.Object({ id: Id }), response: { 204: Type.Null(), ...Problems } } }, async (request, reply) => {
    await rt.lists.delete(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
    return reply.code(204).send();
  });

  app.patch(
    '/lists/:id/schema',
    {
      config: perm('lists.write'),
      schema: {
        tags: ['lists'],
        summary: 'Change the schema: add fields, reclassify (values are re-encrypted or decrypted), drop fields — in one transaction',
        params: Type.Object({ id: Id }),
        body: Type.Object(
          {
            add: Type.Optional(Type.Array(FieldInput, { maxItems: 100 })),
            reclassify: Type.Optional(Type.Array(Type.Object({ name: Type.String({ maxLength: 64 }), classification: Type.Union([Type.Literal('pii'), Type.Literal('sensitive'), Type.Literal('plain')]) }, { additionalProperties: false }), { maxItems: 100 })),
            drop: Type.Optional(Type.Array(Type.String({ maxLength: 64 }), { maxItems: 100 })),
          },
          { additionalProperties: false },
        ),
        response: { 200: List, ...Problems },
      },
    },
    async (request) => rt.lists.changeSchema(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, request.body as never),
  );

  app.get(
    '/lists/:id/records',
    {
      config: perm('lists.read'),
      schema: {
        tags: ['records'],
        summary: 'Records, oldest first, with equality filters (`filter=FIELD:value`, repeatable; protected fields need a blind index) and a cursor',
        params: Type.Object({ id: Id }),
        querystring: Type.Object(
          { filter: Type.Optional(Type.Union([Type.String({ maxLength: 4200 }), Type.Array(Type.String({ maxLength: 4200 }), { maxItems: 10 })])), cursor: Type.Optional(Id), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ records: Type.Array(Record), nextCursor: Type.Optional(Type.String()) }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => {
      const q = request.query as { filter?: string | string[]; cursor?: string; limit?: number };
      return rt.records.search(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, { filters: filtersOf(q.filter), cursor: q.cursor, limit: q.limit });
    },
  );

  app.post(
    '/lists/:id/records',
    { config: perm('lists.write'), schema: { tags: ['records'], summary: 'Create one record', params: Type.Object({ id: Id }), body: Type.Object({ fields: Values }, { additionalProperties: false }), response: { 201: Record, ...Problems } } },
    async (request, reply) => reply.code(201).send(await rt.records.create(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, (request.body as { fields: unknown }).fields)),
  );

  app.post(
    '/lists/:id/records/merge',
    {
      config: perm('lists.write'),
      bodyLimit: 64 * 1024 * 1024,
      schema: {
        tags: ['records'],
        summary: `Upsert up to ${MAX_BATCH} records by a match key, all or nothing (every rejected record's line and reason are listed)`,
        params: Type.Object({ id: Id }),
        body: Type.Object(
          {
            matchKey: MatchKey,
            insertOnNoMatch: Type.Optional(Type.Boolean()),
            updateOnMatch: Type.Optional(Type.Union([Type.Literal('merge'), Type.Literal('replace'), Type.Literal('none')])),
            records: Type.Array(Values, { minItems: 1, maxItems: MAX_BATCH }),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ inserted: Type.Integer(), updated: Type.Integer(), skipped: Type.Integer(), ids: Type.Array(Type.String()) }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => {
      const b = request.body as { matchKey: 'CUSTOMER_ID_'; insertOnNoMatch?: boolean; updateOnMatch?: 'merge'; records: unknown[] };
      return rt.records.merge(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, b.records, { matchKey: b.matchKey, insertOnNoMatch: b.insertOnNoMatch, updateOnMatch: b.updateOnMatch });
    },
  );

  app.post(
    '/lists/:id/records/delete',
    {
      config: perm('lists.write'),
      schema: {
        tags: ['records'],
        summary: `Delete up to ${MAX_BATCH} records by id`,
        params: Type.Object({ id: Id }),
        body: Type.Object({ ids: Type.Array(Id, { minItems: 1, maxItems: MAX_BATCH }) }, { additionalProperties: false }),
        response: { 200: Type.Object({ deleted: Type.Integer() }, { additionalProperties: false }), ...Problems },
      },
    },
    async (request) => rt.records.delete(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, (request.body as { ids: string[] }).ids),
  );

  const recordParams = Type.Object({ id: Id, recordId: Id });
  app.get('/lists/:id/records/:recordId', { config: perm('lists.read'), schema: { tags: ['records'], summary: 'One record', params: recordParams, response: { 200: Record, ...Problems } } }, async (request) => {
    const p = request.params as { id: string; recordId: string };
    return rt.records.get(authOf(request), tenantOf(request).id, p.id, p.recordId);
  });
  app.patch(
    '/lists/:id/records/:recordId',
    {
      config: perm('lists.write'),
      schema: {
        tags: ['records'],
        summary: 'Update a record (given fields change; `replace: true` clears the others)',
        params: recordParams,
        body: Type.Object({ fields: Values, replace: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: Record, ...Problems },
      },
    },
    async (request) => {
      const p = request.params as { id: string; recordId: string };
      const b = request.body as { fields: unknown; replace?: boolean };
      return rt.records.update(authOf(request), tenantOf(request).id, p.id, p.recordId, b.fields, b.replace ? 'replace' : 'merge');
    },
  );
  app.delete('/lists/:id/records/:recordId', { config: perm('lists.write'), schema: { tags: ['records'], summary: 'Delete a record', params: recordParams, response: { 204: Type.Null(), ...Problems } } }, async (request, reply) => {
    const p = request.params as { id: string; recordId: string };
    await rt.records.delete(authOf(request), tenantOf(request).id, p.id, [p.recordId]);
    return reply.code(204).send();
  });

  app.get(
    '/lists/:id/export',
    {
      config: perm('data.export'),
      schema: {
        tags: ['records'],
        summary: `Export a list as CSV or JSON Lines, streamed. With a console session the list may hold at most ${CONSOLE_EXPORT_LIMIT} records (422 export_limit_exceeded beyond); with an API token there is no limit`,
        params: Type.Object({ id: Id }),
        querystring: Type.Object({ format: Type.Optional(Type.Union([Type.Literal('csv'), Type.Literal('jsonl')])) }, { additionalProperties: false }),
        response: { 200: { type: 'string', description: 'text/csv or application/x-ndjson' }, ...Problems },
      },
    },
    async (request, reply) => {
      const auth = authOf(request);
      const format = (request.query as { format?: 'csv' | 'jsonl' }).format ?? 'csv';
      const listId = (request.params as { id: string }).id;
      const out = await rt.records.export(auth, tenantOf(request).id, listId, format, { limit: auth.via === 'session' ? CONSOLE_EXPORT_LIMIT : undefined, via: auth.via });
      reply.header('x-record-count', String(out.count));
      reply.header('content-disposition', `attachment; filename="${listId}.${format === 'csv' ? 'csv' : 'jsonl'}"`);
      reply.type(format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8');
      return reply.send(Readable.from(out.lines));
    },
  );
}
