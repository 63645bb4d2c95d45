import path from 'node:path';
import { sql, type Kysely } from 'kysely';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import type { Config } from '../core/config.js';
import { CustosError, isCustosError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { SYSTEM_ACTOR, type Actor } from '../core/principal.js';
import { deriveFromMasterKey } from '../crypto/derive.js';
import type { ControlDB, TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import { checkFilter, decodeCursor, encodeCursor } from './audit-filter.js';
import { PROVIDER_CHAIN_TABLES, TENANT_CHAIN_TABLES } from './audit-tables.js';
import type {
  AuditEvent,
  AuditEventInput,
  AuditFilter,
  AuditPage,
  AuditQuery,
  Checkpoint,
  ExportFormat,
  RetentionView,
  VerifyReport,
} from './audit-types.js';
import { ChainStore, qualifiedTables, type ChainDb } from './chain-store.js';
import { verifyChain, type ChainSource } from './chain-verifier.js';
import { CheckpointSink } from './checkpoint-sink.js';
import { prepareEvent, type PreparedEvent } from './event-builder.js';
import { csvHeader, csvLine, jsonlLine } from './export-format.js';
import { GroupCommitter, type GroupCommitOptions, type GroupCommitStats } from './group-commit.js';
import { hmacValue } from './redaction.js';
import { purgeChain } from './purge.js';
import { MAX_RETENTION_DAYS, PROVIDER_RETENTION_DAYS, checkRetentionDays, editionRetentionDays } from './retention.js';
import { AuditSigner } from './signing-key.js';
import { SinkExporter } from './sink-exporter.js';

export type { AuditEvent, AuditEventInput } from './audit-types.js';

/** Called inside the appending transaction right after each tenant event is appended. */
export type AppendListener = (db: Kysely<TenantDB>, tenantId: string, event: AuditEvent) => Promise<void>;

/** Name of the provider stream (in checkpoints, sink files, HMAC key purposes). */
export const PROVIDER_STREAM = 'provider';

/** Events per page of an export. */
const EXPORT_PAGE = 1000;
/** Largest query page. */
const MAX_QUERY_LIMIT = 1000;

export interface AuditServiceOptions {
  storage: Storage;
  clock: Clock;
  /** The provider master key (read on every derivation: it changes when rotated). */
  masterKey: () => Buffer;
  signer: AuditSigner;
  logger: Logger;
  /** Directory of the external checkpoint sink (`auditCheckpointDir`); none when unset. */
  checkpointDir?: string;
  groupCommit?: GroupCommitOptions;
}

interface Queued {
  prepared: PreparedEvent;
}

/**
 * The activity stream: every tenant's tamper-evident audit trail, and the
 * provider's. Events are hash-chained per stream, checkpointed with the
 * provider's Ed25519 key, verifiable, queryable, exportable, and purged by
 * retention behind a signed anchor. See `docs/SECURITY.md` ("Activity stream").
 */
export class AuditService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #masterKey: () => Buffer;
  readonly #signer: AuditSigner;
  readonly #sink: SinkExporter;
  readonly #tenantStore: ChainStore;
  readonly #providerStore: ChainStore;
  readonly #listeners: AppendListener[] = [];
  readonly #committer: GroupCommitter<Queued, AuditEvent>;
  readonly #hmacKeys = new Map<string, { master: Buffer; key: Buffer }>();

  constructor(opts: AuditServiceOptions) {
    this.#storage = opts.storage;
    this.#clock = opts.clock;
    this.#masterKey = opts.masterKey;
    this.#signer = opts.signer;
    const sink = opts.checkpointDir === undefined ? undefined : new CheckpointSink(opts.checkpointDir);
    this.#sink = new SinkExporter(sink, (stream, after) => this.#read(stream === PROVIDER_STREAM ? null : stream, (db, store) => store.checkpoints(db, stream, 'checkpoint', after)), opts.logger);
    this.#tenantStore = new ChainStore(opts.storage.adapter, TENANT_CHAIN_TABLES);
    this.#providerStore = new ChainStore(opts.storage.adapter, qualifiedTables(opts.storage.control, PROVIDER_CHAIN_TABLES));
    this.#committer = new GroupCommitter((key, items) => this.#writeBatch(key, items), opts.groupCommit);
  }

  /**
   * Builds the service for a deployment: loads the signing key from the data
   * directory and checks that the checkpoint sink lies outside it (a copy an
   * intruder in the data directory can also rewrite proves nothing).
   */
  static async open(deps: { storage: Storage; clock: Clock; masterKey: () => Buffer; logger: Logger; config: Config; groupCommit?: GroupCommitOptions }): Promise<AuditService> {
    const dir = deps.config.auditCheckpointDir;
    if (dir !== undefined) {
      const rel = path.relative(path.resolve(deps.config.dataDir), path.resolve(dir));
      if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
        throw new CustosError('invalid_configuration', 'auditCheckpointDir must be outside the data directory');
      }
    }
    const signer = await AuditSigner.load(deps.config.dataDir);
    return new AuditService({ ...deps, signer, ...(dir !== undefined ? { checkpointDir: path.resolve(dir) } : {}) });
  }

  /** Key id of the checkpoint signing key. */
  get signingKeyId(): string {
    return this.#signer.keyId;
  }

  /** Transactions and events written by group commit so far. */
  get groupCommitStats(): Readonly<GroupCommitStats> {
    return this.#committer.stats;
  }

  #streamOf(tenantId: string | null): string {
    return tenantId ?? PROVIDER_STREAM;
  }

  /** The stream's HMAC key, derived from the master key (`audit-hmac/<tenant id>` or `audit-hmac/provider`). */
  #hmacKey(stream: string): Buffer {
    const master = this.#masterKey();
    const hit = this.#hmacKeys.get(stream);
    if (hit && hit.master === master) return hit.key;
    const key = deriveFromMasterKey(master, `audit-hmac/${stream}`);
    if (this.#hmacKeys.size >= 10_000) this.#hmacKeys.clear();
    this.#hmacKeys.set(stream, { master, key });
    return key;
  }

  /**
   * The value a sensitive field takes in `tenantId`'s stream (`hmac-sha256:<hex>`;
   * `null` for the provider stream), so an administrator can search for it
   * without the stream ever holding it in clear.
   */
  hashForAudit(tenantId: string | null, value: unknown): string {
    return hmacValue(this.#hmacKey(this.#streamOf(tenantId)), value);
  }

  #prepare(tenantId: string | null, input: AuditEventInput): PreparedEvent {
    const stream = this.#streamOf(tenantId);
    return prepareEvent(tenantId, input, this.#clock.now(), () => this.#hmacKey(stream));
  }

  /** Registers a listener run inside the appending transaction after each tenant event (alert rules). */
  onAppend(listener: AppendListener): void {
    this.#listeners.push(listener);
  }

  async #appendTenant(db: Kysely<TenantDB>, tenantId: string, prepared: PreparedEvent[]): Promise<{ events: AuditEvent[]; checkpoint?: Checkpoint }> {
    let result;
    try {
      result = await this.#tenantStore.append(db, prepared, { stream: tenantId, signer: this.#signer, nowMs: this.#clock.now() });
    } catch (err) {
      throw new CustosError('audit_unavailable', 'the activity event could not be written', { cause: err });
    }
    for (const event of result.events) {
      for (const listener of this.#listeners) await listener(db, tenantId, event);
    }
    return result;
  }

  /**
   * Appends an event inside the caller's tenant transaction: the change and its
   * event commit together or not at all. If the event cannot be written this
   * throws (`audit_event_invalid`, `audit_unavailable`), failing the caller's
   * transaction: no action without its record.
   */
  async append(db: Kysely<TenantDB>, tenantId: string, input: AuditEventInput): Promise<AuditEvent> {
    const prepared = this.#prepare(tenantId, input);
    const { events, checkpoint } = await this.#appendTenant(db, tenantId, [prepared]);
    if (checkpoint) this.#sink.exportLater(tenantId, checkpoint.seq);
    return events[0]!;
  }

  /** Like {@link AuditService.append}, on the provider stream, inside a control-plane transaction. */
  async appendProvider(db: Kysely<ControlDB>, input: AuditEventInput): Promise<AuditEvent> {
    const prepared = this.#prepare(null, input);
    let result;
    try {
      result = await this.#providerStore.append(db, [prepared], { stream: PROVIDER_STREAM, signer: this.#signer, nowMs: this.#clock.now() });
    } catch (err) {
      throw new CustosError('audit_unavailable', 'the activity event could not be written', { cause: err });
    }
    if (result.checkpoint) this.#sink.exportLater(PROVIDER_STREAM, result.checkpoint.seq);
    return result.events[0]!;
  }

  /**
   * Records a standalone event (a failed sign-in, a read). Group-committed:
   * queued with the tenant's other pending events and written with them in one
   * transaction; resolves once that transaction is durable, rejects if it
   * could not be written. An invalid input rejects at once and affects no one else.
   */
  record(tenantId: string, input: AuditEventInput): Promise<AuditEvent> {
    // Not `async`: on the hot path every saved promise hop counts. A bad input still rejects, never throws.
    let prepared: PreparedEvent;
    try {
      prepared = this.#prepare(tenantId, input);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return this.#committer.submit(tenantId, { prepared });
  }

  /** {@link AuditService.record} for the provider stream. */
  recordProvider(input: AuditEventInput): Promise<AuditEvent> {
    let prepared: PreparedEvent;
    try {
      prepared = this.#prepare(null, input);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return this.#committer.submit(PROVIDER_STREAM, { prepared });
  }

  async #writeBatch(stream: string, items: Queued[]): Promise<AuditEvent[]> {
    const prepared = items.map((i) => i.prepared);
    let result: { events: AuditEvent[]; checkpoint?: Checkpoint };
    try {
      if (stream === PROVIDER_STREAM) {
        result = await this.#storage.controlTransaction((db) =>
          this.#providerStore.append(db, prepared, { stream, signer: this.#signer, nowMs: this.#clock.now() }),
        );
      } else {
        result = await this.#storage.tenant(stream).transaction((db) => this.#appendTenant(db, stream, prepared));
      }
    } catch (err) {
      if (isCustosError(err) && err.code !== 'audit_unavailable') throw err;
      throw new CustosError('audit_unavailable', 'the activity events could not be written', { cause: isCustosError(err) ? (err.cause ?? err) : err });
    }
    if (result.checkpoint) await this.#sink.exportQuietly(stream);
    return result.events;
  }

  /** Runs `fn` against the stream's store: in a tenant transaction, or on the control plane. */
  async #read<T>(tenantId: string | null, fn: (db: ChainDb, store: ChainStore) => Promise<T>): Promise<T> {
    if (tenantId === null) return fn(this.#storage.control, this.#providerStore);
    return this.#storage.tenant(tenantId).transaction((db) => fn(db, this.#tenantStore));
  }

  /** Runs `fn` in one write transaction of the stream's store. */
  async #write<T>(tenantId: string | null, fn: (db: ChainDb, store: ChainStore) => Promise<T>): Promise<T> {
    if (tenantId === null) return this.#storage.controlTransaction((db) => fn(db, this.#providerStore));
    return this.#storage.tenant(tenantId).transaction((db) => fn(db, this.#tenantStore));
  }

  /** One page of a stream's events matching the filters, newest first (for the tenant administration API). */
  async query(tenantId: string | null, q: AuditQuery): Promise<AuditPage> {
    const f = checkFilter(q);
    if (!Number.isInteger(q.limit) || q.limit < 1 || q.limit > MAX_QUERY_LIMIT) {
      throw new CustosError('validation_failed', `limit must be from 1 to ${MAX_QUERY_LIMIT}`);
    }
    const before = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const rows = await this.#read(tenantId, (db, store) => store.page(db, f, before === undefined ? {} : { beforeSeq: before }, q.limit + 1));
    const page: AuditPage = { events: rows.slice(0, q.limit).map((r) => ({ seq: r.seq, ...(JSON.parse(r.body) as Omit<AuditEvent, 'seq'>) })) };
    if (rows.length > q.limit) page.nextCursor = encodeCursor(page.events[page.events.length - 1]!.seq);
    return page;
  }

  /**
   * Streams a stream's matching events, oldest first, as JSON Lines (the
   * stored body plus `seq`) or CSV (with a header). Reads page by page, so
   * memory stays flat whatever the size; yields chunks of whole lines.
   */
  async *export(tenantId: string | null, opts: AuditFilter, format: ExportFormat): AsyncIterable<string> {
    if (format !== 'jsonl' && format !== 'csv') throw new CustosError('validation_failed', 'format must be jsonl or csv');
    const f = checkFilter(opts);
    if (format === 'csv') yield csvHeader();
    let after = 0;
    for (;;) {
      const rows = await this.#read(tenantId, (db, store) => store.page(db, f, { afterSeq: after }, EXPORT_PAGE));
      if (rows.length > 0) yield rows.map((r) => (format === 'jsonl' ? jsonlLine(r.seq, r.body) : csvLine(r.seq, r.body))).join('');
      if (rows.length < EXPORT_PAGE) return;
      after = rows[rows.length - 1]!.seq;
    }
  }

  /** A read snapshot of the stream's store, for verification. */
  #source(tenantId: string | null): ChainSource {
    const snapshot = async (db: ChainDb): Promise<void> => {
      // PostgreSQL: one snapshot for the whole read (SQLite's write transaction already is one).
      if (this.#storage.adapter.concurrentWriters) await sql`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY`.execute(db);
    };
    if (tenantId === null) {
      return {
        stream: PROVIDER_STREAM,
        store: this.#providerStore,
        read: (fn) =>
          this.#storage.controlTransaction(async (db) => {
            await snapshot(db);
            return fn(db);
          }),
      };
    }
    const location = this.#storage.locateTenantStore(tenantId);
    const source: ChainSource = {
      stream: tenantId,
      store: this.#tenantStore,
      read: (fn) =>
        this.#storage.tenant(tenantId).transaction(async (db) => {
          await snapshot(db);
          return fn(db);
        }),
    };
    if (location.kind === 'sqlite') source.file = location.file;
    return source;
  }

  /**
   * Verifies a stream (`null`: the provider's): recomputes every event's chain
   * hash from its stored bytes, checks links, positions, the chain head, signed
   * checkpoints and the purge anchor, and with `checkpointsDir` the external
   * checkpoint copies (which is what reveals a truncated tail).
   */
  async verify(tenantId: string | null, opts: { checkpointsDir?: string; threads?: number } = {}): Promise<VerifyReport> {
    return verifyChain(this.#source(tenantId), this.#signer, opts);
  }

  /** Creates a signed checkpoint of the stream's head now, unless nothing was appended since the last one. */
  async checkpoint(tenantId: string | null): Promise<Checkpoint | undefined> {
    const stream = this.#streamOf(tenantId);
    const made = await this.#write(tenantId, async (db, store) => {
      const head = await store.head(db);
      if (!head || head.seq === 0) return undefined;
      const anchor = await store.latestAnchor(db, stream);
      if (head.seq <= Math.max(await store.latestCheckpointSeq(db), anchor?.seq ?? 0)) return undefined;
      const now = this.#clock.now();
      const c = this.#signer.sign({ kind: 'checkpoint', stream, seq: head.seq, hash: head.hash.toString('hex'), time: rfc3339(now) });
      await store.insertCheckpoint(db, c, now);
      return c;
    });
    await this.#sink.exportNow(stream);
    return made;
  }

  /** Retention of a stream: the edition's default, the provider's override, and what applies. */
  async retention(tenantId: string | null): Promise<RetentionView> {
    if (tenantId === null) {
      return { stream: PROVIDER_STREAM, defaultDays: PROVIDER_RETENTION_DAYS, effectiveDays: PROVIDER_RETENTION_DAYS, maxDays: PROVIDER_RETENTION_DAYS };
    }
    const tenant = await this.#storage.control
      .selectFrom('tenants')
      .select(['edition'])
      .where('id', '=', tenantId)
      .where('status', 'in', ['active', 'suspended'])
      .executeTakeFirst();
    if (!tenant) throw new CustosError('tenant_not_found');
    const override = await this.#storage.control.selectFrom('audit_retention').select('days').where('tenant_id', '=', tenantId).executeTakeFirst();
    const defaultDays = editionRetentionDays(tenant.edition);
    const view: RetentionView = { stream: tenantId, edition: tenant.edition, defaultDays, effectiveDays: override?.days ?? defaultDays, maxDays: MAX_RETENTION_DAYS };
    if (override) view.overrideDays = override.days;
    return view;
  }

  /**
   * Raises (or with `null` resets) a tenant's retention. Only upwards from the
   * edition's default, at most {@link MAX_RETENTION_DAYS}. Recorded in the
   * provider stream (same transaction) and in the tenant's stream.
   */
  async setRetention(tenantId: string, days: number | null, actor: Actor): Promise<RetentionView> {
    const before = await this.retention(tenantId);
    const next = days === null ? null : checkRetentionDays(days, before.defaultDays);
    const now = this.#clock.now();
    const change = { before: { days: before.effectiveDays }, after: { days: next ?? before.defaultDays } };
    await this.#storage.controlTransaction(async (db) => {
      if (next === null) await db.deleteFrom('audit_retention').where('tenant_id', '=', tenantId).execute();
      else {
        await db
          .insertInto('audit_retention')
          .values({ tenant_id: tenantId, days: next, updated_at: now })
          .onConflict((oc) => oc.column('tenant_id').doUpdateSet({ days: next, updated_at: now }))
          .execute();
      }
      await this.appendProvider(db, { type: 'audit.retention.update', outcome: 'success', actor, resource: { type: 'tenant', id: tenantId }, change });
    });
    await this.record(tenantId, { type: 'audit.retention.update', outcome: 'success', actor, resource: { type: 'activity-stream', id: tenantId }, change });
    return this.retention(tenantId);
  }

  /**
   * Deletes the stream's events older than its retention (a prefix of the
   * chain: it stops at the first event still retained) and records a signed
   * anchor (last purged seq and hash) in the same transaction, so `verify`
   * still passes afterwards and still catches any other deletion. A segment
   * that fails verification is not purged (`audit_chain_invalid`): purging
   * must not launder tampering. Each transaction also appends an
   * `audit.purge` event. With `dryRun`, counts and changes nothing.
   */
  async purge(tenantId: string | null, opts: { dryRun?: boolean; actor?: Actor } = {}): Promise<{ purged: number; through?: number }> {
    return purgeChain({
      stream: this.#streamOf(tenantId),
      store: tenantId === null ? this.#providerStore : this.#tenantStore,
      write: (fn) => this.#write(tenantId, (db) => fn(db)),
      append: (db, event) => (tenantId === null ? this.appendProvider(db as Kysely<ControlDB>, event) : this.append(db as Kysely<TenantDB>, tenantId, event)),
      signer: this.#signer,
      now: () => this.#clock.now(),
      retentionDays: (await this.retention(tenantId)).effectiveDays,
      actor: opts.actor ?? SYSTEM_ACTOR,
      dryRun: opts.dryRun ?? false,
    });
  }

  /** Writes pending group commits and copies outstanding checkpoints to the sink. */
  async close(): Promise<void> {
    await this.#committer.close();
    await this.#sink.close();
  }
}
