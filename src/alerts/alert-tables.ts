/** Table types of alert rules, added to the tenant schema. */

export interface AlertRulesTable {
  id: string;
  name: string;
  enabled: number;
  /** JSON array of event-type patterns (`*` matches any run of characters). */
  event_types: string;
  /** JSON array of outcomes, or null for any. */
  outcomes: string | null;
  /** JSON object of dotted path → value the triggering event must have (e.g. `{"details.role":"account-administrator"}`), or null. */
  match: string | null;
  threshold: number;
  window_seconds: number;
  /** JSON array of addresses to mail. */
  emails: string;
  /** JSON array of webhook endpoint ids. */
  webhook_ids: string;
  last_fired_at: number | null;
  created_at: number;
  updated_at: number;
}

export interface AlertFiringsTable {
  id: string;
  rule_id: string;
  fired_at: number;
  event_id: string;
  event_seq: number;
  count: number;
}

declare module '../storage/schema.js' {
  interface TenantDB {
    alert_rules: AlertRulesTable;
    alert_firings: AlertFiringsTable;
  }
}
