import type { FastifyInstance } from 'fastify';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ohashes } from '../../src/data/ohash.js';
import { RECORD_KEY_TABLES } from '../../src/storage/migrations/tenant/0010-record-keys.js';
import { makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

const email = (i: number) => `person${i}@keys.example`;
const mobile = (i: number) => `+1 555 ${String(i).padStart(7, '0')}`;

/**
 * The lookup keys of records (oHashes and the mobile blind index) through
 * every write path: on SQLite they live in tables of their own, kept in step
 * with `records` (migration 0010); on PostgreSQL in indexes on `records`.
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

  /** SQLite: each key table holds exactly the (key, number) pairs of the list's records, and the numbers are unique. */
  const expectInStep = async () => {
    if (kind !== 'sqlite') return;
    await rt.storage.tenant(t.tenantId).read(async (db) => {
      const records = await db.selectFrom('records').select(['seq', 'k_sha256', 'k_md5', 'k_mobile']).where('list_key', '=', listKey).execute();
      const seqs = records.map((r) => r.seq);
      expect(seqs.every((s) => typeof s === 'number')).toBe(true);
      expect(new Set(seqs).size).toBe(seqs.length);
      for (const [column, table] of Object.entries(RECORD_KEY_TABLES) as [keyof typeof RECORD_KEY_TABLES, (typeof RECORD_KEY_TABLES)[keyof typeof RECORD_KEY_TABLES]][]) {
        const expected = records.filter((r) => r[column] !== null).map((r) => `${r[column]}:${r.seq}`).sort();
        const stored = (await db.selectFrom(table).select(['k', 'seq']).where('list_key', '=', listKey).execute()).map((e) => `${e.k}:${e.seq}`).sort();
        expect(stored, table).toEqual(expected);
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
      for (const table of Object.values(RECORD_KEY_TABLES)) expect(await db.selectFrom(table).select('k').where('list_key', '=', listKey).execute()).toEqual([]);
    });
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
        drop index records_seq_idx; alter table records drop column seq;
        create index records_sha256_idx on records (list_key, k_sha256);
        create index records_md5_idx on records (list_key, k_md5);
        create index records_mobile_idx on records (list_key, k_mobile);
        delete from custos_migrations where name = '0010_record_keys';
        commit;`);
    } finally {
      raw.close();
    }
    expect((await rt.storage.migrateTenant(t.tenantId)).applied).toEqual(['0010_record_keys']);
    listId = older;
    listKey = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('lists').select('key').where('id', '=', older).executeTakeFirstOrThrow()).key);
    await expectInStep();
    const n = await rt.storage.tenant(t.tenantId).read(async (db) => (await db.selectFrom('records').select('seq').where('list_key', '=', listKey).orderBy('seq').execute()).map((r) => r.seq));
    expect(n).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(await found('EMAIL_ADDRESS_', email(210))).toHaveLength(1);
    expect(await found('MOBILE_NUMBER_', mobile(224))).toHaveLength(1);
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
