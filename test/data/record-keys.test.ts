import type { FastifyInstance } from 'fastify';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ohashes } from '../../src/data/ohash.js';
import { RecordKeys, type KeyColumn } from '../../src/data/record-keys.js';
import { RecordService } from '../../src/data/record-service.js';
import { parseCredential } from '../../src/iam/credentials.js';
import { RECENT_KEY_TABLES, RECORD_KEY_TABLES } from '../../src/storage/migrations/tenant/0010-record-keys.js';
import { makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

const email = (i: number) => `person${i}@keys.example`;
const mobile = (i: number) => `+1 555 ${String(i).padStart(7, '0')}`;

/**
 * The lookup keys of records (oHashes and the mobile blind index) through
 * every write path: on SQLite they live in tables of their own, kept in step
 * with `records` (migration 0010), new entries in recent tables folded into
 * them from time to time (migration 0011); on PostgreSQL in indexes on
 * `records`.
 * Both engines must find exactly the records whose current values match.
 */
describeEachStorage('record lookup keys', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let t: { tenantId: string; name: string; admin: SignedIn };
  let director: { headers: Record<string, string>; token: string };
  let listId: string;
  let listKey: number;
  const ids = new Map<number, string>();

  const api = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers: director.headers, ...(payload === undefined ? {} : { payload: payload as object }) });
  const found = async (field: string, value: string): Promise<string[]> => {
    const res = await api('GET', `/lists/${listId}/records?filter=${encodeURIComponent(`${field}:${value}`)}`);
    expect(res.statusCode, res.body).toBe(200);
    return res.json<{ records: { id: string }[] }>().records.map((r) => r.id);
  };
  /** Finds record i by each of its keys, and nothing by the keys it no longer has. */
  const findsOnly = async (i: number, now: { email: string; mobile: string }, gone: { email?: string; mobile?: string } = {}) => {
    const id = ids.get(i)!;
    expect(await found('EMAIL_ADDRESS_', now.email)).toEqual([id]);
    expect(await found('EMAIL_SHA256_HASH_', ohashes(now.email).sha256)).toEqual([id]);
    expect(await found('EMAIL_MD5_HASH_', ohashes(now.email).md5)).toEqual([id]);
    expect(await found('MOBILE_NUMBER_', now.mobile)).toEqual([id]);
    if (gone.email) {
      expect(await found('EMAIL_ADDRESS_', gone.email)).toEqual([]);
      expect(await found('EMAIL_SHA256_HASH_', ohashes(gone.email).sha256)).toEqual([]);
      expect(await found('EMAIL_MD5_HASH_', ohashes(gone.email).md5)).toEqual([]);
    }
    if (gone.mobile) expect(await found('MOBILE_NUMBER_', gone.mobile)).toEqual([]);
  };

  const columns = Object.keys(RECORD_KEY_TABLES) as KeyColumn[];
  /** SQLite: the entries of the tenant's recent table of `column`, of this list. */
  const recentCount = async (column: KeyColumn) =>
    rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom(RECENT_KEY_TABLES[column]).select('k').where('list_key', '=', listKey).execute()).length);
  /** SQLite: folds every recent table into its key table, as an import does when they have grown enough. */
  const foldAll = async () => {
    const keys = new RecordKeys(rt.storage.adapter);
    await rt.storage.tenant(t.tenantId).transaction(async (db) => {
      for (const column of columns) await keys.fold(db, column);
    });
  };

  /** SQLite: each key table and its recent table hold exactly the (key, number) pairs of the list's records, each once, and the numbers are unique. */
  const expectInStep = async () => {
    if (kind !== 'sqlite') return;
    await rt.storage.tenant(t.tenantId).read(async (db) => {
      const records = await db.selectFrom('records').select(['seq', 'k_sha256', 'k_md5', 'k_mobile']).where('list_key', '=', listKey).execute();
      const seqs = records.map((r) => r.seq);
      expect(seqs.every((s) => typeof s === 'number')).toBe(true);
      expect(new Set(seqs).size).toBe(seqs.length);
      for (const column of columns) {
        const expected = records.filter((r) => r[column] !== null).map((r) => `${r[column]}:${r.seq}`).sort();
        const entries = async (table: string) => (await db.selectFrom(table as (typeof RECORD_KEY_TABLES)[KeyColumn]).select(['k', 'seq']).where('list_key', '=', listKey).execute()).map((e) => `${e.k}:${e.seq}`);
        const stored = [...(await entries(RECORD_KEY_TABLES[column])), ...(await entries(RECENT_KEY_TABLES[column]))].sort();
        expect(stored, RECORD_KEY_TABLES[column]).toEqual(expected);
      }
    });
  };

  beforeAll(async () => {
    rt = await makeRuntime(kind);
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'keysco');
    director = await apiUser(app, rt, t, t.admin.cookie, 'loader', ['data-director']);
    const res = await api('POST', '/lists', { name: 'Keyed', fields: [{ name: 'CITY', type: 'string', classification: 'plain' }] });
    expect(res.statusCode, res.body).toBe(201);
    listId = res.json().id;
    listKey = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('lists').select('key').where('id', '=', listId).executeTakeFirstOrThrow()).key);
    const records = Array.from({ length: 40 }, (_, i) => ({ EMAIL_ADDRESS_: email(i), MOBILE_NUMBER_: mobile(i), CUSTOMER_ID_: `K-${i}`, CITY: 'Lyon' }));
    const merged = await api('POST', `/lists/${listId}/records/merge`, { matchKey: 'CUSTOMER_ID_', records });
    expect(merged.statusCode, merged.body).toBe(200);
    for (let i = 0; i < 40; i++) ids.set(i, (await found('CUSTOMER_ID_', `K-${i}`))[0]!);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  it('finds new records by every key, and the key tables hold exactly their keys', async () => {
    await findsOnly(0, { email: email(0), mobile: mobile(0) });
    await findsOnly(39, { email: email(39), mobile: mobile(39) });
    await expectInStep();
  });

  it.runIf(kind === 'sqlite')('new entries wait in the recent tables; after a fold they are in the key tables and every key finds the same records', async () => {
    for (const column of columns) expect(await recentCount(column), column).toBe(40);
    await foldAll();
    for (const column of columns) expect(await recentCount(column), column).toBe(0);
    await findsOnly(0, { email: email(0), mobile: mobile(0) });
    await findsOnly(39, { email: email(39), mobile: mobile(39) });
    await expectInStep();
    const state = await rt.storage.tenant(t.tenantId).read(async (db) => db.selectFrom('record_keys_state').selectAll().orderBy('tbl').execute());
    expect(state).toEqual(columns.map((c) => ({ tbl: RECORD_KEY_TABLES[c], folded: 40, added: 0 })).sort((a, b) => (a.tbl < b.tbl ? -1 : 1)));
  });

  it('an update that changes the email and the mobile number moves the keys: old values find nothing', async () => {
    const res = await api('PATCH', `/lists/${listId}/records/${ids.get(1)}`, { fields: { EMAIL_ADDRESS_: 'moved@keys.example', MOBILE_NUMBER_: '+44 20 7946 0001' } });
    expect(res.statusCode, res.body).toBe(200);
    await findsOnly(1, { email: 'moved@keys.example', mobile: '+44 20 7946 0001' }, { email: email(1), mobile: mobile(1) });
    await expectInStep();
  });

  it('merges that change keys, by customer id and by email, move them too; unchanged records keep theirs', async () => {
    const byCustomer = await api('POST', `/lists/${listId}/records/merge`, { matchKey: 'CUSTOMER_ID_', records: [{ CUSTOMER_ID_: 'K-2', EMAIL_ADDRESS_: 'two@keys.example' }] });
    expect(byCustomer.statusCode, byCustomer.body).toBe(200);
    await findsOnly(2, { email: 'two@keys.example', mobile: mobile(2) }, { email: email(2) });
    const byEmail = await api('POST', `/lists/${listId}/records/merge`, { matchKey: 'EMAIL_ADDRESS_', records: [{ EMAIL_ADDRESS_: email(3), MOBILE_NUMBER_: '+1 555 9999999' }] });
    expect(byEmail.statusCode, byEmail.body).toBe(200);
    await findsOnly(3, { email: email(3), mobile: '+1 555 9999999' }, { mobile: mobile(3) });
    // SQLite: keys moved after the fold are in the recent tables; a second fold meets them there.
    if (kind === 'sqlite') {
      expect(await recentCount('k_sha256')).toBe(2);
      await foldAll();
      await findsOnly(2, { email: 'two@keys.example', mobile: mobile(2) }, { email: email(2) });
      await findsOnly(1, { email: 'moved@keys.example', mobile: '+44 20 7946 0001' }, { email: email(1), mobile: mobile(1) });
    }
    // An email another record now uses is refused, through the key of its oHash.
    const taken = await api('POST', `/lists/${listId}/records/merge`, { matchKey: 'CUSTOMER_ID_', records: [{ CUSTOMER_ID_: 'K-4', EMAIL_ADDRESS_: 'two@keys.example' }] });
    expect(taken.statusCode, taken.body).toBe(400);
    expect(taken.body).toMatch(/already used by another record/);
    await findsOnly(4, { email: email(4), mobile: mobile(4) });
    await expectInStep();
  });

  it('deleted records leave no keys behind; records added afterwards get numbers of their own', async () => {
    const doomed = [5, 6, 7].map((i) => ids.get(i)!);
    const res = await api('POST', `/lists/${listId}/records/delete`, { ids: doomed });
    expect(res.statusCode, res.body).toBe(200);
    expect(await found('EMAIL_ADDRESS_', email(5))).toEqual([]);
    expect(await found('MOBILE_NUMBER_', mobile(6))).toEqual([]);
    expect(await found('EMAIL_MD5_HASH_', ohashes(email(7)).md5)).toEqual([]);
    await expectInStep();
    // The highest-numbered record goes too: its number may be given again, never while it is in use.
    await api('DELETE', `/lists/${listId}/records/${ids.get(39)}`);
    const added = await api('POST', `/lists/${listId}/records/merge`, { matchKey: 'EMAIL_ADDRESS_', records: [{ EMAIL_ADDRESS_: email(100), MOBILE_NUMBER_: mobile(100) }, { EMAIL_ADDRESS_: email(5), MOBILE_NUMBER_: mobile(5) }] });
    expect(added.statusCode, added.body).toBe(200);
    expect(await found('EMAIL_ADDRESS_', email(100))).toHaveLength(1);
    expect(await found('MOBILE_NUMBER_', mobile(5))).toHaveLength(1);
    await expectInStep();
  });

  it('deleting the list removes its keys (SQLite: the key tables hold nothing of it)', async () => {
    const res = await api('DELETE', `/lists/${listId}`);
    expect(res.statusCode, res.body).toBe(204);
    if (kind !== 'sqlite') return;
    await rt.storage.tenant(t.tenantId).read(async (db) => {
      for (const table of [...Object.values(RECORD_KEY_TABLES), ...Object.values(RECENT_KEY_TABLES)]) expect(await db.selectFrom(table).select('k').where('list_key', '=', listKey).execute(), table).toEqual([]);
    });
  });

  it.runIf(kind === 'sqlite')('a recent table is folded, a step per transaction, once it has grown to its share of the key table; removals reach entries in either', async () => {
    const keys = new RecordKeys(rt.storage.adapter, { min: 10, ratio: 2, step: 4 });
    const other = 1_000_000; // a list key no list has
    const entry = (seq: number) => ({ seq, k_sha256: 1000 + seq, k_md5: null, k_mobile: null });
    const store = rt.storage.tenant(t.tenantId);
    const sizes = () =>
      store.read(async (db) => ({
        main: (await db.selectFrom('record_keys_sha256').select('seq').where('list_key', '=', other).execute()).length,
        recent: (await db.selectFrom('record_keys_sha256_recent').select('seq').where('list_key', '=', other).execute()).length,
        md5: (await db.selectFrom('record_keys_md5_recent').select('seq').where('list_key', '=', other).execute()).length,
      }));
    const state = () => store.read(async (db) => db.selectFrom('record_keys_state').selectAll().where('tbl', '=', 'record_keys_sha256').executeTakeFirstOrThrow());
    await store.transaction(async (db) => keys.removeList(db, other));
    // Entries of other lists may wait in the recent table too: fold them first, so that this test counts its own.
    await store.transaction(async (db) => keys.fold(db, 'k_sha256'));
    const before = await state();
    const add = (from: number, n: number) => store.transaction(async (db) => keys.add(db, other, Array.from({ length: n }, (_, i) => entry(from + i))));
    // The threshold is max(10, folded / 2) entries added since the last fold.
    const threshold = Math.max(10, before.folded / 2);
    await add(1, threshold - 1);
    await keys.foldDue(store);
    expect(await sizes()).toMatchObject({ main: 0, recent: threshold - 1, md5: 0 });
    expect((await state()).added).toBe(threshold - 1);
    // The next entry makes it due: the fold moves everything, four entries per transaction, in key order.
    await add(threshold, 1);
    const commits: number[] = [];
    const counting = {
      tenantId: store.tenantId,
      read: store.read.bind(store),
      transaction: async <T>(fn: Parameters<typeof store.transaction<T>>[0]) => {
        const r = await store.transaction(fn);
        commits.push((await sizes()).main);
        return r;
      },
    };
    await keys.foldDue(counting);
    expect(await sizes()).toMatchObject({ main: threshold, recent: 0 });
    expect(commits).toEqual([...Array.from({ length: Math.ceil(threshold / 4) - 1 }, (_, i) => 4 * (i + 1)), threshold]);
    // The fold recorded the key table's size (every list's entries) and started counting again.
    const entries = await store.read(async (db) => (await db.selectFrom('record_keys_sha256').select('seq').execute()).length);
    expect(await state()).toMatchObject({ folded: entries, added: 0 });
    await add(threshold + 1, 3);
    expect(await sizes()).toMatchObject({ main: threshold, recent: 3 });
    // One entry in the key table and one in the recent table are removed by the same call.
    await store.transaction(async (db) => keys.remove(db, other, [entry(1), entry(threshold + 2)]));
    expect(await sizes()).toMatchObject({ main: threshold - 1, recent: 2 });
    const found = await store.read(async (db) => keys.whereKey(db.selectFrom('records').select('id'), db, other, 'k_sha256', [1001, 1000 + threshold + 1]).compile());
    expect(found.sql).toMatch(/union all/);
    await store.transaction(async (db) => keys.removeList(db, other));
    expect(await sizes()).toEqual({ main: 0, recent: 0, md5: 0 });
  });

  it.runIf(kind === 'sqlite')('merges and creates fold the recent keys once they are due, after their own commit; the records are found by every key', async () => {
    const svc = new RecordService({ storage: rt.storage, clock: rt.clock, keys: rt.keys, audit: rt.audit, lists: rt.lists, keyFold: { min: 30, ratio: 1_000_000, step: 7 } });
    const auth = await rt.sessions.authenticate(t.tenantId, parseCredential(director.token)!.secret, 'token', { ip: '127.0.0.1' });
    const created = await api('POST', '/lists', { name: 'Folding', fields: [] });
    listId = created.json().id as string;
    listKey = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('lists').select('key').where('id', '=', listId).executeTakeFirstOrThrow()).key);
    // Whatever other lists left in the recent tables is folded first, so that this list's entries are counted alone.
    await foldAll();
    const merged = await svc.merge(auth, t.tenantId, listId, Array.from({ length: 25 }, (_, i) => ({ EMAIL_ADDRESS_: email(300 + i), MOBILE_NUMBER_: mobile(300 + i) })), { matchKey: 'EMAIL_ADDRESS_' });
    expect(merged.inserted).toBe(25);
    for (const column of columns) expect(await recentCount(column), column).toBe(25);
    // Five more make 30 added: due, and folded before the merge answers.
    await svc.merge(auth, t.tenantId, listId, Array.from({ length: 4 }, (_, i) => ({ EMAIL_ADDRESS_: email(325 + i), MOBILE_NUMBER_: mobile(325 + i) })), { matchKey: 'EMAIL_ADDRESS_' });
    for (const column of columns) expect(await recentCount(column), column).toBe(29);
    const one = await svc.create(auth, t.tenantId, listId, { EMAIL_ADDRESS_: email(329), MOBILE_NUMBER_: mobile(329) });
    for (const column of columns) expect(await recentCount(column), column).toBe(0);
    await expectInStep();
    expect(await found('EMAIL_ADDRESS_', email(329))).toEqual([one.id]);
    expect(await found('MOBILE_NUMBER_', mobile(300))).toEqual([merged.ids[0]]);
    expect(await found('EMAIL_MD5_HASH_', ohashes(email(310)).md5)).toEqual([merged.ids[10]]);
    expect((await api('DELETE', `/lists/${listId}`)).statusCode).toBe(204);
  });

  it.runIf(kind === 'sqlite')('migration 0010 numbers the records of a store that had them before, fills the key tables and drops the old indexes', async () => {
    const res = await api('POST', '/lists', { name: 'Older', fields: [] });
    const older = res.json().id as string;
    const merged = await api('POST', `/lists/${older}/records/merge`, { matchKey: 'EMAIL_ADDRESS_', records: Array.from({ length: 25 }, (_, i) => ({ EMAIL_ADDRESS_: email(200 + i), MOBILE_NUMBER_: mobile(200 + i) })) });
    expect(merged.statusCode, merged.body).toBe(200);
    // Put the store back as migration 0009 left it (as an older Custos wrote it), then migrate it again.
    const loc = rt.storage.locateTenantStore(t.tenantId);
    if (loc.kind !== 'sqlite') throw new Error('unreachable');
    const raw = new Database(loc.file);
    try {
      raw.pragma('busy_timeout = 10000');
      raw.exec(`begin immediate;
        drop table record_keys_sha256; drop table record_keys_md5; drop table record_keys_mobile;
        drop table record_keys_sha256_recent; drop table record_keys_md5_recent; drop table record_keys_mobile_recent; drop table record_keys_state;
        drop index records_seq_idx; alter table records drop column seq;
        create index records_sha256_idx on records (list_key, k_sha256);
        create index records_md5_idx on records (list_key, k_md5);
        create index records_mobile_idx on records (list_key, k_mobile);
        delete from custos_migrations where name in ('0010_record_keys', '0011_record_keys_recent');
        commit;`);
    } finally {
      raw.close();
    }
    expect((await rt.storage.migrateTenant(t.tenantId)).applied).toEqual(['0010_record_keys', '0011_record_keys_recent']);
    listId = older;
    listKey = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('lists').select('key').where('id', '=', older).executeTakeFirstOrThrow()).key);
    await expectInStep();
    const n = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('records').select('seq').where('list_key', '=', listKey).orderBy('seq').execute()).map((r) => r.seq));
    expect(n).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(await found('EMAIL_ADDRESS_', email(210))).toHaveLength(1);
    expect(await found('MOBILE_NUMBER_', mobile(224))).toHaveLength(1);
    // Migration 0011: the key tables' sizes recorded, nothing recent yet.
    const state = await rt.storage.tenant(t.tenantId).read(async (db) => db.selectFrom('record_keys_state').selectAll().execute());
    expect(state.map((s) => s.folded)).toEqual([25, 25, 25]);
    expect(state.map((s) => s.added)).toEqual([0, 0, 0]);
    const indexes = new Database(loc.file, { readonly: true });
    try {
      const names = indexes.prepare("select name from sqlite_master where type = 'index' and tbl_name = 'records'").all() as { name: string }[];
      expect(names.map((x) => x.name)).not.toEqual(expect.arrayContaining(['records_sha256_idx']));
      expect(names.map((x) => x.name)).toContain('records_seq_idx');
    } finally {
      indexes.close();
    }
  });
});
