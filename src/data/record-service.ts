import { sql, type CompiledQuery, type Kysely, type Selectable, type SelectQueryBuilder } from 'kysely';
import type { AuditService } from '../audit/audit-service.js';
import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { isId, newId } from '../core/ids.js';
import type { EncryptedSource } from '../crypto/encrypted-source.js';
import { ciphertextGeneration, type ObjectKeys } from '../crypto/field-cipher.js';
import type { KeyService } from '../crypto/key-service.js';
import { authorize, can, type AuthContext } from '../iam/authorize.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { TenantDB } from '../storage/schema.js';
import type { Storage } from '../storage/storage.js';
import type { RecordsTable } from './data-tables.js';
import { CUSTOMER_ID, EMAIL, MATCH_KEYS, MD5, MOBILE, SHA256, checkValue, type MatchKey } from './fields.js';
import type { ListService, LoadedList } from './list-service.js';
import { ohashes } from './ohash.js';
import { LIST_OBJECT, decodeRecord, encodeRecord, indexText, indexValue, type EncodedRecord, lookupKey, normaliseForMatch, openProtected, sealProtected } from './record-codec.js';
import { redact } from './redaction.js';
import { RecordKeys, rekeyed, type FoldPolicy, type KeyColumn, type KeyedRecord } from './record-keys.js';
import { csvHeader, type ExportPage, type ExportShape } from './export-format.js';
import { DataWorkers, ENCODE_SLICE, type EncodeInput } from './data-workers.js';
import { MultiRowInsert } from '../storage/multi-row-insert.js';
import { MultiRowUpdate } from '../storage/multi-row-update.js';
import { chunks } from '../core/chunks.js';

export interface RecordView {
  id: string;
  fields: Record<string, unknown>;
  createdAt: string;
  updatedAt: string;
}

export interface LineError {
  /** 1-based position of the record in the request (or the file line, as the caller numbers it). */
  line: number;
  field?: string;
  reason: string;
}

export interface MergeOptions {
  matchKey: MatchKey;
  /** Insert records that match nothing (default true). */
  insertOnNoMatch?: boolean;
  /** What a match does: `merge` (default) sets the given fields and keeps the others; `replace` clears the others; `none` leaves the record alone. */
  updateOnMatch?: 'merge' | 'replace' | 'none';
  /** Line number of the first record, for files (default 1). */
  firstLine?: number;
}

export interface MergeResult {
  inserted: number;
  updated: number;
  skipped: number;
  /** The record id each input line ended on. */
  ids: string[];
}

export interface Filter {
  field: string;
  value: string | number | boolean;
}

/** Most records per merge, create or delete request. */
export const MAX_BATCH = 10_000;
/** Console (cookie) exports stop here; the API and bulk channels have no limit. */
export const CONSOLE_EXPORT_LIMIT = 5000;
const PAGE = 1000;
const CHUNK = 500;
/** New rows after which a tenant's records statistics are refreshed (PostgreSQL). */
export const STATS_REFRESH_ROWS = 10_000;

type Row = Selectable<RecordsTable>;
/** The columns a record's view is rendered from. */
type ViewRow = Pick<Row, 'id' | 'plain' | 'protected' | 'email_sha256' | 'email_md5' | 'created_at' | 'updated_at'>;
/** A {@link ViewRow} as read: the sealed values as hex text. */
type ViewRowHex = Omit<ViewRow, 'protected'> & { protected_hex: string | null };
type RecordsQuery = SelectQueryBuilder<TenantDB, 'records', Row>;

function lineError(line: number, reason: string, field?: string): LineError {
  return field === undefined ? { line, reason } : { line, field, reason };
}

/** A stored record's lookup keys and number (on SQLite every stored record has one). */
function keyedRecord(r: { seq?: number | null; k_sha256: number | null; k_md5: number | null; k_mobile: number | null }): KeyedRecord {
  if (r.seq === null || r.seq === undefined) throw new Error('a stored record has no number in its list');
  return { seq: Number(r.seq), k_sha256: r.k_sha256, k_md5: r.k_md5, k_mobile: r.k_mobile };
}

/** The columns a new record is inserted with, in order (SQLite stores add `seq`). */
const RECORD_COLUMNS = ['list_key', 'id', 'customer_id', 'email_sha256', 'email_md5', 'email_bi', 'mobile_bi', 'k_sha256', 'k_md5', 'k_mobile', 'plain', 'protected', 'created_at', 'updated_at'] as const;
/** Rows per records INSERT (see `MultiRowInsert`). */
const RECORD_INSERT_SIZES = [200, 50, 10, 1] as const;
/** The columns a write of a stored record sets: all but its identity and creation time. */
const UPDATED_COLUMNS = RECORD_COLUMNS.filter((c) => c !== 'list_key' && c !== 'id' && c !== 'created_at');
/** Rows per records UPDATE on PostgreSQL (see `MultiRowUpdate`; SQLite updates a row per statement). */
const RECORD_UPDATE_SIZES = [200, 50, 10, 1] as const;

/** An UPDATE of `columns` of stored records, by list and id (the SQL types are those of migration 0007's `records`). */
function recordUpdate(adapter: StorageAdapter, columns: readonly (keyof RecordsTable)[]): MultiRowUpdate {
  const { blobType: blob, bigintType: big } = adapter;
  const types = { id: 'text', customer_id: 'text', email_sha256: 'text', email_md5: 'text', email_bi: blob, mobile_bi: blob, k_sha256: big, k_md5: big, k_mobile: big, plain: 'text', protected: blob, updated_at: big };
  return new MultiRowUpdate({ table: 'records', scope: 'list_key', key: 'id', columns, types }, RECORD_UPDATE_SIZES, adapter);
}


/** A message without the value: the value may be personal data. */
function reasonOf(err: unknown): string {
  const msg = (err as Error).message ?? 'invalid';
  const colon = msg.indexOf(': ');
  return colon >= 0 ? msg.slice(colon + 2) : msg;
}

/**
 * A new record being encoded on the data workers while the write transaction
 * runs: its slice of the batch (resolving with the slice's records in order,
 * or undefined if the workers failed it) and its place in that slice.
 */
interface Ahead {
  slice: Promise<EncodedRecord[] | undefined>;
  index: number;
}

interface Item {
  line: number;
  target: Row | null;
  values: Map<string, unknown>;
  mode: 'merge' | 'replace';
  presetHashes?: { sha256?: string; md5?: string } | undefined;
  /** Matched by an oHash: the stored email and oHashes are kept whatever the mode (see `#write`). */
  byOHash?: boolean | undefined;
  /** A new record's id, when it was given one outside the write transaction (with {@link Item.ahead}). */
  id?: string | undefined;
  /** A new record encoded outside the write transaction (by {@link RecordService.merge}). */
  ahead?: Ahead | undefined;
}

/** The lines of a merge batch that name one record, with their combined values. */
interface Group {
  key: string;
  lines: number[];
  values: Map<string, unknown>;
  /** The match key's value as given (the key its targets are looked up by). */
  match: unknown;
  presetHashes?: { sha256?: string; md5?: string };
  /** For a group that named no stored record in the first phase: the new record's id and its encoding. */
  id?: string;
  ahead?: Ahead;
}

/** An item as the write sees it: the record after the write, and the item's place in the batch. */
interface Planned {
  item: Item;
  /** Position in the batch (the order errors are reported in). */
  at: number;
  input: EncodeInput;
}

/** An encoded record of the batch, with what the write needs to know of it. */
interface Encoded extends EncodedRecord {
  item: Item;
  at: number;
}

/**
 * Errors of a batch by kind, reported in this order and, within a kind, in
 * the order of the batch (unique custom fields: field by field).
 */
interface BatchErrors {
  required: LineError[];
  claims: LineError[];
  customer: Array<{ at: number; error: LineError }>;
  email: Array<{ at: number; error: LineError }>;
  unique: Array<{ field: number; at: number; error: LineError }>;
}

function batchErrorCount(e: BatchErrors): number {
  return e.required.length + e.claims.length + e.customer.length + e.email.length + e.unique.length;
}

function batchErrorList(e: BatchErrors): LineError[] {
  const byAt = <T extends { at: number }>(a: T, b: T) => a.at - b.at;
  return [
    ...e.required,
    ...e.claims,
    ...e.customer.sort(byAt).map((x) => x.error),
    ...e.email.sort(byAt).map((x) => x.error),
    ...e.unique.sort((a, b) => a.field - b.field || a.at - b.at).map((x) => x.error),
  ];
}

/** New records per slice encoded ahead of a merge's write (the write takes them up slice by slice as they are ready). */
const AHEAD_SLICE = 1000;

/**
 * Records of lists: create, read, update, delete, batch merge (upsert by a
 * match key, all or nothing, with the line and reason of every rejected
 * record), search with cursor pagination, and exports. `pii` and `sensitive`
 * values are encrypted under the list's data key; principals without
 * `data.pii.view` get `pii` values masked on every path; reads of `pii` in
 * clear and every export are recorded in the activity stream.
 */
export class RecordService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #keys: KeyService;
  readonly #audit: AuditService;
  readonly #lists: ListService;
  readonly #adapter: StorageAdapter;
  readonly #recordKeys: RecordKeys;

  readonly #log: Logger | undefined;
  readonly #workers: DataWorkers;

  /**
   * `workers`: where export pages are rendered and imported records encrypted (default: in this thread);
   * `keyFold`: when SQLite's recent lookup keys are folded (default `DEFAULT_FOLD`).
   */
  constructor(deps: { storage: Storage; clock: Clock; keys: KeyService; audit: AuditService; lists: ListService; logger?: Logger; workers?: DataWorkers; keyFold?: FoldPolicy }) {
    this.#log = deps.logger;
    this.#workers = deps.workers ?? new DataWorkers({ threads: 0 });
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#keys = deps.keys;
    this.#audit = deps.audit;
    this.#lists = deps.lists;
    this.#adapter = deps.storage.adapter;
    this.#recordKeys = new RecordKeys(deps.storage.adapter, deps.keyFold);
    this.#recordColumns = this.#recordKeys.tables ? [...RECORD_COLUMNS, 'seq'] : RECORD_COLUMNS;
    this.#recordInsert = new MultiRowInsert('records', this.#recordColumns, RECORD_INSERT_SIZES, deps.storage.adapter);
    this.#recordUpdate = recordUpdate(deps.storage.adapter, UPDATED_COLUMNS);
  }

  #keysOf(db: Kysely<TenantDB>, tenantId: string, listId: string): Promise<ObjectKeys> {
    return this.#keys.objectKeys(db, tenantId, LIST_OBJECT, listId);
  }

  /** Decrypts rows for reading with cached keys; on a generation the cache does not know yet, once more with fresh keys. */
  async #decodeAll(db: Kysely<TenantDB>, tenantId: string, list: LoadedList, rows: Array<Pick<Row, 'id' | 'plain' | 'protected' | 'email_sha256' | 'email_md5'>>): Promise<Array<Map<string, unknown>>> {
    let keys = await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, list.row.id);
    try {
      return rows.map((r) => decodeRecord(keys, list.fields, r));
    } catch (err) {
      if ((err as CustosError).code !== 'decryption_failed') throw err;
      keys = await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, list.row.id, { fresh: true });
      return rows.map((r) => decodeRecord(keys, list.fields, r));
    }
  }

  /** Renders field values for a principal: `pii` masked without `data.pii.view`. */
  #render(auth: AuthContext, list: LoadedList, row: Pick<Row, 'id' | 'created_at' | 'updated_at'>, values: Map<string, unknown>): RecordView {
    const clear = can(auth, 'data.pii.view');
    const fields: Record<string, unknown> = {};
    for (const f of list.fields) {
      const v = values.get(f.name) ?? null;
      fields[f.name] = clear ? v : redact(f, v);
    }
    return { id: row.id, fields, createdAt: rfc3339(row.created_at), updatedAt: rfc3339(row.updated_at) };
  }

  #hasPii(list: LoadedList): boolean {
    return list.fields.some((f) => f.classification === 'pii');
  }

  /**
   * Records a read of personal data in clear — after the read's transaction,
   * through the activity stream's group commit (a read does not pay a write
   * transaction of its own), and before the answer leaves: if the event
   * cannot be written, the read fails.
   */
  async #recordPiiRead(auth: AuthContext, tenantId: string, list: LoadedList, count: number): Promise<void> {
    if (count === 0 || !this.#hasPii(list) || !can(auth, 'data.pii.view')) return;
    await this.#audit.record(tenantId, { type: 'data.pii.read', outcome: 'success', actor: auth, resource: { type: 'list', id: list.row.id, name: list.row.name }, details: { records: count } });
  }

  // --- validation ------------------------------------------------------------------

  /** Checks one incoming record against the schema; collects problems instead of throwing. */
  #check(list: LoadedList, input: unknown, line: number, errors: LineError[], opts: { matchKey?: MatchKey }): Map<string, unknown> | undefined {
    if (input === null || typeof input !== 'object' || Array.isArray(input)) {
      errors.push(lineError(line, 'a record must be an object of field values'));
      return undefined;
    }
    const values = new Map<string, unknown>();
    let ok = true;
    for (const [name, raw] of Object.entries(input as Record<string, unknown>)) {
      const field = list.fields.find((f) => f.name === name);
      if (!field) {
        errors.push(lineError(line, 'unknown field', name.slice(0, 64)));
        ok = false;
        continue;
      }
      if (field.computed && opts.matchKey !== name) {
        errors.push(lineError(line, 'computed from EMAIL_ADDRESS_; cannot be written', name));
        ok = false;
        continue;
      }
      try {
        values.set(name, field.computed ? checkHash(raw, name === SHA256 ? 64 : 32) : checkValue(field, raw));
      } catch (err) {
        errors.push(lineError(line, reasonOf(err), name));
        ok = false;
      }
    }
    if (opts.matchKey && (opts.matchKey === SHA256 || opts.matchKey === MD5) && values.has(EMAIL)) {
      errors.push(lineError(line, 'an oHash match key cannot update EMAIL_ADDRESS_', EMAIL));
      ok = false;
    }
    // A match key given as null or blank text names no record: grouped and matched by its text, every such line would
    // fold into one record (or update a stored record whose key is the text "null"). (A value that failed its check
    // is reported above, and is not in `values`.)
    if (opts.matchKey && (!Object.hasOwn(input, opts.matchKey) || (values.has(opts.matchKey) && isBlank(values.get(opts.matchKey))))) {
      errors.push(lineError(line, 'the match key is missing', opts.matchKey));
      ok = false;
    }
    return ok ? values : undefined;
  }

  // --- writing -------------------------------------------------------------------------

  /**
   * Uniqueness against stored records and within the batch, then the writes.
   *
   * New records encoded ahead of the transaction ({@link RecordService.merge})
   * are taken up slice by slice as the data workers finish them, so that the
   * transaction's look-ups and inserts run beside the encoding of the later
   * slices; everything else (updates, and new records not encoded ahead) comes
   * last. The batch is all or nothing, and what it reports does not depend on
   * the slicing: uniqueness within the batch is checked first, on the values
   * themselves (a blind index is equal exactly when its normalised text is);
   * a slice is written only while nothing has been rejected, so every look-up
   * sees the stored records as they were before the batch (the records the
   * batch updates are written last); once anything is rejected, the later
   * slices are still checked, so that every rejected line is reported, and
   * the caller's transaction rolls back.
   */
  async #write(db: Kysely<TenantDB>, tenantId: string, list: LoadedList, keys: ObjectKeys, items: Item[]): Promise<{ ids: string[]; foldDue: boolean }> {
    const listKey = list.row.key;
    const now = this.#clock.now();
    const times = { created: now, updated: now };
    const errors: BatchErrors = { required: [], claims: [], customer: [], email: [], unique: [] };

    // The record after the write: a merge keeps the stored values of the fields it does not name; a replace keeps
    // nothing, except when it matched by an oHash. An oHash names the record by its email without giving the email
    // (the caller may not know it, and may not change it: `#check`), so the email is not the caller's to clear
    // either: a replace by an oHash keeps the stored email and both oHashes, and replaces the other fields. (Refusing
    // the combination instead would leave no way to replace a record's fields by its oHash; keeping is sound because
    // the record stays the one the oHash named, found by it, by the other oHash and by its email as before.)
    // The oHashes of a record stored without an email (given as a match key) are kept while the write does not touch
    // the email; a write that sets the email computes them from it, and one that clears it clears them: the old
    // email's oHashes must not keep naming the record.
    const planned: Planned[] = items.map((item, at) => {
      let values = item.values;
      let hashes = item.presetHashes;
      const keepsIdentity = item.mode === 'replace' && item.byOHash === true;
      if (item.target && (item.mode === 'merge' || keepsIdentity)) {
        const stored = decodeRecord(keys, list.fields, item.target);
        values = new Map();
        for (const f of list.fields) {
          if (f.computed) continue;
          const v = item.values.has(f.name) ? item.values.get(f.name) : item.mode === 'merge' || f.name === EMAIL ? stored.get(f.name) : undefined;
          if (v !== null && v !== undefined) values.set(f.name, v);
        }
        if (!item.values.has(EMAIL) && !values.has(EMAIL)) hashes = { sha256: hashes?.sha256 ?? item.target.email_sha256 ?? undefined, md5: hashes?.md5 ?? item.target.email_md5 ?? undefined };
      }
      for (const f of list.fields) {
        if (!f.required) continue;
        const v = values.get(f.name);
        if (v === null || v === undefined) errors.required.push(lineError(item.line, 'is required', f.name));
      }
      // (A stored record's creation time is not written again: the UPDATE leaves it.)
      return { item, at, input: { id: item.target?.id ?? item.id ?? newId(now), values, presetHashes: hashes } };
    });
    this.#claims(list, planned, errors);

    // Slices encoded ahead, in the order they were sent; then the rest.
    const slices = new Map<Promise<EncodedRecord[] | undefined>, Planned[]>();
    const rest: Planned[] = [];
    for (const p of planned) {
      const ahead = p.item.target === null ? p.item.ahead : undefined;
      if (!ahead) rest.push(p);
      else if (slices.has(ahead.slice)) slices.get(ahead.slice)!.push(p);
      else slices.set(ahead.slice, [p]);
    }
    let foldDue = false;
    for (const [slice, members] of slices) {
      const out = await slice;
      const rows = members.map((p): Encoded => {
        const e = out?.[p.item.ahead!.index];
        // The workers failed this slice (logged where it was sent): encode its records here.
        const encoded = e !== undefined && e.row.id === p.input.id ? e : encodeRecord(keys, list.fields, listKey, p.input.id, p.input.values, times, p.input.presetHashes);
        return { ...encoded, item: p.item, at: p.at };
      });
      foldDue = (await this.#checkAndWrite(db, list, rows, errors)) || foldDue;
    }
    if (rest.length > 0) {
      // Records not encoded ahead of the transaction (updates, mostly): a large batch of them on the data workers.
      const job = { fields: list.fields, listKey, times, records: rest.map((p) => p.input) };
      let out: EncodedRecord[] | undefined;
      if (rest.length >= ENCODE_SLICE) {
        try {
          out = await this.#workers.encode(keys, job);
        } catch (err) {
          this.#log?.warn({ err, tenantId }, 'records could not be encoded on the data workers; encoding them here');
        }
      }
      const rows = rest.map((p, i): Encoded => ({ ...(out?.[i] ?? encodeRecord(keys, list.fields, listKey, p.input.id, p.input.values, times, p.input.presetHashes)), item: p.item, at: p.at }));
      foldDue = (await this.#checkAndWrite(db, list, rows, errors)) || foldDue;
    }
    if (batchErrorCount(errors) > 0) throw batchError(batchErrorList(errors));
    return { ids: planned.map((p) => p.input.id), foldDue };
  }

  /**
   * Uniqueness within a batch, in its order: a customer id, an email (as it is matched:
   * trimmed, lower-case) or a value of a unique custom field (its index text) given for
   * two records. The write's blind indexes are equal exactly when these texts are.
   */
  #claims(list: LoadedList, planned: readonly Planned[], errors: BatchErrors): void {
    // Per kind of value, the first record of the batch that gave it (its position in `planned`).
    const unique = list.fields.filter((f) => !f.computed && f.indexed && !f.standard && f.unique);
    const byKind = [CUSTOMER_ID, EMAIL, ...unique.map((f) => f.name)].map(() => new Map<string, number>());
    const claim = (kind: number, key: string, at: number, field: string) => {
      const claims = byKind[kind]!;
      const prev = claims.get(key);
      if (prev === undefined) claims.set(key, at);
      else if (planned[prev]!.input.id !== planned[at]!.input.id) errors.claims.push(lineError(planned[at]!.item.line, `the same value is given on line ${planned[prev]!.item.line}`, field));
    };
    for (let at = 0; at < planned.length; at++) {
      const values = planned[at]!.input.values;
      const customerId = values.get(CUSTOMER_ID);
      if (typeof customerId === 'string') claim(0, customerId, at, CUSTOMER_ID);
      const email = values.get(EMAIL);
      if (typeof email === 'string') claim(1, normaliseForMatch(email), at, EMAIL);
      for (let u = 0; u < unique.length; u++) {
        const f = unique[u]!;
        const v = values.get(f.name);
        if (v !== null && v !== undefined) claim(2 + u, indexText(f, v), at, f.name);
      }
    }
  }

  /**
   * Checks encoded records of a batch against the stored records (customer id, email, unique
   * custom fields) and, while nothing of the batch has been rejected, writes them. Returns
   * whether a fold of the lookup-key tables is due.
   */
  async #checkAndWrite(db: Kysely<TenantDB>, list: LoadedList, rows: readonly Encoded[], errors: BatchErrors): Promise<boolean> {
    const listKey = list.row.key;
    const byCustomer = rows.filter((r) => r.row.customer_id !== null);
    for (const part of chunks(byCustomer, CHUNK)) {
      const found = await db.selectFrom('records').select(['id', 'customer_id']).where('list_key', '=', listKey).where('customer_id', 'in', part.map((r) => r.row.customer_id!)).execute();
      const owner = new Map(found.map((f) => [f.customer_id!, f.id]));
      for (const r of part) {
        const o = owner.get(r.row.customer_id!);
        if (o !== undefined && o !== r.row.id) errors.customer.push({ at: r.at, error: lineError(r.item.line, 'already used by another record', CUSTOMER_ID) });
      }
    }
    // Emails are found through their oHash key, then compared on the blind index.
    const byEmail = rows.filter((r) => r.row.email_bi !== null);
    for (const part of chunks(byEmail, CHUNK)) {
      const candidates = this.#recordKeys.whereKey(db.selectFrom('records').select(['id', 'email_bi']).where('list_key', '=', listKey), db, listKey, 'k_sha256', [...new Set(part.map((r) => r.row.k_sha256!))]);
      const found = await candidates.where('email_bi', 'is not', null).execute();
      const owner = new Map(found.map((f) => [f.email_bi!.toString('base64'), f.id]));
      for (const r of part) {
        const o = owner.get(r.row.email_bi!.toString('base64'));
        if (o !== undefined && o !== r.row.id) errors.email.push({ at: r.at, error: lineError(r.item.line, 'already used by another record', EMAIL) });
      }
    }
    const uniqueFields = list.fields.filter((x) => x.unique && !x.standard);
    for (const [fi, f] of uniqueFields.entries()) {
      const withIt = rows.flatMap((r) => r.index.filter((ix) => ix.field === f.name).map((ix) => ({ r, value: ix.value })));
      for (const part of chunks(withIt, CHUNK)) {
        const found = await db.selectFrom('record_index').select(['record_id', 'value']).where('list_key', '=', listKey).where('field', '=', f.name).where('value', 'in', part.map((p) => p.value)).execute();
        const owner = new Map(found.map((x) => [x.value.toString('base64'), x.record_id]));
        for (const p of part) {
          const o = owner.get(p.value.toString('base64'));
          if (o !== undefined && o !== p.r.row.id) errors.unique.push({ field: fi, at: p.r.at, error: lineError(p.r.item.line, 'already used by another record', f.name) });
        }
      }
    }
    if (batchErrorCount(errors) > 0) return false;

    const inserts = rows.filter((r) => r.item.target === null);
    const recordKeys = this.#recordKeys;
    // SQLite: new records are numbered in their list (the caller holds the write lock), and their lookup keys go to the key tables.
    const firstSeq = recordKeys.tables && inserts.length > 0 ? await recordKeys.nextSeq(db, listKey) : 0;
    const inserted = inserts.map((r, i) => (recordKeys.tables ? { ...r.row, seq: firstSeq + i } : r.row));
    await this.#insertRecords(db, inserted);
    let foldDue = recordKeys.tables && (await recordKeys.add(db, listKey, inserted.map(keyedRecord)));
    const updates = rows.filter((x) => x.item.target !== null);
    if (updates.length > 0) {
      const rekeys = { remove: [] as KeyedRecord[], add: [] as KeyedRecord[] };
      // Stored records: on PostgreSQL hundreds per statement (a merge names each record once: its lines are grouped).
      const updated = await this.#recordUpdate.run(db, listKey, updates.map((r) => [r.row.id, ...UPDATED_COLUMNS.map((c) => r.row[c] ?? null)]));
      // The targets were read in this transaction, under the list's write lock: each is there.
      if (updated !== updates.length) throw new Error(`${updates.length - updated} stored records to update were not found in their list`);
      if (recordKeys.tables) {
        for (const r of updates) {
          const change = rekeyed(keyedRecord(r.item.target!), r.row);
          if (change.remove) rekeys.remove.push(change.remove);
          if (change.add) rekeys.add.push(change.add);
        }
      }
      await recordKeys.remove(db, listKey, rekeys.remove);
      foldDue = (await recordKeys.add(db, listKey, rekeys.add)) || foldDue;
      // Updated records: their index rows are rebuilt from the whole record after the write.
      for (const part of chunks(updates.map((r) => r.row.id), CHUNK)) await db.deleteFrom('record_index').where('list_key', '=', listKey).where('record_id', 'in', part).execute();
    }
    const indexRows = rows.flatMap((r) => r.index.map((ix) => ({ list_key: listKey, field: ix.field, value: ix.value, record_id: r.row.id })));
    for (const part of chunks(indexRows, 500)) await db.insertInto('record_index').values(part).execute();
    return foldDue;
  }

  /** New records' columns, in order: the insert's, and the order their values are flattened in. */
  readonly #recordColumns: readonly (keyof RecordsTable)[];
  readonly #recordInsert: MultiRowInsert;
  /** The UPDATE of stored records: on PostgreSQL many per statement (see `MultiRowUpdate`); SQL built once, not through Kysely's builder (which cost a tenth of an update import's CPU). */
  readonly #recordUpdate: MultiRowUpdate;

  /** Inserts new records, a few statements for thousands (see `MultiRowInsert`). */
  async #insertRecords(db: Kysely<TenantDB>, rows: readonly RecordsTable[]): Promise<void> {
    const params: unknown[] = [];
    for (const r of rows) for (const c of this.#recordColumns) params.push(r[c] ?? null);
    await this.#recordInsert.run(db, params);
  }

  /** The stored records a merge's match values name, whole (the write transaction's authoritative look-up). */
  async #targets(db: Kysely<TenantDB>, keys: ObjectKeys, listKey: number, matchKey: MatchKey, matches: unknown[]): Promise<Map<string, Row>> {
    return this.#matching(db, keys, listKey, matchKey, matches, (q) => q.selectAll());
  }

  /**
   * The match values that name stored records, reading only the match key's column (a merge's first phase, which
   * only needs to know which records exist; by customer id the index alone answers). Whole rows cost a re-import
   * ~7 µs per record more.
   */
  async #existing(db: Kysely<TenantDB>, keys: ObjectKeys, listKey: number, matchKey: MatchKey, matches: unknown[]): Promise<Set<string>> {
    const column = matchKey === CUSTOMER_ID ? 'customer_id' : matchKey === EMAIL ? 'email_bi' : matchKey === SHA256 ? 'email_sha256' : 'email_md5';
    return new Set((await this.#matching(db, keys, listKey, matchKey, matches, (q) => q.select(column))).keys());
  }

  async #matching<R extends Partial<Pick<Row, 'customer_id' | 'email_bi' | 'email_sha256' | 'email_md5'>>>(
    db: Kysely<TenantDB>,
    keys: ObjectKeys,
    listKey: number,
    matchKey: MatchKey,
    matches: unknown[],
    columns: (q: SelectQueryBuilder<TenantDB, 'records', object>) => SelectQueryBuilder<TenantDB, 'records', R>,
  ): Promise<Map<string, R>> {
    const keyOf = (raw: unknown) => matchValue(keys, matchKey, raw);
    const out = new Map<string, R>();
    if (matchKey === CUSTOMER_ID) {
      for (const part of chunks([...new Set(matches.map(keyOf))], CHUNK)) {
        for (const row of await columns(db.selectFrom('records')).where('list_key', '=', listKey).where('customer_id', 'in', part).execute()) out.set(row.customer_id!, row);
      }
      return out;
    }
    // oHash keys, and emails through the SHA-256 oHash of their normalised form: candidates by the 48-bit key, confirmed on the full value.
    const lookups = matches.map((raw) => {
      const hash = matchKey === EMAIL ? ohashes(String(raw)).sha256 : String(raw);
      return lookupKey(hash);
    });
    const column = matchKey === MD5 ? 'k_md5' : 'k_sha256';
    for (const part of chunks([...new Set(lookups)], CHUNK)) {
      for (const row of await this.#recordKeys.whereKey(columns(db.selectFrom('records')).where('list_key', '=', listKey), db, listKey, column, part).execute()) {
        const r = row as R;
        const k = matchKey === EMAIL ? r.email_bi?.toString('base64') : matchKey === SHA256 ? r.email_sha256 : r.email_md5;
        if (k && !out.has(k)) out.set(k, r);
      }
    }
    return out;
  }

  /**
   * Upserts up to 10,000 records by a match key in one transaction: all or
   * nothing. On any invalid record, the answer lists the line and reason of
   * every one (values never repeated) and nothing changes.
   *
   * Two phases. First, without a write transaction: validation, grouping of
   * lines that name the same record, and the encryption of the records that
   * do not exist yet (the bulk of the CPU work of an import), on the data
   * workers in slices of {@link AHEAD_SLICE}. Then, once the first slice is
   * ready, the write transaction, serialised per list: it finds the targets
   * again, authoritatively, checks and writes the new records slice by slice
   * as the workers finish them (see `#write`), and encodes what the first
   * phase could not use (records that appeared or disappeared in between,
   * updates, or everything if the list's schema or data-key generation
   * changed). The tenant's write lock is not held while the first slice is
   * encrypted, and another server process can write while this one encrypts
   * its first slice.
   */
  async merge(auth: AuthContext, tenantId: string, listId: string, records: unknown[], opts: MergeOptions): Promise<MergeResult> {
    if (!MATCH_KEYS.includes(opts.matchKey)) throw new CustosError('validation_failed', `matchKey must be one of ${MATCH_KEYS.join(', ')}`);
    if (!Array.isArray(records) || records.length === 0 || records.length > MAX_BATCH) throw new CustosError('validation_failed', `a batch holds 1 to ${MAX_BATCH} records`);
    const first = opts.firstLine ?? 1;
    const insertNew = opts.insertOnNoMatch ?? true;
    const update = opts.updateOnMatch ?? 'merge';
    const store = this.#storage.tenant(tenantId);
    const pre = await store.read(async (db) => {
      const list = await this.#lists.load(db, auth, listId, 'lists.write', { cached: true });
      const keys = await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, list.row.id);
      const groups = this.#group(list, keys, records, first, opts.matchKey);
      const targets = await this.#existing(db, keys, list.row.key, opts.matchKey, groups.map((g) => g.match));
      return { list, keys, groups, targets };
    });
    if (insertNew) {
      // The bulk of an import's CPU, on the data workers' threads (or in slices on this one), while this thread serves
      // other requests and, once the first slice is ready, runs the write transaction beside the encoding of the others.
      // Should the workers fail a slice, the write transaction encodes its records itself.
      const now = this.#clock.now();
      const fresh = pre.groups.filter((g) => !pre.targets.has(g.key));
      const fields = pre.list.fields;
      const listKey = pre.list.row.key;
      let previous: Promise<unknown> = Promise.resolve();
      for (const part of chunks(fresh, AHEAD_SLICE)) {
        for (const g of part) g.id = newId(now);
        const job = { fields, listKey, times: { created: now, updated: now }, records: part.map((g) => ({ id: g.id!, values: g.values, presetHashes: g.presetHashes })) };
        // With worker threads every slice is sent at once (the threads take them in turn); without, one after the
        // other, with a turn of the event loop before each (the encoding yields between its own parts too).
        const run = () => this.#workers.encode(pre.keys, job);
        const slice = (this.#workers.threads > 0 ? run() : previous.then(() => new Promise((resolve) => setImmediate(resolve))).then(run)).catch((err: unknown) => {
          this.#log?.warn({ err, tenantId }, 'records could not be encoded ahead of the write; the write encodes them');
          return undefined;
        });
        previous = slice;
        part.forEach((g, index) => (g.ahead = { slice, index }));
      }
      await fresh[0]?.ahead?.slice;
    }
    return store.transaction(async (db) => {
      await this.#lists.lockForWrite(db, listId);
      const list = await this.#lists.load(db, auth, listId, 'lists.write');
      const keys = await this.#keysOf(db, tenantId, listId);
      const reuse = list.row.schema_version === pre.list.row.schema_version && keys.active.generation === pre.keys.active.generation;
      const groups = reuse ? pre.groups : this.#group(list, keys, records, first, opts.matchKey);
      const targets = await this.#targets(db, keys, list.row.key, opts.matchKey, groups.map((g) => g.match));
      const items: Item[] = [];
      let skipped = 0;
      const ids: string[] = Array.from({ length: records.length }, () => '');
      const itemOf: Array<Item | null> = Array.from({ length: records.length }, () => null);
      for (const g of groups) {
        const target = targets.get(g.key) ?? null;
        if ((target && update === 'none') || (!target && !insertNew)) {
          skipped += g.lines.length;
          if (target) for (const line of g.lines) ids[line - first] = target.id;
          continue;
        }
        const item: Item = {
          line: g.lines[0]!,
          target,
          values: g.values,
          mode: target ? (update === 'replace' ? 'replace' : 'merge') : 'replace',
          presetHashes: g.presetHashes,
          byOHash: opts.matchKey === SHA256 || opts.matchKey === MD5,
          id: target ? undefined : g.id,
          ahead: target ? undefined : g.ahead,
        };
        items.push(item);
        for (const line of g.lines) itemOf[line - first] = item;
      }
      const { ids: written, foldDue } = await this.#write(db, tenantId, list, keys, items);
      const idOf = new Map(items.map((item, i) => [item, written[i]!]));
      for (let i = 0; i < itemOf.length; i++) {
        const item = itemOf[i];
        if (item) ids[i] = idOf.get(item)!;
      }
      const inserted = items.filter((i) => i.target === null).length;
      const updated = items.length - inserted;
      await this.#audit.append(db, tenantId, {
        type: 'records.merge',
        outcome: 'success',
        actor: auth,
        resource: { type: 'list', id: listId, name: list.row.name },
        details: { matchKey: opts.matchKey, received: records.length, inserted, updated, skipped },
      });
      return { result: { inserted, updated, skipped, ids }, foldDue };
    }).then(async ({ result, foldDue }) => {
      this.#afterBulkInsert(tenantId, result.inserted);
      if (foldDue) await this.#foldKeys(tenantId);
      return result;
    });
  }

  /**
   * SQLite: folds the recent lookup-key tables that writes have grown into
   * their key tables, in short transactions of their own, once the writes
   * that grew them are committed. A failure is logged and left for the next
   * write: look-ups read both tables, so nothing depends on it.
   */
  async #foldKeys(tenantId: string): Promise<void> {
    try {
      await this.#recordKeys.foldDue(this.#storage.tenant(tenantId));
    } catch (err) {
      this.#log?.warn({ err, tenantId }, 'could not fold the recent lookup keys; the next write tries again');
    }
  }

  /** Rows inserted per tenant since its records' statistics were last refreshed, and refreshes in flight. */
  readonly #insertedSinceStats = new Map<string, { rows: number; atLastRefresh: number; running: boolean }>();

  /**
   * PostgreSQL plans the keyset pages of exports and searches from table
   * statistics; right after a bulk import they describe an empty table, and
   * the planner sorts the whole list for every page (seen: 0.2 s per
   * 1,000-record page at 200,000 records). After enough new rows (10,000, or
   * a fifth of the rows at the last refresh) the statistics are refreshed in
   * the background (a no-op where the storage has no statistics to refresh);
   * autovacuum does the same eventually, when it is on.
   */
  #afterBulkInsert(tenantId: string, inserted: number): void {
    if (inserted === 0) return;
    const s = this.#insertedSinceStats.get(tenantId) ?? { rows: 0, atLastRefresh: 0, running: false };
    this.#insertedSinceStats.set(tenantId, s);
    s.rows += inserted;
    if (s.running || s.rows < Math.max(STATS_REFRESH_ROWS, s.atLastRefresh / 5)) return;
    s.running = true;
    const rows = s.rows;
    this.#storage
      .refreshStatistics(tenantId, ['records', 'record_index'])
      .then(
        () => {
          s.atLastRefresh += rows;
          s.rows -= rows;
        },
        (err: unknown) => this.#log?.warn({ err, tenantId }, 'could not refresh table statistics'),
      )
      .finally(() => {
        s.running = false;
      });
  }

  /**
   * Validates a batch (throwing the line and reason of every bad record) and
   * groups the lines that name the same record: later lines apply on top of
   * earlier ones. An oHash match key becomes the record's preset oHash.
   */
  #group(list: LoadedList, keys: ObjectKeys, records: unknown[], first: number, matchKey: MatchKey): Group[] {
    const errors: LineError[] = [];
    const checked = records.map((r, i) => this.#check(list, r, first + i, errors, { matchKey }));
    if (errors.length > 0) throw batchError(errors);
    const groups = new Map<string, Group>();
    for (let i = 0; i < checked.length; i++) {
      const v = checked[i]!;
      const key = matchValue(keys, matchKey, v.get(matchKey));
      const earlier = groups.get(key);
      if (earlier) {
        for (const [name, value] of v) earlier.values.set(name, value);
        earlier.lines.push(first + i);
      } else {
        groups.set(key, { key, lines: [first + i], values: v, match: v.get(matchKey) });
      }
    }
    for (const g of groups.values()) {
      if (matchKey === SHA256 || matchKey === MD5) {
        g.presetHashes = matchKey === SHA256 ? { sha256: String(g.values.get(SHA256)) } : { md5: String(g.values.get(MD5)) };
        g.values.delete(matchKey);
      }
    }
    return [...groups.values()];
  }

  async create(auth: AuthContext, tenantId: string, listId: string, input: unknown): Promise<RecordView> {
    const { view, foldDue } = await this.#storage.tenant(tenantId).transaction(async (db) => {
      await this.#lists.lockForWrite(db, listId);
      const list = await this.#lists.load(db, auth, listId, 'lists.write');
      const keys = await this.#keysOf(db, tenantId, listId);
      const errors: LineError[] = [];
      const values = this.#check(list, input, 1, errors, {});
      if (!values) throw batchError(errors);
      const { ids: [id], foldDue } = await this.#write(db, tenantId, list, keys, [{ line: 1, target: null, values, mode: 'replace' }]);
      const row = await db.selectFrom('records').selectAll().where('list_key', '=', list.row.key).where('id', '=', id!).executeTakeFirstOrThrow();
      await this.#audit.append(db, tenantId, { type: 'records.create', outcome: 'success', actor: auth, resource: { type: 'record', id: id!, name: list.row.name } });
      return { view: this.#render(auth, list, row, decodeRecord(keys, list.fields, row)), foldDue };
    });
    if (foldDue) await this.#foldKeys(tenantId);
    return view;
  }

  /** One record by its key, compiled once per storage (the SQL is the same for every tenant): building it cost a single-record read ~15 µs. */
  #rowQuery: CompiledQuery<Row> | undefined;

  async #row(db: Kysely<TenantDB>, listKey: number, recordId: string): Promise<Row> {
    if (!isId(recordId)) throw new CustosError('not_found');
    this.#rowQuery ??= db.selectFrom('records').selectAll().where('list_key', '=', 0).where('id', '=', '').compile();
    const row = (await db.executeQuery<Row>({ ...this.#rowQuery, parameters: [listKey, recordId] })).rows[0];
    if (!row) throw new CustosError('not_found');
    return row;
  }

  /**
   * One record as a read shows it: only the columns a view needs (not the blind indexes and lookup keys), the
   * sealed values as hex text (a blob costs better-sqlite3 a backing store of its own). Half the statement's
   * time of `select *` on SQLite (14 → 8 µs a row).
   */
  #viewRowQuery: CompiledQuery<ViewRowHex> | undefined;

  async #viewRow(db: Kysely<TenantDB>, listKey: number, recordId: string): Promise<ViewRow> {
    if (!isId(recordId)) throw new CustosError('not_found');
    this.#viewRowQuery ??= db
      .selectFrom('records')
      .select(['id', 'plain', 'email_sha256', 'email_md5', 'created_at', 'updated_at', sql.raw<string | null>(this.#adapter.blobHex('protected')).as('protected_hex')])
      .where('list_key', '=', 0)
      .where('id', '=', '')
      .compile();
    const query: CompiledQuery<ViewRowHex> = { ...this.#viewRowQuery, parameters: [listKey, recordId] };
    const r = (await db.executeQuery(query)).rows[0];
    if (!r) throw new CustosError('not_found');
    const hex = r.protected_hex;
    return { id: r.id, plain: r.plain, protected: hex === null ? null : Buffer.from(hex, 'hex'), email_sha256: r.email_sha256, email_md5: r.email_md5, created_at: r.created_at, updated_at: r.updated_at };
  }

  async get(auth: AuthContext, tenantId: string, listId: string, recordId: string): Promise<RecordView> {
    const { view, list } = await this.#storage.tenant(tenantId).read(async (db) => {
      const l = await this.#lists.load(db, auth, listId, 'lists.read', { cached: true });
      const row = await this.#viewRow(db, l.row.key, recordId);
      const [values] = await this.#decodeAll(db, tenantId, l, [row]);
      return { view: this.#render(auth, l, row, values!), list: l };
    });
    await this.#recordPiiRead(auth, tenantId, list, 1);
    return view;
  }

  /**
   * Changes one record and answers it as stored, every field included: the
   * stored personal data the request did not name leaves in clear for a
   * principal with `data.pii.view`, so the answer is recorded as a read of it
   * (`data.pii.read`), as {@link RecordService.get} is.
   */
  async update(auth: AuthContext, tenantId: string, listId: string, recordId: string, input: unknown, mode: 'merge' | 'replace' = 'merge'): Promise<RecordView> {
    const { view, foldDue, list } = await this.#storage.tenant(tenantId).transaction(async (db) => {
      await this.#lists.lockForWrite(db, listId);
      const list = await this.#lists.load(db, auth, listId, 'lists.write');
      const target = await this.#row(db, list.row.key, recordId);
      const keys = await this.#keysOf(db, tenantId, listId);
      const errors: LineError[] = [];
      const values = this.#check(list, input, 1, errors, {});
      if (!values) throw batchError(errors);
      const { foldDue } = await this.#write(db, tenantId, list, keys, [{ line: 1, target, values, mode }]);
      const row = await this.#row(db, list.row.key, recordId);
      await this.#audit.append(db, tenantId, { type: 'records.update', outcome: 'success', actor: auth, resource: { type: 'record', id: recordId, name: list.row.name }, details: { fields: [...values.keys()] } });
      return { view: this.#render(auth, list, row, decodeRecord(keys, list.fields, row)), foldDue, list };
    });
    if (foldDue) await this.#foldKeys(tenantId);
    await this.#recordPiiRead(auth, tenantId, list, 1);
    return view;
  }

  async delete(auth: AuthContext, tenantId: string, listId: string, recordIds: string[]): Promise<{ deleted: number }> {
    if (!Array.isArray(recordIds) || recordIds.length === 0 || recordIds.length > MAX_BATCH) throw new CustosError('validation_failed', `1 to ${MAX_BATCH} record ids`);
    return this.#storage.tenant(tenantId).transaction(async (db) => {
      const list = await this.#lists.load(db, auth, listId, 'lists.write');
      const ids = recordIds.filter((id) => typeof id === 'string' && isId(id));
      let deleted = 0;
      for (const part of chunks(ids, CHUNK)) {
        if (this.#recordKeys.tables) {
          const doomed = await db.selectFrom('records').select(['seq', 'k_sha256', 'k_md5', 'k_mobile']).where('list_key', '=', list.row.key).where('id', 'in', part).execute();
          await this.#recordKeys.remove(db, list.row.key, doomed.map(keyedRecord));
        }
        deleted += Number((await db.deleteFrom('records').where('list_key', '=', list.row.key).where('id', 'in', part).executeTakeFirst()).numDeletedRows);
        await db.deleteFrom('record_index').where('list_key', '=', list.row.key).where('record_id', 'in', part).execute();
      }
      if (recordIds.length === 1 && deleted === 0) throw new CustosError('not_found');
      await this.#audit.append(db, tenantId, { type: 'records.delete', outcome: 'success', actor: auth, resource: { type: 'list', id: listId, name: list.row.name }, details: { requested: recordIds.length, deleted } });
      return { deleted };
    });
  }

  /** Adds one filter's condition to a query over `records`. */
  #where(q: RecordsQuery, db: Kysely<TenantDB>, list: LoadedList, keys: ObjectKeys, filter: Filter): RecordsQuery {
    const byKey = (column: KeyColumn, k: number) => this.#recordKeys.whereKey(q, db, list.row.key, column, [k]);
    const field = list.fields.find((f) => f.name === filter.field);
    if (!field) throw new CustosError('validation_failed', `unknown field ${filter.field.slice(0, 64)}`);
    const value = field.computed ? String(filter.value).toLowerCase() : checkValue(field, filter.value);
    if (field.name === CUSTOMER_ID) return q.where('records.customer_id', '=', String(value));
    if (field.name === EMAIL) {
      return byKey('k_sha256', lookupKey(ohashes(String(value)).sha256)).where('records.email_bi', '=', keys.blindIndex(EMAIL, normaliseForMatch(String(value))));
    }
    if (field.name === MOBILE) {
      const bi = keys.blindIndex(MOBILE, String(value).replace(/\D/g, ''));
      return byKey('k_mobile', lookupKey(bi)).where('records.mobile_bi', '=', bi);
    }
    if (field.name === SHA256) return byKey('k_sha256', lookupKey(String(value))).where('records.email_sha256', '=', String(value));
    if (field.name === MD5) return byKey('k_md5', lookupKey(String(value))).where('records.email_md5', '=', String(value));
    if (field.indexed) {
      const iv = indexValue(keys, field, value);
      return q.where((eb) =>
        eb.exists(
          eb
            .selectFrom('record_index')
            .select('record_index.record_id')
            .whereRef('record_index.list_key', '=', 'records.list_key')
            .whereRef('record_index.record_id', '=', 'records.id')
            .where('record_index.field', '=', field.name)
            .where('record_index.value', '=', iv),
        ),
      );
    }
    if (field.classification !== 'plain') throw new CustosError('validation_failed', `${field.name} is encrypted and not indexed: equality search needs "indexed": true`);
    if (field.type === 'json') throw new CustosError('validation_failed', `${field.name}: JSON fields cannot be searched`);
    return q.where(sql.raw<unknown>(this.#adapter.jsonMemberText('records.plain', field.name)), '=', this.#adapter.jsonMemberParam(value as string | number | boolean));
  }

  /** Records of a list, oldest first, with equality filters and a cursor (the last id of the previous page). */
  async search(auth: AuthContext, tenantId: string, listId: string, opts: { filters?: Filter[]; cursor?: string; limit?: number }): Promise<{ records: RecordView[]; nextCursor?: string }> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const { result, list } = await this.#storage.tenant(tenantId).read(async (db) => {
      const list = await this.#lists.load(db, auth, listId, 'lists.read', { cached: true });
      const keys = await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, listId);
      let q = db.selectFrom('records').selectAll().where('records.list_key', '=', list.row.key).orderBy('records.id').limit(limit + 1);
      if (opts.cursor) {
        if (!isId(opts.cursor)) throw new CustosError('validation_failed', 'bad cursor');
        q = q.where('records.id', '>', opts.cursor);
      }
      for (const f of opts.filters ?? []) q = this.#where(q, db, list, keys, f);
      const rows = await q.execute();
      const page = rows.slice(0, limit);
      const values = await this.#decodeAll(db, tenantId, list, page);
      const records = page.map((r, i) => this.#render(auth, list, r, values[i]!));
      return { result: rows.length > limit ? { records, nextCursor: page.at(-1)!.id } : { records }, list };
    });
    await this.#recordPiiRead(auth, tenantId, list, result.records.length);
    return result;
  }

  /**
   * Streams a list as CSV or JSON Lines in constant memory (pages of 1,000).
   * `limit`: refuse (422 `export_limit_exceeded`) when the list holds more
   * records — console exports pass 5,000; the API passes none. The export is
   * recorded with its record count and whether personal data was in clear.
   * A list whose data cannot be read (the tenant's key disabled or destroyed)
   * is refused here, before the export is recorded as a success and before
   * the caller has a line to send: a refusal found while the lines stream
   * would come after the answer's status and first bytes.
   */
  async export(auth: AuthContext, tenantId: string, listId: string, format: 'csv' | 'jsonl', opts: { limit?: number; via: string }): Promise<{ count: number; lines: AsyncIterable<string>; fields: string[] }> {
    const { list, count } = await this.#storage.tenant(tenantId).transaction(async (db) => {
      const l = await this.#lists.load(db, auth, listId, 'lists.read');
      authorize(auth, 'data.export', { orgId: l.row.org_id });
      const resource = { type: 'list', id: listId, name: l.row.name };
      try {
        await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, listId);
      } catch (err) {
        const code = (err as CustosError).code;
        if (code !== 'key_disabled' && code !== 'key_destroyed') throw err;
        // Recorded as the export limit's refusal is: the attempt shows in the activity stream, with why it was refused.
        await this.#audit.append(db, tenantId, { type: 'data.export', outcome: 'denied', code, actor: auth, resource, details: { format, via: opts.via } });
        return { list: l, count: 0, refused: code };
      }
      const n = Number((await db.selectFrom('records').select((eb) => eb.fn.countAll<number>().as('n')).where('list_key', '=', l.row.key).executeTakeFirstOrThrow()).n);
      if (opts.limit !== undefined && n > opts.limit) {
        await this.#audit.append(db, tenantId, { type: 'data.export', outcome: 'denied', code: 'export_limit_exceeded', actor: auth, resource, details: { records: n, limit: opts.limit, via: opts.via } });
        return { list: l, count: n, refused: 'export_limit_exceeded' as const };
      }
      await this.#audit.append(db, tenantId, {
        type: 'data.export',
        outcome: 'success',
        actor: auth,
        resource,
        details: { records: n, format, piiClear: this.#hasPii(l) && can(auth, 'data.pii.view'), via: opts.via },
      });
      return { list: l, count: n, refused: null };
    }).then((r) => {
      // Thrown once the refusal's event is committed (thrown inside, it would roll back with the transaction).
      if (r.refused === 'key_disabled' || r.refused === 'key_destroyed') throw new CustosError(r.refused);
      if (r.refused === 'export_limit_exceeded') {
        throw new CustosError('export_limit_exceeded', `console exports are limited to ${opts.limit} records and this list holds ${r.count}; use the REST API with a bearer token (GET /api/v1/lists/${listId}/export) or a bulk-transfer connection`, {
          extensions: { limit: opts.limit, records: r.count },
        });
      }
      return r;
    });
    const fields = list.fields.map((f) => f.name);
    return { count, lines: this.#lines(auth, tenantId, list, format, fields), fields };
  }

  /**
   * Export lines, a page of 1,000 records per read. Pages are
   * rendered (decrypted, redacted, formatted) by the data workers'
   * worker threads while this thread reads the next pages and writes the
   * finished ones: up to one page per thread plus one in flight, so memory
   * stays constant and lines keep their order. The CSV header leaves with
   * the first page (or alone, for an empty list): a first page that cannot
   * be read (the key disabled since `export` checked it) then fails the
   * answer before any byte of it is sent.
   */
  async *#lines(auth: AuthContext, tenantId: string, list: LoadedList, format: 'csv' | 'jsonl', fields: string[]): AsyncIterable<string> {
    let header = format === 'csv' ? csvHeader(fields) : '';
    const shape: ExportShape = { defs: fields.map((name) => list.fields.find((f) => f.name === name)!), clear: can(auth, 'data.pii.view'), format };
    const store = this.#storage.tenant(tenantId);
    const protectedHex = this.#adapter.blobHex('protected');
    const depth = this.#workers.threads + 1;
    const queue: Array<Promise<string>> = [];
    let cursor = '';
    let done = false;
    for (;;) {
      while (!done && queue.length < depth) {
        // Only the columns a line needs (no blind indexes or lookup keys); the sealed values as hex text, which
        // costs better-sqlite3 a third of a Buffer per row and crosses to a worker thread as cheaply as a string.
        const read = await store.read(async (db) => {
          const rows = await db
            .selectFrom('records')
            .select(['id', 'plain', 'email_sha256', 'email_md5', sql.raw<string | null>(protectedHex).as('protected_hex')])
            .where('list_key', '=', list.row.key)
            .where('id', '>', cursor)
            .orderBy('id')
            .limit(PAGE)
            .execute();
          if (rows.length === 0) return null;
          const page: ExportPage = { ids: [], plain: [], protected: [], sha256: [], md5: [] };
          for (const r of rows) {
            page.ids.push(r.id);
            page.plain.push(r.plain);
            page.protected.push(r.protected_hex);
            page.sha256.push(r.email_sha256);
            page.md5.push(r.email_md5);
          }
          return { page, keys: await this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, list.row.id) };
        });
        if (read === null) {
          done = true;
          break;
        }
        cursor = read.page.ids.at(-1)!;
        const rendered = this.#renderPage(tenantId, list, shape, read.keys, read.page);
        // Observed at once (an abandoned export must not leave an unhandled rejection); awaited in order below.
        rendered.catch(() => undefined);
        queue.push(rendered);
      }
      const next = queue.shift();
      if (next === undefined) {
        if (header !== '') yield header;
        return;
      }
      const text = await next;
      yield header + text;
      header = '';
    }
  }

  /** Renders a page with cached keys; on a generation the cache does not know yet, once more with fresh keys. */
  async #renderPage(tenantId: string, list: LoadedList, shape: ExportShape, keys: ObjectKeys, page: ExportPage): Promise<string> {
    try {
      return await this.#workers.render(keys, shape, page);
    } catch (err) {
      if ((err as CustosError).code !== 'decryption_failed') throw err;
      const fresh = await this.#storage.tenant(tenantId).read((db) => this.#keys.objectKeysForRead(db, tenantId, LIST_OBJECT, list.row.id, { fresh: true }));
      return this.#workers.render(fresh, shape, page);
    }
  }

  /** The re-encryption job's view of records: every protected value, list by list. */
  static source(adapter: StorageAdapter): EncryptedSource {
    const resealed = recordUpdate(adapter, ['protected']);
    return {
      name: 'records',
      async count(db) {
        return Number((await db.selectFrom('records').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n);
      },
      async reencryptBatch(db, keysFor, cursor, limit) {
        const [keyAfter, idAfter] = cursor === null ? [0, ''] : [Number(cursor.split('/')[0]), cursor.split('/')[1]!];
        const rows = await db
          .selectFrom('records')
          .innerJoin('lists', 'lists.key', 'records.list_key')
          .select(['records.list_key', 'records.id', 'records.protected', 'lists.id as list_id'])
          .where((eb) => eb.or([eb('records.list_key', '>', keyAfter), eb.and([eb('records.list_key', '=', keyAfter), eb('records.id', '>', idAfter)])]))
          .orderBy('records.list_key')
          .orderBy('records.id')
          .limit(limit)
          .execute();
        if (rows.length === 0) return { visited: 0, changed: 0, cursor: null };
        // Sealed again under the active generation, then written list by list (on PostgreSQL hundreds of records per statement).
        const byList = new Map<number, unknown[][]>();
        for (const r of rows) {
          if (r.protected === null) continue;
          const keys = await keysFor(LIST_OBJECT, r.list_id);
          if (ciphertextGeneration(r.protected) === keys.active.generation) continue;
          const sealed = sealProtected(keys, r.id, openProtected(keys, r.id, r.protected));
          const list = byList.get(r.list_key) ?? [];
          list.push([r.id, sealed]);
          byList.set(r.list_key, list);
        }
        let changed = 0;
        for (const [listKey, sealed] of byList) changed += await resealed.run(db, listKey, sealed);
        const last = rows.at(-1)!;
        return { visited: rows.length, changed, cursor: rows.length < limit ? null : `${last.list_key}/${last.id}` };
      },
  };
  }
}

/** A value that names nothing: absent, null, or text with nothing but white space. */
function isBlank(value: unknown): boolean {
  return value === null || value === undefined || (typeof value === 'string' && value.trim() === '');
}

function checkHash(raw: unknown, hexLength: number): string {
  if (typeof raw !== 'string' || !new RegExp(`^[0-9a-fA-F]{${hexLength}}$`).test(raw)) throw new CustosError('validation_failed', `x: must be ${hexLength} hex characters`);
  return raw.toLowerCase();
}

/** The comparable form of a match-key value (base64 of the blind index for emails). */
function matchValue(keys: ObjectKeys, matchKey: MatchKey, value: unknown): string {
  if (matchKey === EMAIL) return keys.blindIndex(EMAIL, normaliseForMatch(String(value))).toString('base64');
  return String(value);
}

export function batchError(errors: LineError[]): CustosError {
  const shown = errors.slice(0, 1000);
  return new CustosError('validation_failed', `${errors.length} record(s) rejected; nothing was changed`, { extensions: { errors: shown, rejected: errors.length } });
}
