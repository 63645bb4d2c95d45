import type { AuditService } from '../audit/audit-service.js';
import { CustosError } from '../core/errors.js';
import { isId } from '../core/ids.js';
import { authorize, type AuthContext } from '../iam/authorize.js';
import type { WebhookDeliveryView, WebhookEndpointView, WebhookService } from '../notify/webhook-service.js';
import type { Storage } from '../storage/storage.js';
import type { AlertRuleInput, AlertRuleView, AlertService } from './alert-service.js';

export interface AlertFiringView {
  id: string;
  ruleId: string;
  firedAt: string;
  eventId: string;
  count: number;
}

/**
 * What a tenant's administrators (`alerts.manage`) do with alert rules and
 * webhook endpoints: every operation authorizes first; changes are recorded
 * in the activity stream in the transaction that makes them. A webhook URL is
 * recorded only as an HMAC (URLs of chat and incident services carry their
 * own secrets in the path), and the endpoint's signing secret is returned once,
 * at creation.
 */
export class AlertAdminService {
  readonly #storage: Storage;
  readonly #audit: AuditService;
  readonly #alerts: AlertService;
  readonly #webhooks: WebhookService;

  constructor(deps: { storage: Storage; audit: AuditService; alerts: AlertService; webhooks: WebhookService }) {
    this.#storage = deps.storage;
    this.#audit = deps.audit;
    this.#alerts = deps.alerts;
    this.#webhooks = deps.webhooks;
  }

  listRules(auth: AuthContext, tenantId: string): Promise<AlertRuleView[]> {
    authorize(auth, 'alerts.manage');
    return this.#alerts.list(tenantId);
  }

  async getRule(auth: AuthContext, tenantId: string, id: string): Promise<AlertRuleView> {
    authorize(auth, 'alerts.manage');
    const rule = isId(id) ? (await this.#alerts.list(tenantId)).find((r) => r.id === id) : undefined;
    if (!rule) throw new CustosError('not_found');
    return rule;
  }

  createRule(auth: AuthContext, tenantId: string, input: AlertRuleInput): Promise<AlertRuleView> {
    authorize(auth, 'alerts.manage');
    return this.#alerts.create(tenantId, input, auth);
  }

  replaceRule(auth: AuthContext, tenantId: string, id: string, input: AlertRuleInput): Promise<AlertRuleView> {
    authorize(auth, 'alerts.manage');
    return this.#alerts.replace(tenantId, id, input, auth);
  }

  deleteRule(auth: AuthContext, tenantId: string, id: string): Promise<void> {
    authorize(auth, 'alerts.manage');
    return this.#alerts.delete(tenantId, id, auth);
  }

  /** The rule's most recent firings (up to 200), newest first. */
  async firings(auth: AuthContext, tenantId: string, ruleId: string): Promise<AlertFiringView[]> {
    await this.getRule(auth, tenantId, ruleId);
    return this.#alerts.firings(tenantId, ruleId);
  }

  listWebhooks(auth: AuthContext, tenantId: string): Promise<WebhookEndpointView[]> {
    authorize(auth, 'alerts.manage');
    return this.#storage.tenant(tenantId).transaction((db) => this.#webhooks.listEndpoints(db));
  }

  /** Registers an endpoint; its signing secret is in this answer and never again. */
  createWebhook(auth: AuthContext, tenantId: string, input: { url: string; description?: string }): Promise<WebhookEndpointView & { secret: string }> {
    authorize(auth, 'alerts.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const created = await this.#webhooks.createEndpoint(db, tenantId, input);
      await this.#audit.append(db, tenantId, {
        type: 'alerts.webhook.create',
        outcome: 'success',
        actor: auth,
        resource: { type: 'webhook', id: created.id, ...(created.description ? { name: created.description } : {}) },
        change: { after: { url: created.url, description: created.description }, sensitive: ['url'] },
      });
      return created;
    });
  }

  /** A new signing secret for an endpoint, in this answer only; recorded (without the secret). */
  rotateWebhookSecret(auth: AuthContext, tenantId: string, id: string): Promise<WebhookEndpointView & { secret: string; previousSecretValidUntil: string }> {
    authorize(auth, 'alerts.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      if (!isId(id)) throw new CustosError('not_found');
      const rotated = await this.#webhooks.rotateSecret(db, tenantId, id);
      await this.#audit.append(db, tenantId, {
        type: 'alerts.webhook.secret.rotate',
        outcome: 'success',
        actor: auth,
        resource: { type: 'webhook', id, ...(rotated.description ? { name: rotated.description } : {}) },
        details: { previousSecretValidUntil: rotated.previousSecretValidUntil },
      });
      return rotated;
    });
  }

  /** Deletes an endpoint; its pending deliveries fail, and rules that named it stop sending to it. */
  deleteWebhook(auth: AuthContext, tenantId: string, id: string): Promise<void> {
    authorize(auth, 'alerts.manage');
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const row = isId(id) ? await db.selectFrom('webhook_endpoints').select(['url', 'description']).where('id', '=', id).executeTakeFirst() : undefined;
      if (!row) throw new CustosError('not_found');
      await this.#webhooks.deleteEndpoint(db, id);
      await this.#audit.append(db, tenantId, {
        type: 'alerts.webhook.delete',
        outcome: 'success',
        actor: auth,
        resource: { type: 'webhook', id, ...(row.description ? { name: row.description } : {}) },
        change: { before: { url: row.url, description: row.description }, sensitive: ['url'] },
      });
    });
  }

  deliveries(auth: AuthContext, tenantId: string, limit: number): Promise<WebhookDeliveryView[]> {
    authorize(auth, 'alerts.manage');
    return this.#webhooks.listDeliveries(tenantId, { limit });
  }
}
