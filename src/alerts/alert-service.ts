import { sql, type Kysely } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { AuditEvent, AuditOutcome } from '../audit/audit-types.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { isId, newId } from '../core/ids.js';
import type { Actor } from '../core/principal.js';
import { checkEmail } from '../core/validation.js';
import type { MailService } from '../notify/mail-service.js';
import type { WebhookService } from '../notify/webhook-service.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { AlertRulesTable } from './alert-tables.js';

export interface AlertRuleInput {
  name: string;
  enabled?: boolean;
  /** Event-type patterns; `*` matches any run of characters (`auth.lockout`, `keys.*`). */
  eventTypes: string[];
  /** Only these outcomes; any when absent. */
  outcomes?: AuditOutcome[];
  /** Dotted path → value the triggering event must carry, e.g. `{ "details.role": "account-administrator" }`. */
  match?: Record<string, string | number | boolean>;
  /** Fire when this many matching events fall in the window (default 1: every matching event). */
  threshold?: number;
  /** Window for the threshold, and the quiet time after a threshold rule fired (default 600 s). */
  windowSeconds?: number;
  emails?: string[];
  webhookIds?: string[];
}

export interface AlertRuleView extends Required<Omit<AlertRuleInput, 'outcomes' | 'match'>> {
  id: string;
  outcomes: AuditOutcome[] | null;
  match: Record<string, string | number | boolean> | null;
  lastFiredAt: string | null;
  createdAt: string;
  updatedAt: string;
}

const PATTERN = /^[a-z0-9_.*-]{1,100}$/;
const OUTCOMES: readonly AuditOutcome[] = ['success', 'failure', 'denied'];
const RULES_CACHE_MS = 5000;

function globToRegExp(pattern: string): RegExp {
  return new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
}

/** A glob as a SQL LIKE pattern with `\` as the escape character. */
function globToLike(pattern: string): string {
  return pattern.replace(/[\\%_]/g, (c) => `\\${c}`).replace(/\*/g, '%');
}

function valueAt(obj: unknown, dotted: string): unknown {
  let cur: unknown = obj;
  for (const part of dotted.split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

interface CompiledRule {
  row: AlertRulesTable;
  types: RegExp[];
  likes: string[];
  outcomes: AuditOutcome[] | null;
  match: Record<string, unknown> | null;
  emails: string[];
  webhookIds: string[];
}

/**
 * Alert rules over a tenant's activity stream: match event types, outcomes
 * and fields, with a threshold in a time window (e.g. 3 `auth.lockout` in 10
 * minutes; any grant of Account Administrator; any key disable). Rules are
 * evaluated inside the transaction that appends each event, so the
 * notifications they queue — mail in the outbox, webhook deliveries — commit
 * with the event, or not at all.
 */
export class AlertService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #audit: AuditService;
  readonly #mail: MailService;
  readonly #webhooks: WebhookService;
  readonly #cache = new Map<string, { rules: CompiledRule[]; at: number }>();

  constructor(deps: { storage: Storage; clock: Clock; audit: AuditService; mail: MailService; webhooks: WebhookService }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#audit = deps.audit;
    this.#mail = deps.mail;
    this.#webhooks = deps.webhooks;
    deps.audit.onAppend((db, tenantId, event) => this.#evaluate(db, tenantId, event));
  }

  #view(row: AlertRulesTable): AlertRuleView {
    return {
      id: row.id,
      name: row.name,
      enabled: row.enabled === 1,
      eventTypes: JSON.parse(row.event_types) as string[],
      outcomes: row.outcomes === null ? null : (JSON.parse(row.outcomes) as AuditOutcome[]),
      match: row.match === null ? null : (JSON.parse(row.match) as Record<string, string | number | boolean>),
      threshold: row.threshold,
      windowSeconds: row.window_seconds,
      emails: JSON.parse(row.emails) as string[],
      webhookIds: JSON.parse(row.webhook_ids) as string[],
      lastFiredAt: row.last_fired_at === null ? null : rfc3339(row.last_fired_at),
      createdAt: rfc3339(row.created_at),
      updatedAt: rfc3339(row.updated_at),
    };
  }

  async #check(db: Kysely<TenantDB>, input: AlertRuleInput): Promise<Omit<AlertRulesTable, 'id' | 'last_fired_at' | 'created_at' | 'updated_at'>> {
    const fail = (why: string): never => {
      throw new CustosError('validation_failed', why);
    };
    if (typeof input.name !== 'string' || input.name.trim().length === 0 || input.name.length > 100) fail('name must be 1-100 characters');
    if (!Array.isArray(input.eventTypes) || input.eventTypes.length === 0 || input.eventTypes.length > 20) fail('eventTypes must list 1-20 patterns');
    for (const p of input.eventTypes) if (typeof p !== 'string' || !PATTERN.test(p)) fail(`event type pattern ${String(p)} is invalid`);
    if (input.outcomes !== undefined && (!Array.isArray(input.outcomes) || input.outcomes.some((o) => !OUTCOMES.includes(o)))) fail('outcomes must be success, failure or denied');
    const threshold = input.threshold ?? 1;
    const windowSeconds = input.windowSeconds ?? 600;
    if (!Number.isInteger(threshold) || threshold < 1 || threshold > 10000) fail('threshold must be 1-10000');
    if (!Number.isInteger(windowSeconds) || windowSeconds < 1 || windowSeconds > 7 * 86400) fail('windowSeconds must be 1-604800');
    if (input.match !== undefined) {
      const entries = Object.entries(input.match);
      if (entries.length > 10) fail('match takes at most 10 fields');
      for (const [k, v] of entries) {
        if (!/^[A-Za-z0-9_.-]{1,100}$/.test(k) || !['string', 'number', 'boolean'].includes(typeof v)) fail(`match field ${k} is invalid`);
      }
    }
    const emails = (input.emails ?? []).map((e) => checkEmail(e));
    const webhookIds = input.webhookIds ?? [];
    if (emails.length + webhookIds.length === 0) fail('a rule needs at least one email address or webhook');
    if (emails.length > 20 || webhookIds.length > 10) fail('at most 20 emails and 10 webhooks');
    for (const id of webhookIds) {
      if (typeof id !== 'string' || !(await db.selectFrom('webhook_endpoints').select('id').where('id', '=', id).executeTakeFirst())) fail(`webhook ${String(id)} does not exist`);
    }
    return {
      name: input.name.trim(),
      enabled: input.enabled === false ? 0 : 1,
      event_types: JSON.stringify(input.eventTypes),
      outcomes: input.outcomes ? JSON.stringify(input.outcomes) : null,
      match: input.match ? JSON.stringify(input.match) : null,
      threshold,
      window_seconds: windowSeconds,
      emails: JSON.stringify(emails),
      webhook_ids: JSON.stringify(webhookIds),
    };
  }

  async create(tenantId: string, input: AlertRuleInput, actor: Actor): Promise<AlertRuleView> {
    const view = await this.#storage.tenant(tenantId).transaction(async (db) => {
      const fields = await this.#check(db, input);
      if (await db.selectFrom('alert_rules').select('id').where('name', '=', fields.name).executeTakeFirst()) throw new CustosError('conflict', `an alert rule named ${fields.name} exists`);
      const now = this.#clock.now();
      const row: AlertRulesTable = { id: newId(now), ...fields, last_fired_at: null, created_at: now, updated_at: now };
      await db.insertInto('alert_rules').values(row).execute();
      const v = this.#view(row);
      await this.#audit.append(db, tenantId, { type: 'alerts.rule.create', outcome: 'success', actor, resource: { type: 'alert-rule', id: row.id, name: row.name }, change: { after: { ...v }, sensitive: ['emails'] } });
      return v;
    });
    this.#cache.delete(tenantId);
    return view;
  }

  /**
   * Replaces a rule's definition (the whole input, as at creation; `enabled`
   * false pauses it). Its id, creation time, firing history and last firing
   * stay; the window count starts over from the events in the new window.
   */
  async replace(tenantId: string, id: string, input: AlertRuleInput, actor: Actor): Promise<AlertRuleView> {
    const view = await this.#storage.tenant(tenantId).transaction(async (db) => {
      const before = isId(id) ? await db.selectFrom('alert_rules').selectAll().where('id', '=', id).executeTakeFirst() : undefined;
      if (!before) throw new CustosError('not_found');
      const fields = await this.#check(db, input);
      if (await db.selectFrom('alert_rules').select('id').where('name', '=', fields.name).where('id', '!=', id).executeTakeFirst()) throw new CustosError('conflict', `an alert rule named ${fields.name} exists`);
      const row: AlertRulesTable = { ...before, ...fields, updated_at: this.#clock.now() };
      await db.updateTable('alert_rules').set({ ...fields, updated_at: row.updated_at }).where('id', '=', id).execute();
      const v = this.#view(row);
      await this.#audit.append(db, tenantId, { type: 'alerts.rule.update', outcome: 'success', actor, resource: { type: 'alert-rule', id, name: row.name }, change: { before: { ...this.#view(before) }, after: { ...v }, sensitive: ['emails'] } });
      return v;
    });
    this.#cache.delete(tenantId);
    return view;
  }

  async list(tenantId: string): Promise<AlertRuleView[]> {
    const rows = await this.#storage.tenant(tenantId).transaction((db) => db.selectFrom('alert_rules').selectAll().orderBy('name').execute());
    return rows.map((r) => this.#view(r));
  }

  async delete(tenantId: string, id: string, actor: Actor): Promise<void> {
    await this.#storage.tenant(tenantId).transaction(async (db) => {
      const row = await db.selectFrom('alert_rules').selectAll().where('id', '=', id).executeTakeFirst();
      if (!row) throw new CustosError('not_found');
      await db.deleteFrom('alert_rules').where('id', '=', id).execute();
      await this.#audit.append(db, tenantId, { type: 'alerts.rule.delete', outcome: 'success', actor, resource: { type: 'alert-rule', id, name: row.name } });
    });
    this.#cache.delete(tenantId);
  }

  async firings(tenantId: string, ruleId?: string): Promise<Array<{ id: string; ruleId: string; firedAt: string; eventId: string; count: number }>> {
    const rows = await this.#storage.tenant(tenantId).transaction((db) => {
      let q = db.selectFrom('alert_firings').selectAll().orderBy('fired_at', 'desc').limit(200);
      if (ruleId) q = q.where('rule_id', '=', ruleId);
      return q.execute();
    });
    return rows.map((r) => ({ id: r.id, ruleId: r.rule_id, firedAt: rfc3339(r.fired_at), eventId: r.event_id, count: r.count }));
  }

  async #rules(db: Kysely<TenantDB>, tenantId: string): Promise<CompiledRule[]> {
    const now = this.#clock.now();
    const hit = this.#cache.get(tenantId);
    if (hit && now - hit.at < RULES_CACHE_MS) return hit.rules;
    const rows = await db.selectFrom('alert_rules').selectAll().where('enabled', '=', 1).execute();
    const rules = rows.map((row) => {
      const types = JSON.parse(row.event_types) as string[];
      return {
        row,
        types: types.map(globToRegExp),
        likes: types.map(globToLike),
        outcomes: row.outcomes === null ? null : (JSON.parse(row.outcomes) as AuditOutcome[]),
        match: row.match === null ? null : (JSON.parse(row.match) as Record<string, unknown>),
        emails: JSON.parse(row.emails) as string[],
        webhookIds: JSON.parse(row.webhook_ids) as string[],
      };
    });
    this.#cache.set(tenantId, { rules, at: now });
    return rules;
  }

  async #evaluate(db: Kysely<TenantDB>, tenantId: string, event: AuditEvent): Promise<void> {
    const rules = await this.#rules(db, tenantId);
    if (rules.length === 0) return;
    const now = this.#clock.now();
    for (const rule of rules) {
      if (!rule.types.some((re) => re.test(event.type))) continue;
      if (rule.outcomes && !rule.outcomes.includes(event.outcome)) continue;
      if (rule.match && !Object.entries(rule.match).every(([path, value]) => valueAt(event, path) === value)) continue;
      const windowMs = rule.row.window_seconds * 1000;
      let count = 1;
      if (rule.row.threshold > 1) {
        // The rule's own state as of this transaction: another node may have fired it meanwhile.
        const current = await db.selectFrom('alert_rules').select('last_fired_at').where('id', '=', rule.row.id).executeTakeFirst();
        if (!current) continue;
        if (current.last_fired_at !== null && current.last_fired_at > now - windowMs) continue;
        const since = Math.max(now - windowMs, (current.last_fired_at ?? 0) + 1);
        let q = db
          .selectFrom('audit_events')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .where('time', '>=', since)
          .where((eb) => eb.or(rule.likes.map((like) => sql<boolean>`${eb.ref('type')} LIKE ${like} ESCAPE '\\'`)));
        if (rule.outcomes) q = q.where('outcome', 'in', rule.outcomes);
        count = Number((await q.executeTakeFirstOrThrow()).n);
        if (count < rule.row.threshold) continue;
      }
      await this.#fire(db, tenantId, rule, event, count, now);
    }
  }

  async #fire(db: Kysely<TenantDB>, tenantId: string, rule: CompiledRule, event: AuditEvent, count: number, now: number): Promise<void> {
    await db.insertInto('alert_firings').values({ id: newId(now), rule_id: rule.row.id, fired_at: now, event_id: event.id, event_seq: event.seq, count }).execute();
    await db.updateTable('alert_rules').set({ last_fired_at: now }).where('id', '=', rule.row.id).execute();
    rule.row.last_fired_at = now;
    const payload = {
      type: 'alert.fired',
      alert: { id: rule.row.id, name: rule.row.name, threshold: rule.row.threshold, windowSeconds: rule.row.window_seconds },
      count,
      firedAt: rfc3339(now),
      event,
    };
    const summary = rule.row.threshold > 1 ? `${count} matching events in ${rule.row.window_seconds} s` : 'a matching event';
    for (const to of rule.emails) {
      await this.#mail.enqueue(db, tenantId, {
        kind: 'alert',
        to,
        subject: `[Custos] Alert: ${rule.row.name}`,
        text: [
          `Alert rule "${rule.row.name}" fired: ${summary}.`,
          '',
          `Latest event: ${event.type} (${event.outcome}) at ${event.time}`,
          `By: ${event.principal.type} ${event.principal.name ?? event.principal.id}`,
          event.resource ? `On: ${event.resource.type} ${event.resource.name ?? event.resource.id ?? ''}` : '',
          `Event id: ${event.id} (sequence ${event.seq})`,
        ]
          .filter((l) => l !== '')
          .join('\n'),
      });
    }
    for (const id of rule.webhookIds) {
      if (await db.selectFrom('webhook_endpoints').select('id').where('id', '=', id).executeTakeFirst()) {
        await this.#webhooks.enqueue(db, tenantId, id, 'alert.fired', payload);
      }
    }
  }
}
