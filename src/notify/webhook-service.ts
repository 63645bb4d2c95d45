import { createHmac } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { newId, randomToken } from '../core/ids.js';
import type { Logger } from '../core/logger.js';
import type { TenantSecrets } from '../crypto/tenant-secrets.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { WebhookDeliveriesTable } from './notify-tables.js';

/** Delay before each retry of a delivery that did not get a 2xx answer; after the last, it fails. */
export const WEBHOOK_RETRY_DELAYS_MS = [10_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000] as const;
export const WEBHOOK_TIMEOUT_MS = 10_000;
const CLAIM_MS = 2 * WEBHOOK_TIMEOUT_MS;
const BATCH = 50;
const SECRET_PURPOSE = 'webhook-signing';
const PREVIOUS_SECRET_PURPOSE = 'webhook-signing-previous';
/** After a rotation, deliveries carry a second signature under the previous secret for this long. */
export const WEBHOOK_SECRET_OVERLAP_MS = 24 * 3600_000;

/**
 * Header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`;
 * for a day after a secret rotation a second `v1=` under the previous secret
 * follows, so a receiver accepts a delivery if any `v1` matches its secret.
 */
export const SIGNATURE_HEADER = 'x-custos-signature';

/**
 * The signature of a webhook body: HMAC-SHA256 under the endpoint's secret
 * over `timestamp "." body`, so a receiver can check authenticity and refuse
 * replays older than its tolerance.
 */
export function signWebhook(secret: string, timestampSeconds: number, body: string, previousSecret?: string): string {
  const mac = (key: string) => createHmac('sha256', key).update(`${timestampSeconds}.${body}`, 'utf8').digest('hex');
  return `t=${timestampSeconds},v1=${mac(secret)}${previousSecret === undefined ? '' : `,v1=${mac(previousSecret)}`}`;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', '[::1]', 'localhost']);

/** HTTPS only, except plain HTTP to this machine (local receivers and tests). No credentials in the URL. */
export function checkWebhookUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CustosError('validation_failed', 'the webhook URL is not a URL');
  }
  if (url.username || url.password) throw new CustosError('validation_failed', 'the webhook URL must not contain credentials');
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK.has(url.hostname))) {
    throw new CustosError('validation_failed', 'webhook URLs must use https (plain http only to the loopback address)');
  }
  if (raw.length > 2048) throw new CustosError('validation_failed', 'the webhook URL is too long');
  return url.toString();
}

export interface WebhookEndpointView {
  id: string;
  url: string;
  description: string;
  enabled: boolean;
  createdAt: string;
}

export interface WebhookDeliveryView {
  id: string;
  endpointId: string;
  eventType: string;
  state: WebhookDeliveriesTable['state'];
  attempts: number;
  lastStatus: number | null;
  lastError: string | null;
  createdAt: string;
  deliveredAt: string | null;
  nextAttemptAt: string | null;
}

/**
 * Webhook endpoints of a tenant and the deliveries to them. Each endpoint has
 * a signing secret (shown once, kept encrypted under the tenant's keys).
 * Deliveries are queued in the caller's transaction and sent by a worker:
 * JSON body, signature header, 10 s timeout, retries with backoff, and every
 * attempt recorded.
 */
export class WebhookService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #secrets: TenantSecrets;
  readonly #logger: Logger;

  constructor(deps: { storage: Storage; clock: Clock; secrets: TenantSecrets; logger: Logger }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#secrets = deps.secrets;
    this.#logger = deps.logger;
  }

  /** Registers an endpoint; the signing secret is returned this once. */
  async createEndpoint(db: Kysely<TenantDB>, tenantId: string, input: { url: string; description?: string }): Promise<WebhookEndpointView & { secret: string }> {
    const url = checkWebhookUrl(input.url);
    const now = this.#clock.now();
    const id = newId(now);
    const secret = `whsec_${randomToken(32)}`;
    await db.insertInto('webhook_endpoints').values({ id, url, description: (input.description ?? '').slice(0, 200), enabled: 1, created_at: now, previous_secret_until: null }).execute();
    await this.#secrets.put(db, tenantId, SECRET_PURPOSE, id, secret);
    return { id, url, description: input.description ?? '', enabled: true, createdAt: rfc3339(now), secret };
  }

  /**
   * Replaces an endpoint's signing secret; the new one is returned this once.
   * Every delivery attempt from now on, pending retries included, is signed
   * with it, and for {@link WEBHOOK_SECRET_OVERLAP_MS} also with the previous
   * secret, so receivers can switch without losing deliveries. Rotating
   * again within that day drops the oldest secret.
   */
  async rotateSecret(db: Kysely<TenantDB>, tenantId: string, id: string): Promise<WebhookEndpointView & { secret: string; previousSecretValidUntil: string }> {
    const row = await db.selectFrom('webhook_endpoints').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new CustosError('not_found');
    const previous = await this.#secrets.get(db, tenantId, SECRET_PURPOSE, id);
    const secret = `whsec_${randomToken(32)}`;
    const until = this.#clock.now() + WEBHOOK_SECRET_OVERLAP_MS;
    await this.#secrets.put(db, tenantId, PREVIOUS_SECRET_PURPOSE, id, previous);
    await this.#secrets.put(db, tenantId, SECRET_PURPOSE, id, secret);
    await db.updateTable('webhook_endpoints').set({ previous_secret_until: until }).where('id', '=', id).execute();
    return { id, url: row.url, description: row.description, enabled: row.enabled === 1, createdAt: rfc3339(row.created_at), secret, previousSecretValidUntil: rfc3339(until) };
  }

  async listEndpoints(db: Kysely<TenantDB>): Promise<WebhookEndpointView[]> {
    const rows = await db.selectFrom('webhook_endpoints').selectAll().orderBy('created_at').execute();
    return rows.map((r) => ({ id: r.id, url: r.url, description: r.description, enabled: r.enabled === 1, createdAt: rfc3339(r.created_at) }));
  }

  async deleteEndpoint(db: Kysely<TenantDB>, id: string): Promise<void> {
    const r = await db.deleteFrom('webhook_endpoints').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw new CustosError('not_found');
    await this.#secrets.delete(db, SECRET_PURPOSE, id);
    await this.#secrets.delete(db, PREVIOUS_SECRET_PURPOSE, id);
    await db.updateTable('webhook_deliveries').set({ state: 'failed', last_error: 'endpoint deleted', next_attempt_at: null }).where('endpoint_id', '=', id).where('state', '=', 'pending').execute();
  }

  readonly #listeners: Array<(tenantId: string) => void> = [];

  /** Called when a delivery is queued (before its transaction commits): lets the delivery worker look soon. */
  onEnqueue(listener: (tenantId: string) => void): void {
    this.#listeners.push(listener);
  }

  /** Queues a delivery inside the caller's transaction. */
  async enqueue(db: Kysely<TenantDB>, tenantId: string, endpointId: string, eventType: string, payload: unknown): Promise<string> {
    const now = this.#clock.now();
    const id = newId(now);
    await db
      .insertInto('webhook_deliveries')
      .values({ id, endpoint_id: endpointId, event_type: eventType, payload: JSON.stringify(payload), state: 'pending', attempts: 0, next_attempt_at: now, last_status: null, last_error: null, created_at: now, delivered_at: null })
      .execute();
    for (const l of this.#listeners) l(tenantId);
    return id;
  }

  async listDeliveries(tenantId: string, opts: { limit?: number } = {}): Promise<WebhookDeliveryView[]> {
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await db.selectFrom('webhook_deliveries').selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(opts.limit ?? 100).execute();
      return rows.map((r) => ({
        id: r.id,
        endpointId: r.endpoint_id,
        eventType: r.event_type,
        state: r.state,
        attempts: r.attempts,
        lastStatus: r.last_status,
        lastError: r.last_error,
        createdAt: rfc3339(r.created_at),
        deliveredAt: r.delivered_at === null ? null : rfc3339(r.delivered_at),
        nextAttemptAt: r.next_attempt_at === null ? null : rfc3339(r.next_attempt_at),
      }));
    });
  }

  async attempts(tenantId: string, deliveryId: string): Promise<Array<{ attempt: number; at: string; status: number | null; error: string | null; durationMs: number }>> {
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const rows = await db.selectFrom('webhook_attempts').selectAll().where('delivery_id', '=', deliveryId).orderBy('attempt').execute();
      return rows.map((r) => ({ attempt: r.attempt, at: rfc3339(r.at), status: r.status, error: r.error, durationMs: r.duration_ms }));
    });
  }

  /** Sends a tenant's due deliveries (claimed first, so two workers never send one delivery at once). */
  async deliverDue(tenantId: string): Promise<{ delivered: number; retrying: number; failed: number }> {
    const result = { delivered: 0, retrying: 0, failed: 0 };
    const store = this.#storage.tenant(tenantId);
    const now = this.#clock.now();
    const claimed = await store.transaction(async (db) => {
      const due = await db
        .selectFrom('webhook_deliveries')
        .innerJoin('webhook_endpoints', 'webhook_endpoints.id', 'webhook_deliveries.endpoint_id')
        .select(['webhook_deliveries.id', 'webhook_deliveries.payload', 'webhook_deliveries.event_type', 'webhook_deliveries.attempts', 'webhook_endpoints.url', 'webhook_endpoints.id as endpoint_id', 'webhook_endpoints.previous_secret_until'])
        .where('webhook_deliveries.state', '=', 'pending')
        .where('webhook_deliveries.next_attempt_at', '<=', now)
        .where('webhook_endpoints.enabled', '=', 1)
        .orderBy('webhook_deliveries.next_attempt_at')
        .limit(BATCH)
        .execute();
      if (due.length === 0) return [];
      await db.updateTable('webhook_deliveries').set({ next_attempt_at: now + CLAIM_MS }).where('id', 'in', due.map((d) => d.id)).execute();
      const withSecrets = [];
      for (const d of due) {
        const secret = (await this.#secrets.get(db, tenantId, SECRET_PURPOSE, d.endpoint_id)).toString('utf8');
        const overlap = d.previous_secret_until !== null && Number(d.previous_secret_until) > now;
        const previousSecret = overlap ? (await this.#secrets.get(db, tenantId, PREVIOUS_SECRET_PURPOSE, d.endpoint_id)).toString('utf8') : undefined;
        withSecrets.push({ ...d, secret, previousSecret });
      }
      return withSecrets;
    });
    for (const d of claimed) {
      const attempt = d.attempts + 1;
      const started = this.#clock.now();
      const t0 = performance.now();
      let status: number | null = null;
      let error: string | null = null;
      try {
        const res = await fetch(d.url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'user-agent': 'Custos-Webhook/1',
            [SIGNATURE_HEADER]: signWebhook(d.secret, Math.floor(started / 1000), d.payload, d.previousSecret),
            'x-custos-delivery': d.id,
            'x-custos-event': d.event_type,
          },
          body: d.payload,
          redirect: 'manual',
          signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS),
        });
        status = res.status;
        await res.body?.cancel().catch(() => undefined);
        if (status < 200 || status >= 300) error = `HTTP ${status}`;
      } catch (err) {
        error = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message;
      }
      const duration = Math.round(performance.now() - t0);
      const at = this.#clock.now();
      const delay = error === null ? undefined : WEBHOOK_RETRY_DELAYS_MS[attempt - 1];
      const state = error === null ? 'delivered' : delay === undefined ? 'failed' : 'pending';
      if (state === 'delivered') result.delivered++;
      else if (state === 'failed') result.failed++;
      else result.retrying++;
      if (error !== null) this.#logger.warn({ tenantId, deliveryId: d.id, attempt, status, error }, 'webhook delivery failed');
      await store.transaction(async (db) => {
        await db.insertInto('webhook_attempts').values({ delivery_id: d.id, attempt, at: started, status, error, duration_ms: duration }).execute();
        await db
          .updateTable('webhook_deliveries')
          .set({
            state,
            attempts: attempt,
            last_status: status,
            last_error: error,
            delivered_at: state === 'delivered' ? at : null,
            next_attempt_at: state === 'pending' ? at + delay! : null,
          })
          .where('id', '=', d.id)
          .execute();
      });
    }
    return result;
  }
}
