/** Table types of the mail outbox and webhooks, added to the tenant schema. */

/** `stored`: kept in the outbox only (no SMTP configured); `pending` → `sent`, or `failed` after the last retry. */
export type MailState = 'stored' | 'pending' | 'sent' | 'failed';

export interface MailOutboxTable {
  id: string;
  kind: string;
  to_address: string;
  subject: string;
  /** Erased once the message has been handed to the SMTP server: codes and links do not linger. */
  body_text: string | null;
  state: MailState;
  attempts: number;
  next_attempt_at: number | null;
  last_error: string | null;
  created_at: number;
  sent_at: number | null;
}

export interface WebhookEndpointsTable {
  id: string;
  url: string;
  description: string;
  enabled: number;
  created_at: number;
  /** After a rotation: until when deliveries also carry a signature under the previous secret. */
  previous_secret_until: number | null;
}

export type DeliveryState = 'pending' | 'delivered' | 'failed';

export interface WebhookDeliveriesTable {
  id: string;
  endpoint_id: string;
  event_type: string;
  payload: string;
  state: DeliveryState;
  attempts: number;
  next_attempt_at: number | null;
  last_status: number | null;
  last_error: string | null;
  created_at: number;
  delivered_at: number | null;
}

export interface WebhookAttemptsTable {
  delivery_id: string;
  attempt: number;
  at: number;
  status: number | null;
  error: string | null;
  duration_ms: number;
}

declare module '../storage/schema.js' {
  interface TenantDB {
    mail_outbox: MailOutboxTable;
    webhook_endpoints: WebhookEndpointsTable;
    webhook_deliveries: WebhookDeliveriesTable;
    webhook_attempts: WebhookAttemptsTable;
  }
}
