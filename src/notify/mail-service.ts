import type { Kysely } from 'kysely';
import nodemailer, { type Transporter } from 'nodemailer';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { newId } from '../core/ids.js';
import type { Logger } from '../core/logger.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { MailOutboxTable } from './notify-tables.js';

export interface MailMessage {
  /** What the message is for (`auth.device-code`, `auth.password-reset`, `alert`, …): shown in the outbox, never the body. */
  kind: string;
  to: string;
  subject: string;
  text: string;
}

export interface MailView {
  id: string;
  kind: string;
  to: string;
  subject: string;
  /** Present while the message sits in the outbox; erased once handed to the SMTP server. */
  text: string | null;
  state: MailOutboxTable['state'];
  attempts: number;
  lastError: string | null;
  createdAt: string;
  sentAt: string | null;
}

/** Delay before each retry of a message the SMTP server did not take; after the last, the message fails. */
export const MAIL_RETRY_DELAYS_MS = [30_000, 120_000, 600_000, 1_800_000, 7_200_000] as const;
/** A claimed message is not claimed again by another worker for this long. */
const CLAIM_MS = 60_000;
const BATCH = 50;

/**
 * Mail for a tenant's users. Every message is written to the tenant's outbox
 * in the caller's transaction (so a code or a link exists only if the change
 * that issued it committed). Without SMTP configured the outbox is where mail
 * stays (`custos mail list`); with `smtpUrl` set, a worker hands due
 * messages to the SMTP server (nodemailer), retries with backoff, and erases
 * each body once the server has accepted it.
 */
export class MailService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #from: string;
  readonly #transport: Transporter | undefined;

  constructor(deps: { storage: Storage; clock: Clock; logger: Logger; smtpUrl: string | undefined; mailFrom: string }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#logger = deps.logger;
    this.#from = deps.mailFrom;
    this.#transport = deps.smtpUrl ? nodemailer.createTransport(deps.smtpUrl) : undefined;
  }

  /** Whether mail leaves the outbox (SMTP configured). */
  get sends(): boolean {
    return this.#transport !== undefined;
  }

  readonly #listeners: Array<(tenantId: string) => void> = [];

  /** Called when a message is queued (before its transaction commits): lets the delivery worker look soon. */
  onEnqueue(listener: (tenantId: string) => void): void {
    this.#listeners.push(listener);
  }

  /** Queues a message inside the caller's tenant transaction; returns its id. */
  async enqueue(db: Kysely<TenantDB>, tenantId: string, message: MailMessage): Promise<string> {
    const now = this.#clock.now();
    const id = newId(now);
    await db
      .insertInto('mail_outbox')
      .values({
        id,
        kind: message.kind,
        to_address: message.to,
        subject: message.subject,
        body_text: message.text,
        state: this.#transport ? 'pending' : 'stored',
        attempts: 0,
        next_attempt_at: this.#transport ? now : null,
        last_error: null,
        created_at: now,
        sent_at: null,
      })
      .execute();
    if (this.#transport) for (const l of this.#listeners) l(tenantId);
    return id;
  }

  async list(tenantId: string, opts: { limit?: number; kind?: string } = {}): Promise<MailView[]> {
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      let q = db.selectFrom('mail_outbox').selectAll().orderBy('created_at', 'desc').orderBy('id', 'desc').limit(opts.limit ?? 100);
      if (opts.kind) q = q.where('kind', '=', opts.kind);
      const rows = await q.execute();
      return rows.map((r) => ({
        id: r.id,
        kind: r.kind,
        to: r.to_address,
        subject: r.subject,
        text: r.body_text,
        state: r.state,
        attempts: r.attempts,
        lastError: r.last_error,
        createdAt: rfc3339(r.created_at),
        sentAt: r.sent_at === null ? null : rfc3339(r.sent_at),
      }));
    });
  }

  /** Sends a tenant's due messages. Claims them first, so two workers never send the same message at once. */
  async deliverDue(tenantId: string): Promise<{ sent: number; failed: number; retrying: number }> {
    const result = { sent: 0, failed: 0, retrying: 0 };
    const transport = this.#transport;
    if (!transport) return result;
    const store = this.#storage.tenant(tenantId);
    const now = this.#clock.now();
    const claimed = await store.transaction(async (db) => {
      const due = await db.selectFrom('mail_outbox').selectAll().where('state', '=', 'pending').where('next_attempt_at', '<=', now).orderBy('next_attempt_at').limit(BATCH).execute();
      if (due.length > 0) {
        await db.updateTable('mail_outbox').set({ next_attempt_at: now + CLAIM_MS }).where('id', 'in', due.map((d) => d.id)).execute();
      }
      return due;
    });
    for (const m of claimed) {
      let error: string | null = null;
      try {
        await transport.sendMail({ from: this.#from, to: m.to_address, subject: m.subject, text: m.body_text ?? '' });
      } catch (err) {
        error = (err as Error).message.slice(0, 500);
      }
      const attempts = m.attempts + 1;
      const at = this.#clock.now();
      if (error === null) {
        result.sent++;
        await store.transaction((db) => db.updateTable('mail_outbox').set({ state: 'sent', attempts, sent_at: at, body_text: null, next_attempt_at: null, last_error: null }).where('id', '=', m.id).execute());
      } else {
        const delay = MAIL_RETRY_DELAYS_MS[attempts - 1];
        if (delay === undefined) result.failed++;
        else result.retrying++;
        this.#logger.warn({ tenantId, mailId: m.id, attempts, error }, 'mail delivery failed');
        await store.transaction((db) =>
          db
            .updateTable('mail_outbox')
            .set({ state: delay === undefined ? 'failed' : 'pending', attempts, last_error: error, next_attempt_at: delay === undefined ? null : at + delay })
            .where('id', '=', m.id)
            .execute(),
        );
      }
    }
    return result;
  }

  close(): void {
    this.#transport?.close();
  }
}
