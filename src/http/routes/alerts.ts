import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import type { AlertRuleInput } from '../../alerts/alert-service.js';
import type { Runtime } from '../../runtime.js';
import { authOf, tenantOf } from '../plugins/tenant-binding.js';
import { Id, IdParams, NoContent, Problems, adminRoute } from './admin-schemas.js';

const Outcome = Type.Union([Type.Literal('success'), Type.Literal('failure'), Type.Literal('denied')]);
const Pattern = Type.String({ pattern: '^[a-z0-9_.*-]{1,100}$', description: 'Event type; `*` matches any run of characters' });
const MatchValue = Type.Union([Type.String({ maxLength: 200 }), Type.Number(), Type.Boolean()]);

const Rule = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    enabled: Type.Boolean(),
    eventTypes: Type.Array(Type.String()),
    outcomes: Type.Union([Type.Array(Outcome), Type.Null()]),
    match: Type.Union([Type.Record(Type.String(), MatchValue), Type.Null()]),
    threshold: Type.Integer(),
    windowSeconds: Type.Integer(),
    emails: Type.Array(Type.String()),
    webhookIds: Type.Array(Type.String()),
    lastFiredAt: Type.Union([Type.String(), Type.Null()]),
    createdAt: Type.String(),
    updatedAt: Type.String(),
  },
  { additionalProperties: false },
);

const RuleInput = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 100 }),
    enabled: Type.Optional(Type.Boolean()),
    eventTypes: Type.Array(Pattern, { minItems: 1, maxItems: 20 }),
    outcomes: Type.Optional(Type.Array(Outcome, { minItems: 1, maxItems: 3 })),
    match: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,100}$' }), MatchValue, { maxProperties: 10, description: 'Dotted path in the event → the value it must have, e.g. {"details.role": "account-administrator"}' })),
    threshold: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000, description: 'Fire when this many matching events fall in the window (default 1)' })),
    windowSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 604800, description: 'Default 600' })),
    emails: Type.Optional(Type.Array(Type.String({ maxLength: 254 }), { maxItems: 20 })),
    webhookIds: Type.Optional(Type.Array(Id, { maxItems: 10 })),
  },
  { additionalProperties: false },
);

const Firing = Type.Object({ id: Type.String(), ruleId: Type.String(), firedAt: Type.String(), eventId: Type.String(), count: Type.Integer() }, { additionalProperties: false });

const Webhook = Type.Object({ id: Type.String(), url: Type.String(), description: Type.String(), enabled: Type.Boolean(), createdAt: Type.String() }, { additionalProperties: false });
const NewWebhook = Type.Object(
  { ...Webhook.properties, secret: Type.String({ description: 'Signing secret for X-Custos-Signature: shown this once, never again' }) },
  { additionalProperties: false },
);

const Delivery = Type.Object(
  {
    id: Type.String(),
    endpointId: Type.String(),
    eventType: Type.String(),
    state: Type.Union([Type.Literal('pending'), Type.Literal('delivered'), Type.Literal('failed')]),
    attempts: Type.Integer(),
    lastStatus: Type.Union([Type.Integer(), Type.Null()]),
    lastError: Type.Union([Type.String(), Type.Null()]),
    createdAt: Type.String(),
    deliveredAt: Type.Union([Type.String(), Type.Null()]),
    nextAttemptAt: Type.Union([Type.String(), Type.Null()]),
  },
  { additionalProperties: false },
);

/**
 * Alert rules over the activity stream, the webhook endpoints they notify,
 * and the deliveries to them (`alerts.manage`). A webhook's signing secret
 * is in the creation answer only.
 */
export function alertRoutes(app: FastifyInstance, rt: Runtime): void {
  const tags = ['alerts'];

  app.get('/alerts/rules', adminRoute('alerts.manage', { tags, summary: 'Alert rules', response: { 200: Type.Object({ rules: Type.Array(Rule) }, { additionalProperties: false }), ...Problems } }), async (request) => ({
    rules: await rt.alertAdmin.listRules(authOf(request), tenantOf(request).id),
  }));

  app.get('/alerts/rules/:id', adminRoute('alerts.manage', { tags, summary: 'One alert rule', params: IdParams, response: { 200: Rule, ...Problems } }), async (request) =>
    rt.alertAdmin.getRule(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.post(
    '/alerts/rules',
    adminRoute('alerts.manage', {
      tags,
      summary: 'Create an alert rule: event types, outcomes and fields to match, a threshold in a window, mail and webhook recipients',
      body: RuleInput,
      response: { 201: Rule, ...Problems },
    }),
    async (request, reply) => reply.code(201).send(await rt.alertAdmin.createRule(authOf(request), tenantOf(request).id, request.body as AlertRuleInput)),
  );

  app.put(
    '/alerts/rules/:id',
    adminRoute('alerts.manage', {
      tags,
      summary: "Replace an alert rule's definition (the whole rule, as at creation; `enabled: false` pauses it); recorded with before and after",
      params: IdParams,
      body: RuleInput,
      response: { 200: Rule, ...Problems },
    }),
    async (request) => rt.alertAdmin.replaceRule(authOf(request), tenantOf(request).id, (request.params as { id: string }).id, request.body as AlertRuleInput),
  );

  app.delete('/alerts/rules/:id', adminRoute('alerts.manage', { tags, summary: 'Delete an alert rule', params: IdParams, response: { 204: NoContent, ...Problems } }), async (request, reply) => {
    await rt.alertAdmin.deleteRule(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
    return reply.code(204).send();
  });

  app.get(
    '/alerts/rules/:id/firings',
    adminRoute('alerts.manage', { tags, summary: "The rule's latest firings (up to 200), newest first", params: IdParams, response: { 200: Type.Object({ firings: Type.Array(Firing) }, { additionalProperties: false }), ...Problems } }),
    async (request) => ({ firings: await rt.alertAdmin.firings(authOf(request), tenantOf(request).id, (request.params as { id: string }).id) }),
  );

  app.get('/alerts/webhooks', adminRoute('alerts.manage', { tags, summary: 'Webhook endpoints (never their secrets)', response: { 200: Type.Object({ webhooks: Type.Array(Webhook) }, { additionalProperties: false }), ...Problems } }), async (request) => ({
    webhooks: await rt.alertAdmin.listWebhooks(authOf(request), tenantOf(request).id),
  }));

  app.post(
    '/alerts/webhooks',
    adminRoute('alerts.manage', {
      tags,
      summary: 'Register a webhook endpoint (https; plain http only to loopback); the answer holds its signing secret, once',
      body: Type.Object({ url: Type.String({ minLength: 8, maxLength: 2048 }), description: Type.Optional(Type.String({ maxLength: 200 })) }, { additionalProperties: false }),
      response: { 201: NewWebhook, ...Problems },
    }),
    async (request, reply) => reply.code(201).send(await rt.alertAdmin.createWebhook(authOf(request), tenantOf(request).id, request.body as { url: string; description?: string })),
  );

  app.post(
    '/alerts/webhooks/:id/rotate-secret',
    adminRoute('alerts.manage', {
      tags,
      summary: "Replace a webhook endpoint's signing secret; the answer holds the new secret, once. Every delivery attempt from now on, pending retries included, is signed with it and, for 24 hours, also with the previous one (a second `v1=` in X-Custos-Signature)",
      params: IdParams,
      response: { 200: Type.Object({ ...NewWebhook.properties, previousSecretValidUntil: Type.String({ description: 'Until when deliveries also carry a signature under the previous secret' }) }, { additionalProperties: false }), ...Problems },
    }),
    async (request) => rt.alertAdmin.rotateWebhookSecret(authOf(request), tenantOf(request).id, (request.params as { id: string }).id),
  );

  app.delete('/alerts/webhooks/:id', adminRoute('alerts.manage', { tags, summary: 'Delete a webhook endpoint; its pending deliveries fail', params: IdParams, response: { 204: NoContent, ...Problems } }), async (request, reply) => {
    await rt.alertAdmin.deleteWebhook(authOf(request), tenantOf(request).id, (request.params as { id: string }).id);
    return reply.code(204).send();
  });

  app.get(
    '/alerts/deliveries',
    adminRoute('alerts.manage', {
      tags,
      summary: 'Latest webhook deliveries, newest first, with their state and last result',
      querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 })) }, { additionalProperties: false }),
      response: { 200: Type.Object({ deliveries: Type.Array(Delivery) }, { additionalProperties: false }), ...Problems },
    }),
    async (request) => ({ deliveries: await rt.alertAdmin.deliveries(authOf(request), tenantOf(request).id, (request.query as { limit: number }).limit) }),
  );
}
