import { CompiledQuery, sql, type Kysely, type RawBuilder } from 'kysely';
import { rfc3339 } from '../core/clock.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { ControlDB, TenantDB } from '../storage/schema.js';
import type { ChainTableNames } from './audit-tables.js';
import type { AuditEvent, AuditOutcome, Checkpoint } from './audit-types.js';
import { HASH_BYTES, chainHash } from './chain-hash.js';
import { postgresChunkSql, sqliteOrderedChunkSql } from './chain-scan.js';
import type { PreparedEvent } from './event-builder.js';
import type { AuditSigner } from './signing-key.js';
import { MultiRowInsert } from '../storage/multi-row-insert.js';

/** A checkpoint is made in the appending transaction whenever `seq` crosses a multiple of this. */
export const CHECKPOINT_EVERY = 1000;

/**
 * Rows per INSERT statement, largest first: a batch is split greedily into
 * at most one statement per size below 128 (a `GET`'s batch of ~30 events:
 * 4 statements, where sizes 32, 8 and 1 took 9), and few distinct
 * statements are ever prepared.
 */
const INSERT_SIZES = [128, 64, 32, 16, 8, 4, 2, 1] as const;
const EVENT_COLUMNS = ['seq', 'id', 'time', 'type', 'outcome', 'principal_type', 'principal_id', 'resource_type', 'resource_id', 'body', 'prev_hash', 'hash'] as const;

/** A handle on the store holding a stream: a tenant store, or the control plane (provider stream). */
export type ChainDb = Kysely<TenantDB> | Kysely<ControlDB>;

/** Filters in storage terms (times in ms, types as glob patterns). */
export interface StoreFilter {
  sinceMs?: number;
  untilMs?: number;
  types?: string[];
  outcome?: AuditOutcome;
}

export interface ChainHead {
  seq: number;
  hash: Buffer;
}

interface CheckpointRow {
  kind: string;
  seq: number;
  hash: Buffer;
  time: number;
  key_id: string;
  signature: Buffer;
}

/**
 * Table names as SQL text, qualified the way `db` qualifies them: Kysely's
 * schema plugin (the control plane's schema on PostgreSQL) does not reach raw
 * statements, so ask it once by compiling a query.
 */
export function qualifiedTables(db: Kysely<ControlDB>, names: ChainTableNames): ChainTableNames {
  const ref = (name: string): string => {
    const compiled = db
      .selectFrom(name as keyof ControlDB)
      .selectAll()
      .compile().sql;
    const m = /^select \* from (.+)$/.exec(compiled);
    if (!m) throw new Error(`cannot qualify table ${name}`);
    return m[1]!;
  };
  return { events: ref(names.events), head: ref(names.head), checkpoints: ref(names.checkpoints) };
}

/** A glob (`auth.*`) as a LIKE pattern: `*` → `%`, and LIKE's own wildcards escaped. */
function likePattern(glob: string): string {
  return glob.replace(/[\\%_]/g, (c) => `\\${c}`).replace(/\*/g, '%');
}

/**
 * The SQL of one activity stream (a tenant's, or the provider's): appending
 * to the chain, checkpoints, queries, chunks for verification, and purge. The
 * caller passes the Kysely handle (usually its transaction); table names are
 * given fully qualified, because raw statements do not pass Kysely's
 * schema plugin.
 */
export class ChainStore {
  readonly tables: ChainTableNames;
  readonly #postgres: boolean;
  readonly #insert: MultiRowInsert;
  readonly #headSql: string;
  readonly #headSetSql: string;
  readonly #headClaimSql: string;
  /** The head each stream had after this process last appended to it (a guess: checked by the claim). */
  readonly #heads = new Map<string, ChainHead>();

  constructor(adapter: StorageAdapter, tables: ChainTableNames) {
    this.tables = tables;
    this.#postgres = adapter.kind === 'postgres';
    this.#insert = new MultiRowInsert(tables.events, EVENT_COLUMNS, INSERT_SIZES, adapter);
    this.#headSql = `UPDATE ${tables.head} SET seq = seq + ${adapter.param(1)} WHERE id = 1 RETURNING seq, hash`;
    this.#headSetSql = `UPDATE ${tables.head} SET hash = ${adapter.param(1)}, updated_at = ${adapter.param(2)} WHERE id = 1`;
    this.#headClaimSql = `UPDATE ${tables.head} SET seq = ${adapter.param(1)}, hash = ${adapter.param(2)}, updated_at = ${adapter.param(3)} WHERE id = 1 AND seq = ${adapter.param(4)} AND hash = ${adapter.param(5)}`;
  }

  /**
   * Appends events at the head of the chain inside the caller's transaction.
   * The head row's lock (taken by the claiming `UPDATE`, or `UPDATE …
   * RETURNING`, and held until commit) serialises appenders on PostgreSQL;
   * SQLite's write lock does the same. Two transactions can therefore never
   * extend the chain from the same event.
   * Makes a signed checkpoint when the batch crosses a multiple of
   * {@link CHECKPOINT_EVERY}.
   */
  async append(db: ChainDb, events: readonly PreparedEvent[], ctx: { stream: string; signer: AuditSigner; nowMs: number }): Promise<{ events: AuditEvent[]; checkpoint?: Checkpoint }> {
    const n = events.length;
    // Fast path: chain onto the head this process last wrote and claim it in one conditional UPDATE
    // (which takes the same row lock). If anyone else appended meanwhile, or that append rolled back,
    // the claim matches no row and the head is read under its lock instead.
    const guess = this.#heads.get(ctx.stream);
    let chained = guess ? this.#chain(guess, events) : undefined;
    let claimed = false;
    if (guess && chained) {
      const r = await db.executeQuery(CompiledQuery.raw(this.#headClaimSql, [guess.seq + n, chained.last, ctx.nowMs, guess.seq, guess.hash]));
      claimed = Number(r.numAffectedRows ?? 0) === 1;
    }
    if (!claimed) {
      const head = await db.executeQuery<{ seq: number; hash: Buffer }>(CompiledQuery.raw(this.#headSql, [n]));
      const row = head.rows[0];
      if (!row || row.hash.length !== HASH_BYTES) throw new Error(`activity stream head row of ${ctx.stream} is missing or damaged`);
      chained = this.#chain({ seq: Number(row.seq) - n, hash: row.hash }, events);
      await db.executeQuery(CompiledQuery.raw(this.#headSetSql, [chained.last, ctx.nowMs]));
    }
    const { params, out, last: lastHash } = chained!;
    await this.#insert.run(db, params);
    const first = out[0]!.seq;
    const last = first + n - 1;
    if (this.#heads.size >= 10_000) this.#heads.clear();
    this.#heads.set(ctx.stream, { seq: last, hash: lastHash });
    if (Math.floor((first - 1) / CHECKPOINT_EVERY) < Math.floor(last / CHECKPOINT_EVERY)) {
      const checkpoint = ctx.signer.sign({ kind: 'checkpoint', stream: ctx.stream, seq: last, hash: lastHash.toString('hex'), time: rfc3339(ctx.nowMs) });
      await this.insertCheckpoint(db, checkpoint, ctx.nowMs);
      return { events: out, checkpoint };
    }
    return { events: out };
  }

  /** Hashes `events` onto `head`: their row parameters, the events with their seq, and the new head hash. */
  #chain(head: ChainHead, events: readonly PreparedEvent[]): { params: unknown[]; out: AuditEvent[]; last: Buffer } {
    let prev = head.hash;
    const params: unknown[] = [];
    const out: AuditEvent[] = [];
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      const seq = head.seq + 1 + i;
      const h = chainHash(seq, prev, e.body);
      const ev = e.event;
      params.push(seq, ev.id, e.timeMs, ev.type, ev.outcome, ev.principal.type, ev.principal.id, ev.resource?.type ?? null, ev.resource?.id ?? null, e.bodyText, prev, h);
      out.push({ seq, ...ev });
      prev = h;
    }
    return { params, out, last: prev };
  }

  async head(db: ChainDb): Promise<ChainHead | undefined> {
    const r = await sql<ChainHead>`SELECT seq, hash FROM ${sql.raw(this.tables.head)} WHERE id = 1`.execute(db);
    const row = r.rows[0];
    return row ? { seq: Number(row.seq), hash: row.hash } : undefined;
  }

  /** Highest seq present in the events table (0 when empty). */
  async maxSeq(db: ChainDb): Promise<number> {
    const r = await sql<{ m: number | null }>`SELECT max(seq) AS m FROM ${sql.raw(this.tables.events)}`.execute(db);
    return Number(r.rows[0]?.m ?? 0);
  }

  async insertCheckpoint(db: ChainDb, c: Checkpoint, timeMs: number): Promise<void> {
    const t = sql.raw(this.tables.checkpoints);
    await sql`INSERT INTO ${t} (kind, seq, hash, time, key_id, signature) VALUES (${c.kind}, ${c.seq}, ${Buffer.from(c.hash, 'hex')}, ${timeMs}, ${c.keyId}, ${Buffer.from(c.signature, 'base64')}) ON CONFLICT (kind, seq) DO NOTHING`.execute(db);
  }

  /** Stored checkpoints (or anchors) of the stream, by seq; `afterSeq` skips older ones. */
  async checkpoints(db: ChainDb, stream: string, kind: Checkpoint['kind'], afterSeq = 0): Promise<Checkpoint[]> {
    const r = await sql<CheckpointRow>`SELECT kind, seq, hash, time, key_id, signature FROM ${sql.raw(this.tables.checkpoints)} WHERE kind = ${kind} AND seq > ${afterSeq} ORDER BY seq`.execute(db);
    return r.rows.map((row) => ({
      v: 1,
      kind: row.kind as Checkpoint['kind'],
      stream,
      seq: Number(row.seq),
      hash: row.hash.toString('hex'),
      time: rfc3339(Number(row.time)),
      keyId: row.key_id,
      signature: row.signature.toString('base64'),
    }));
  }

  /** The newest purge anchor, if any. */
  async latestAnchor(db: ChainDb, stream: string): Promise<Checkpoint | undefined> {
    const r = await sql<{ m: number | null }>`SELECT max(seq) AS m FROM ${sql.raw(this.tables.checkpoints)} WHERE kind = 'anchor'`.execute(db);
    const m = r.rows[0]?.m;
    if (m === null || m === undefined) return undefined;
    return (await this.checkpoints(db, stream, 'anchor', Number(m) - 1))[0];
  }

  async latestCheckpointSeq(db: ChainDb): Promise<number> {
    const r = await sql<{ m: number | null }>`SELECT max(seq) AS m FROM ${sql.raw(this.tables.checkpoints)} WHERE kind = 'checkpoint'`.execute(db);
    return Number(r.rows[0]?.m ?? 0);
  }

  #where(f: StoreFilter, cursor: RawBuilder<unknown> | undefined): RawBuilder<unknown> {
    const conds: RawBuilder<unknown>[] = [];
    if (cursor) conds.push(cursor);
    if (f.sinceMs !== undefined) conds.push(sql`time >= ${f.sinceMs}`);
    if (f.untilMs !== undefined) conds.push(sql`time < ${f.untilMs}`);
    if (f.outcome !== undefined) conds.push(sql`outcome = ${f.outcome}`);
    if (f.types && f.types.length > 0) {
      const alts = f.types.map((t) => (t.includes('*') ? sql`type LIKE ${likePattern(t)} ESCAPE '\\'` : sql`type = ${t}`));
      conds.push(sql`(${sql.join(alts, sql` OR `)})`);
    }
    return conds.length > 0 ? sql`WHERE ${sql.join(conds, sql` AND `)}` : sql``;
  }

  /** One page of bodies matching `f`: newest first before `beforeSeq`, or oldest first after `afterSeq`. */
  async page(db: ChainDb, f: StoreFilter, at: { beforeSeq?: number; afterSeq?: number }, limit: number): Promise<{ seq: number; body: string }[]> {
    const t = sql.raw(this.tables.events);
    const r =
      at.afterSeq !== undefined
        ? await sql<{ seq: number; body: string }>`SELECT seq, body FROM ${t} ${this.#where(f, sql`seq > ${at.afterSeq}`)} ORDER BY seq ASC LIMIT ${limit}`.execute(db)
        : await sql<{ seq: number; body: string }>`SELECT seq, body FROM ${t} ${this.#where(f, at.beforeSeq === undefined ? undefined : sql`seq < ${at.beforeSeq}`)} ORDER BY seq DESC LIMIT ${limit}`.execute(db);
    return r.rows.map((row) => ({ seq: Number(row.seq), body: row.body }));
  }

  /** The verification records of events [from, to] (see `chain-scan.ts`), or null when there are none. */
  async chunk(db: ChainDb, from: number, to: number): Promise<Buffer | null> {
    const text = this.#postgres ? postgresChunkSql(this.tables.events) : sqliteOrderedChunkSql(this.tables.events);
    const r = await db.executeQuery<{ chunk: Buffer | null }>(CompiledQuery.raw(text, [from, to]));
    return r.rows[0]?.chunk ?? null;
  }

  /** Full rows of a few events, for diagnosing problems. */
  async rows(db: ChainDb, seqs: readonly number[]): Promise<{ seq: number; id: string; prev_hash: Buffer; hash: Buffer; body: string }[]> {
    if (seqs.length === 0) return [];
    const r = await sql<{ seq: number; id: string; prev_hash: Buffer; hash: Buffer; body: string }>`SELECT seq, id, prev_hash, hash, body FROM ${sql.raw(this.tables.events)} WHERE seq IN (${sql.join([...seqs])})`.execute(db);
    return r.rows.map((row) => ({ ...row, seq: Number(row.seq) }));
  }

  /** Where events with these hashes sit (a full scan: used only to diagnose a broken chain). */
  async seqsByHash(db: ChainDb, hashes: readonly Buffer[]): Promise<Map<string, number>> {
    const found = new Map<string, number>();
    if (hashes.length === 0) return found;
    const r = await sql<{ seq: number; hash: Buffer }>`SELECT seq, hash FROM ${sql.raw(this.tables.events)} WHERE hash IN (${sql.join([...hashes])})`.execute(db);
    for (const row of r.rows) found.set(row.hash.toString('hex'), Number(row.seq));
    return found;
  }

  /** The first event in (afterSeq, toSeq] that is not older than `cutoffMs`, if any. */
  async firstRetained(db: ChainDb, afterSeq: number, toSeq: number, cutoffMs: number): Promise<number | undefined> {
    const r = await sql<{ m: number | null }>`SELECT min(seq) AS m FROM ${sql.raw(this.tables.events)} WHERE seq > ${afterSeq} AND seq <= ${toSeq} AND time >= ${cutoffMs}`.execute(db);
    const m = r.rows[0]?.m;
    return m === null || m === undefined ? undefined : Number(m);
  }

  /** Deletes events through `seq`, and checkpoints and anchors older than the anchor at `seq`. Returns events deleted. */
  async deleteThrough(db: ChainDb, seq: number): Promise<number> {
    const r = await sql`DELETE FROM ${sql.raw(this.tables.events)} WHERE seq <= ${seq}`.execute(db);
    await sql`DELETE FROM ${sql.raw(this.tables.checkpoints)} WHERE seq < ${seq} OR (kind = 'checkpoint' AND seq = ${seq})`.execute(db);
    return Number(r.numAffectedRows ?? 0);
  }
}
