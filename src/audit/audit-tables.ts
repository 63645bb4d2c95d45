/**
 * Tables of the activity stream. A tenant store holds its tenant's stream; the
 * control plane holds the provider stream in tables of the same shape (with a
 * `provider_` prefix) and the providers' retention overrides.
 */

/** One event: indexed columns for queries, the canonical JSON body, and its chain links. */
export interface AuditEventsTable {
  /** Position in the stream: 1, 2, 3 … with no gaps (purge removes a prefix). */
  seq: number;
  id: string;
  /** Milliseconds since the epoch. */
  time: number;
  type: string;
  outcome: string;
  principal_type: string;
  principal_id: string;
  resource_type: string | null;
  resource_id: string | null;
  /** RFC 8785 canonical JSON of the event (without `seq`). */
  body: string;
  /** `hash` of event `seq - 1` (32 zero bytes for event 1). */
  prev_hash: Buffer;
  /** SHA-256 chain hash, see `chain-hash.ts`. */
  hash: Buffer;
}

/**
 * The stream's one-row head: the last `seq` and its hash. Appends take this
 * row's lock (`UPDATE … RETURNING`) and hold it until commit, so two
 * transactions can never both extend the chain from the same event.
 */
export interface AuditChainHeadTable {
  id: number;
  seq: number;
  hash: Buffer;
  updated_at: number;
}

/** Signed checkpoints and purge anchors (see `Checkpoint`). */
export interface AuditCheckpointsTable {
  kind: string;
  seq: number;
  hash: Buffer;
  /** Milliseconds since the epoch. */
  time: number;
  key_id: string;
  signature: Buffer;
}

/** Provider-set retention overrides, in days; absent means the edition's default. */
export interface AuditRetentionTable {
  tenant_id: string;
  days: number;
  updated_at: number;
}

declare module '../storage/schema.js' {
  interface TenantDB {
    audit_events: AuditEventsTable;
    audit_chain_head: AuditChainHeadTable;
    audit_checkpoints: AuditCheckpointsTable;
  }
  interface ControlDB {
    provider_audit_events: AuditEventsTable;
    provider_audit_chain_head: AuditChainHeadTable;
    provider_audit_checkpoints: AuditCheckpointsTable;
    audit_retention: AuditRetentionTable;
  }
}

/** The three tables of one stream. */
export interface ChainTableNames {
  events: string;
  head: string;
  checkpoints: string;
}

export const TENANT_CHAIN_TABLES: ChainTableNames = Object.freeze({
  events: 'audit_events',
  head: 'audit_chain_head',
  checkpoints: 'audit_checkpoints',
});

export const PROVIDER_CHAIN_TABLES: ChainTableNames = Object.freeze({
  events: 'provider_audit_events',
  head: 'provider_audit_chain_head',
  checkpoints: 'provider_audit_checkpoints',
});
