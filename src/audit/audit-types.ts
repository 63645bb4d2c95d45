import type { Actor, PrincipalType } from '../core/principal.js';

/** How an action ended: done, failed (with a `code`), or refused by authorization. */
export type AuditOutcome = 'success' | 'failure' | 'denied';

export const AUDIT_OUTCOMES: readonly AuditOutcome[] = Object.freeze(['success', 'failure', 'denied']);

/** What a service hands the activity stream: the facts of one action. */
export interface AuditEventInput {
  /** Dotted, lower-case: `auth.login.failure`, `iam.user.create`, `keys.rotate`. */
  type: string;
  outcome: AuditOutcome;
  /** Error code of a failure (required for `failure`, allowed for `denied`, refused for `success`). */
  code?: string;
  actor: Actor;
  resource?: { type: string; id?: string; name?: string };
  /**
   * The state change. Secrets are removed from `before`/`after` (keys named like
   * password, secret, token, privateKey, keyMaterial …); values at the
   * `sensitive` paths (dot paths such as `email` or `profile.phone`) are
   * replaced by `hmac-sha256:<hex>` under the stream's HMAC key.
   */
  change?: { before?: Record<string, unknown>; after?: Record<string, unknown>; sensitive?: string[] };
  details?: Record<string, unknown>;
}

/**
 * One event of an activity stream, as stored (the canonical JSON body) plus its
 * position `seq` in the stream. `tenant` is null on the provider stream.
 */
export interface AuditEvent {
  seq: number;
  id: string;
  /** RFC 3339, milliseconds, UTC. */
  time: string;
  type: string;
  tenant: string | null;
  principal: { type: PrincipalType; id: string; name?: string };
  source?: { ip?: string; userAgent?: string; sessionId?: string };
  request?: { id: string; method: string; path: string };
  resource?: { type: string; id?: string; name?: string };
  outcome: AuditOutcome;
  code?: string;
  details?: Record<string, unknown>;
  change?: { before?: Record<string, unknown>; after?: Record<string, unknown> };
}

/** Filters shared by {@link AuditQuery} and exports. */
export interface AuditFilter {
  /** Inclusive lower bound: RFC 3339 text or milliseconds since the epoch. */
  since?: string | number;
  /** Exclusive upper bound: RFC 3339 text or milliseconds since the epoch. */
  until?: string | number;
  /** Event types; `*` matches any run of characters (`auth.*`, `*.denied`). */
  types?: string[];
  outcome?: AuditOutcome;
}

export interface AuditQuery extends AuditFilter {
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
  /** Page size, 1–1000. */
  limit: number;
}

export interface AuditPage {
  /** Newest first. */
  events: AuditEvent[];
  /** Present when older events match: pass it back as `cursor`. */
  nextCursor?: string;
}

export type ExportFormat = 'jsonl' | 'csv';

/**
 * A signed statement about a stream: a **checkpoint** ("event `seq` of `stream`
 * has hash `hash`") or a purge **anchor** ("events up to `seq`, the last of
 * which had hash `hash`, were purged by retention"). The signature is Ed25519
 * over the RFC 8785 canonical JSON of every other member.
 */
export interface Checkpoint {
  v: 1;
  kind: 'checkpoint' | 'anchor';
  /** Tenant id, or `provider`. */
  stream: string;
  seq: number;
  /** SHA-256 chain hash, hex. */
  hash: string;
  /** When it was made, RFC 3339. */
  time: string;
  /** First 16 hex characters of SHA-256 over the signing public key (SPKI DER). */
  keyId: string;
  /** Ed25519 signature, base64. */
  signature: string;
}

export type VerifyProblemKind = 'modified' | 'missing' | 'reordered' | 'truncated' | 'bad-signature';

export interface VerifyProblem {
  kind: VerifyProblemKind;
  /** The event (or first event) concerned, when there is one. */
  seq?: number;
  /** Last event of a range (missing events). */
  toSeq?: number;
  message: string;
}

/** What `verify` found, in the spirit of CloudTrail's log file validation. */
export interface VerifyReport {
  /** Tenant id, or `provider`. */
  stream: string;
  valid: boolean;
  /** Events present and checked. */
  events: number;
  /** Events whose contents, position and links check out. */
  validEvents: number;
  firstSeq?: number;
  lastSeq?: number;
  /** The newest purge anchor the chain starts after. */
  anchor?: { seq: number; hash: string };
  checkpoints: { store: number; external?: number };
  problems: VerifyProblem[];
  /** Problems found beyond the ones listed (the list is capped). */
  moreProblems: number;
  /** Limits of what this run could check (e.g. truncation without external checkpoints). */
  notes: string[];
  elapsedMs: number;
}

/** Retention of one stream: the edition's default, the provider's override, the effective value. */
export interface RetentionView {
  stream: string;
  edition?: string;
  defaultDays: number;
  overrideDays?: number;
  effectiveDays: number;
  maxDays: number;
}
