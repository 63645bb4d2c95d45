import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import { ciphertextGeneration } from '../../src/crypto/field-cipher.js';
import { ohashes } from '../../src/data/ohash.js';
import { LIST_OBJECT, openProtected } from '../../src/data/record-codec.js';
import { DataWorkers, ENCODE_SLICE } from '../../src/data/data-workers.js';
import { parseCredential } from '../../src/iam/credentials.js';
import { RecordService, STATS_REFRESH_ROWS } from '../../src/data/record-service.js';
import { keyOperations } from '../../src/ops/key-operations.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, consoleUser, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, postgresUrl, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

const JANE = 'Jane.Doe+news@Example.com';
const JANE_PHONE = '+1 555 010 1234';

describeEachStorage('lists and records', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  let t: { tenantId: string; name: string; admin: SignedIn };
  let viewer: SignedIn;
  let marketer: SignedIn;
  let director: { headers: Record<string, string>; token: string };
  let directorConsole: SignedIn;
  let listId: string;

  const api = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, headers: Record<string, string>, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'dataco');
    viewer = await consoleUser(app, rt, t, t.admin.cookie, 'vera', ['viewer']);
    marketer = await consoleUser(app, rt, t, t.admin.cookie, 'mark', ['marketer']);
    directorConsole = await consoleUser(app, rt, t, t.admin.cookie, 'dora', ['data-director']);
    director = await apiUser(app, rt, t, t.admin.cookie, 'loader', ['data-director']);
    const res = await api('POST', '/lists', director.headers, {
      name: 'Customers',
      fields: [
        { name: 'FIRST_NAME', type: 'string', classification: 'pii' },
        { name: 'SSN', type: 'string', classification: 'sensitive', unique: true },
        { name: 'CITY', type: 'string', classification: 'plain', indexed: true },
        { name: 'TIER', type: 'string', classification: 'plain' },
        { name: 'SCORE', type: 'number', classification: 'plain' },
      ],
    });
    expect(res.statusCode, res.body).toBe(201);
    listId = res.json().id;
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  const merge = (headers: Record<string, string>, records: unknown[], matchKey = 'EMAIL_ADDRESS_', extra: object = {}) => api('POST', `/lists/${listId}/records/merge`, headers, { matchKey, records, ...extra });

  describe('writing', () => {
    it('creates records with encrypted personal data and computed oHashes', async () => {
      const res = await api('POST', `/lists/${listId}/records`, director.headers, { fields: { EMAIL_ADDRESS_: JANE, MOBILE_NUMBER_: JANE_PHONE, CUSTOMER_ID_: 'C-1', FIRST_NAME: 'Jane', SSN: '123-45-6789', CITY: 'Paris', SCORE: 7 } });
      expect(res.statusCode, res.body).toBe(201);
      const rec = res.json();
      expect(rec.fields).toMatchObject({ EMAIL_ADDRESS_: JANE, EMAIL_SHA256_HASH_: ohashes(JANE).sha256, EMAIL_MD5_HASH_: ohashes(JANE).md5, FIRST_NAME: 'Jane', CITY: 'Paris', SCORE: 7 });
      const row = await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('records').selectAll().where('id', '=', rec.id).executeTakeFirstOrThrow());
      expect(row.plain).not.toMatch(/Jane|example|555|123-45/i);
      expect(row.protected!.toString('latin1')).not.toMatch(/Jane|example|555|123-45/i);
      expect(JSON.parse(row.plain)).toEqual({ CUSTOMER_ID_: 'C-1', CITY: 'Paris', SCORE: 7 });
      // The protected values are sealed together, bound to this record: they open here and nowhere else.
      const other = newId();
      await rt.storage.tenant(t.tenantId).transaction(async (db) => {
        const keys = await rt.keys.objectKeys(db, t.tenantId, LIST_OBJECT, listId);
        expect(openProtected(keys, rec.id, row.protected)).toEqual({ EMAIL_ADDRESS_: JANE, MOBILE_NUMBER_: JANE_PHONE, FIRST_NAME: 'Jane', SSN: '123-45-6789' });
        expect(() => openProtected(keys, other, row.protected)).toThrow(expect.objectContaining({ code: 'decryption_failed' }));
      });
    });

    it('a large merge lets other work run while the new records are encrypted: on worker threads, or in slices on this thread; if the workers fail, the write encrypts them', async () => {
      const auth = await rt.sessions.authenticate(t.tenantId, parseCredential(director.token)!.secret, 'token', { ip: '127.0.0.1' });
      const closed = new DataWorkers({ threads: 1 });
      await closed.close();
      const services: Array<[string, RecordService]> = [
        ['worker threads', rt.records],
        ['this thread', new RecordService({ storage: rt.storage, clock: rt.clock, keys: rt.keys, audit: rt.audit, lists: rt.lists, workers: new DataWorkers({ threads: 0 }) })],
        ['failed workers', new RecordService({ storage: rt.storage, clock: rt.clock, keys: rt.keys, audit: rt.audit, lists: rt.lists, workers: closed })],
      ];
      expect(rt.config.dataThreads).toBeGreaterThan(0);
      for (const [how, svc] of services) {
        const l = (await api('POST', '/lists', director.headers, { name: `Sliced ${how}`, fields: [{ name: 'FIRST_NAME', type: 'string', classification: 'pii' }] })).json().id as string;
        const n = ENCODE_SLICE * 8;
        const records = Array.from({ length: n }, (_, i) => ({ EMAIL_ADDRESS_: `slice${i}@slice.example`, MOBILE_NUMBER_: `+1 555 ${String(i).padStart(7, '0')}`, CUSTOMER_ID_: `S${i}`, FIRST_NAME: `First ${i}` }));
        // Turns of the event loop that other work (another request, a timer) gets while the merge runs.
        let turns = 0;
        let done = false;
        const spinning = (async () => {
          while (!done) {
            await new Promise((r) => setImmediate(r));
            turns++;
          }
        })();
        const result = await svc.merge(auth, t.tenantId, l, records, { matchKey: 'CUSTOMER_ID_' });
        done = true;
        await spinning;
        expect(result, how).toMatchObject({ inserted: n, updated: 0 });
        if (how !== 'failed workers') expect(turns, how).toBeGreaterThanOrEqual(8);
        // Whoever encrypted them, the records read back whole, and are found by their email and mobile number.
        const one = await api('GET', `/lists/${l}/records/${result.ids[1234]}`, director.headers);
        expect(one.json().fields, how).toMatchObject({ EMAIL_ADDRESS_: 'slice1234@slice.example', MOBILE_NUMBER_: '+1 555 0001234', CUSTOMER_ID_: 'S1234', FIRST_NAME: 'First 1234' });
        const byMobile = await api('GET', `/lists/${l}/records?filter=${encodeURIComponent('MOBILE_NUMBER_:+1 555 0003999')}`, director.headers);
        expect(byMobile.json().records.map((r: { id: string }) => r.id), how).toEqual([result.ids[3999]]);
        const byEmail = await svc.merge(auth, t.tenantId, l, [{ EMAIL_ADDRESS_: 'SLICE7@slice.example', FIRST_NAME: 'Seven' }], { matchKey: 'EMAIL_ADDRESS_' });
        expect(byEmail, how).toMatchObject({ inserted: 0, updated: 1, ids: [result.ids[7]] });
        // Updating them all (encrypted in the write, on the same threads): named fields change, the others and the creation time stay.
        const before = (await api('GET', `/lists/${l}/records/${result.ids[1234]}`, director.headers)).json();
        const updates = Array.from({ length: n }, (_, i) => ({ CUSTOMER_ID_: `S${i}`, FIRST_NAME: `Renamed ${i}` }));
        expect(await svc.merge(auth, t.tenantId, l, updates, { matchKey: 'CUSTOMER_ID_' }), how).toMatchObject({ inserted: 0, updated: n });
        const updated = (await api('GET', `/lists/${l}/records/${result.ids[1234]}`, director.headers)).json();
        expect(updated.fields, how).toMatchObject({ EMAIL_ADDRESS_: 'slice1234@slice.example', MOBILE_NUMBER_: '+1 555 0001234', CUSTOMER_ID_: 'S1234', FIRST_NAME: 'Renamed 1234' });
        expect(updated.createdAt, how).toBe(before.createdAt);
        const stillByMobile = await api('GET', `/lists/${l}/records?filter=${encodeURIComponent('MOBILE_NUMBER_:+1 555 0003999')}`, director.headers);
        expect(stillByMobile.json().records.map((r: { id: string; fields: { FIRST_NAME: string } }) => [r.id, r.fields.FIRST_NAME]), how).toEqual([[result.ids[3999], 'Renamed 3999']]);
      }
    });

    it('refuses a batch with one bad record: nothing changes, and the line and reason are reported without the value', async () => {
      const before = (await api('GET', `/lists/${listId}`, director.headers)).json().recordCount;
      const res = await merge(director.headers, [
        { EMAIL_ADDRESS_: 'a1@x.example', FIRST_NAME: 'A' },
        { EMAIL_ADDRESS_: 'a2@x.example', SCORE: 'not-a-number-secret' },
        { EMAIL_ADDRESS_: 'a3@x.example', NOPE: 1 },
        { EMAIL_ADDRESS_: 'not an email at all secret', FIRST_NAME: 'C' },
      ]);
      const body = expectProblem(res, 400, 'validation_failed');
      expect(body.errors).toEqual([
        { line: 2, field: 'SCORE', reason: 'must be a number' },
        { line: 3, field: 'NOPE', reason: 'unknown field' },
        { line: 4, field: 'EMAIL_ADDRESS_', reason: 'must be an email address' },
      ]);
      expect(res.body).not.toMatch(/secret/);
      expect((await api('GET', `/lists/${listId}`, director.headers)).json().recordCount).toBe(before);
    });

    it('refuses duplicates of unique fields within the batch and against stored records', async () => {
      const res = await merge(director.headers, [
        { EMAIL_ADDRESS_: 'u1@x.example', SSN: '999-00-0001' },
        { EMAIL_ADDRESS_: 'u2@x.example', SSN: '999-00-0001' },
        { EMAIL_ADDRESS_: 'u3@x.example', SSN: '123-45-6789' },
        { EMAIL_ADDRESS_: 'u4@x.example', CUSTOMER_ID_: 'C-1' },
      ]);
      const body = expectProblem(res, 400, 'validation_failed');
      expect(body.errors).toEqual(
        expect.arrayContaining([
          { line: 2, field: 'SSN', reason: 'the same value is given on line 1' },
          { line: 3, field: 'SSN', reason: 'already used by another record' },
          { line: 4, field: 'CUSTOMER_ID_', reason: 'already used by another record' },
        ]),
      );
    });

    it('a merge larger than one slice of new records is all or nothing across its slices: every refused line is reported, in order, and nothing is written', async () => {
      const l = (
        await api('POST', '/lists', director.headers, {
          name: 'Sliced refusals',
          fields: [
            { name: 'SSN', type: 'string', classification: 'sensitive', unique: true },
            { name: 'TIER', type: 'string', classification: 'plain', required: true },
          ],
        })
      ).json().id as string;
      const mergeInto = (records: unknown[]) => api('POST', `/lists/${l}/records/merge`, director.headers, { matchKey: 'EMAIL_ADDRESS_', records });
      const stored = await mergeInto([{ EMAIL_ADDRESS_: 'stored@slices.example', CUSTOMER_ID_: 'K-stored', SSN: 'SSN-stored', TIER: 'gold' }]);
      expect(stored.statusCode, stored.body).toBe(200);
      // New records are encoded and written in slices of 1,000: these refusals sit in the second, third and fourth.
      const n = 3500;
      const records: Array<Record<string, string>> = Array.from({ length: n }, (_, i) => ({ EMAIL_ADDRESS_: `k${i}@slices.example`, CUSTOMER_ID_: `K${i}`, SSN: `SSN-${i}`, TIER: 'silver' }));
      records[1499]!.SSN = 'SSN-stored'; // a stored record's unique value
      records[2499]!.CUSTOMER_ID_ = 'K-stored'; // a stored record's customer id
      records[2599]!.CUSTOMER_ID_ = 'K9'; // line 10's customer id
      delete records[2999]!.TIER; // a required field
      const refused = await mergeInto(records);
      const body = expectProblem(refused, 400, 'validation_failed');
      expect(body.rejected).toBe(4);
      // By kind (required, within the batch, customer id, email, unique fields), each in the order of the batch.
      expect(body.errors).toEqual([
        { line: 3000, field: 'TIER', reason: 'is required' },
        { line: 2600, field: 'CUSTOMER_ID_', reason: 'the same value is given on line 10' },
        { line: 2500, field: 'CUSTOMER_ID_', reason: 'already used by another record' },
        { line: 1500, field: 'SSN', reason: 'already used by another record' },
      ]);
      // The first slice had nothing refused, and was not kept either.
      expect((await api('GET', `/lists/${l}`, director.headers)).json().recordCount).toBe(1);
      expect((await api('GET', `/lists/${l}/records?filter=CUSTOMER_ID_:K0`, director.headers)).json().records).toEqual([]);
      // The same batch, corrected, is written whole, each line on its own record.
      records[1499]!.SSN = 'SSN-1499';
      records[2499]!.CUSTOMER_ID_ = 'K2499';
      records[2599]!.CUSTOMER_ID_ = 'K2599';
      records[2999]!.TIER = 'silver';
      const ok = await mergeInto(records);
      expect(ok.statusCode, ok.body).toBe(200);
      expect(ok.json()).toMatchObject({ inserted: n, updated: 0, skipped: 0 });
      const ids = ok.json().ids as string[];
      expect(new Set(ids).size).toBe(n);
      for (const i of [0, 999, 1000, 2599, 3499]) {
        const one = (await api('GET', `/lists/${l}/records/${ids[i]}`, director.headers)).json();
        expect(one.fields).toMatchObject({ EMAIL_ADDRESS_: `k${i}@slices.example`, CUSTOMER_ID_: `K${i}`, SSN: `SSN-${i}`, TIER: 'silver' });
      }
      expect((await api('GET', `/lists/${l}`, director.headers)).json().recordCount).toBe(n + 1);
    });

    it('merges by email, customer id or oHash; oHashes never update the email', async () => {
      const r1 = await merge(director.headers, [{ EMAIL_ADDRESS_: `  ${JANE} `, TIER: 'gold' }, { EMAIL_ADDRESS_: 'new@x.example', TIER: 'silver' }]);
      expect(r1.json()).toMatchObject({ inserted: 1, updated: 1, skipped: 0 });
      const r2 = await merge(director.headers, [{ CUSTOMER_ID_: 'C-1', SCORE: 9 }], 'CUSTOMER_ID_');
      expect(r2.json()).toMatchObject({ updated: 1 });
      const jane = (await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:C-1`, director.headers)).json().records[0];
      expect(jane.fields).toMatchObject({ TIER: 'gold', SCORE: 9, FIRST_NAME: 'Jane', EMAIL_ADDRESS_: JANE });
      const r3 = await merge(director.headers, [{ EMAIL_SHA256_HASH_: ohashes(JANE).sha256, CITY: 'Lyon' }], 'EMAIL_SHA256_HASH_');
      expect(r3.json()).toMatchObject({ updated: 1, ids: [jane.id] });
      const r4 = await merge(director.headers, [{ EMAIL_MD5_HASH_: ohashes(JANE).md5.toUpperCase(), CITY: 'Nice' }], 'EMAIL_MD5_HASH_');
      expect(r4.json()).toMatchObject({ updated: 1, ids: [jane.id] });
      const bad = await merge(director.headers, [{ EMAIL_SHA256_HASH_: ohashes(JANE).sha256, EMAIL_ADDRESS_: 'hijack@x.example' }], 'EMAIL_SHA256_HASH_');
      expect(expectProblem(bad, 400, 'validation_failed').errors).toEqual([{ line: 1, field: 'EMAIL_ADDRESS_', reason: 'an oHash match key cannot update EMAIL_ADDRESS_' }]);
      expectProblem(await api('POST', `/lists/${listId}/records`, director.headers, { fields: { EMAIL_SHA256_HASH_: 'ab'.repeat(32) } }), 400, 'validation_failed');
      // updateOnMatch none / insertOnNoMatch false
      const r5 = await merge(director.headers, [{ EMAIL_ADDRESS_: JANE, TIER: 'bronze' }, { EMAIL_ADDRESS_: 'nobody@x.example' }], 'EMAIL_ADDRESS_', { updateOnMatch: 'none', insertOnNoMatch: false });
      expect(r5.json()).toMatchObject({ inserted: 0, updated: 0, skipped: 2 });
      // Emails match case-insensitively.
      const r6 = await merge(director.headers, [{ EMAIL_ADDRESS_: 'NEW@X.EXAMPLE', TIER: 'platinum' }]);
      expect(r6.json()).toMatchObject({ inserted: 0, updated: 1 });
      await merge(director.headers, [{ EMAIL_ADDRESS_: 'new@x.example', TIER: 'silver' }]);
    });

    it('applies concurrent merges of the same new records one after the other: one inserts, the other updates, no duplicates', async () => {
      const batch = (tier: string) => Array.from({ length: 300 }, (_, i) => ({ CUSTOMER_ID_: `RACE-${i}`, EMAIL_ADDRESS_: `race${i}@x.example`, TIER: tier }));
      const [a, b] = await Promise.all([merge(director.headers, batch('a'), 'CUSTOMER_ID_'), merge(director.headers, batch('b'), 'CUSTOMER_ID_')]);
      expect(a.statusCode, a.body).toBe(200);
      expect(b.statusCode, b.body).toBe(200);
      const results = [a.json(), b.json()].sort((x, y) => y.inserted - x.inserted);
      expect(results[0]).toMatchObject({ inserted: 300, updated: 0 });
      expect(results[1]).toMatchObject({ inserted: 0, updated: 300 });
      expect(results[0].ids).toEqual(results[1].ids);
      const found = (await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:RACE-7`, director.headers)).json().records;
      expect(found).toHaveLength(1);
      expect(['a', 'b']).toContain(found[0].fields.TIER);
      expect(found[0].fields.EMAIL_ADDRESS_).toBe('race7@x.example');
      // Lines naming the same record within one batch apply in order, onto one record.
      const dup = await merge(director.headers, [{ CUSTOMER_ID_: 'RACE-1', TIER: 'x' }, { CUSTOMER_ID_: 'RACE-NEW', TIER: 'y', EMAIL_ADDRESS_: 'racenew@x.example' }, { CUSTOMER_ID_: 'RACE-1', SCORE: 5 }, { CUSTOMER_ID_: 'RACE-NEW', TIER: 'z' }], 'CUSTOMER_ID_');
      expect(dup.json()).toMatchObject({ inserted: 1, updated: 1, skipped: 0 });
      expect(dup.json().ids[0]).toBe(dup.json().ids[2]);
      expect(dup.json().ids[1]).toBe(dup.json().ids[3]);
      const one = (await api('GET', `/lists/${listId}/records/${dup.json().ids[0]}`, director.headers)).json();
      expect(one.fields).toMatchObject({ TIER: 'x', SCORE: 5, EMAIL_ADDRESS_: 'race1@x.example' });
      const fresh = (await api('GET', `/lists/${listId}/records/${dup.json().ids[1]}`, director.headers)).json();
      expect(fresh.fields).toMatchObject({ TIER: 'z', EMAIL_ADDRESS_: 'racenew@x.example' });
    });

    it('updates, replaces and deletes single records', async () => {
      const rec = (await api('POST', `/lists/${listId}/records`, director.headers, { fields: { EMAIL_ADDRESS_: 'single@x.example', TIER: 't', CITY: 'Rome' } })).json();
      const upd = await api('PATCH', `/lists/${listId}/records/${rec.id}`, director.headers, { fields: { TIER: 'u' } });
      expect(upd.json().fields).toMatchObject({ TIER: 'u', CITY: 'Rome', EMAIL_ADDRESS_: 'single@x.example' });
      const rep = await api('PATCH', `/lists/${listId}/records/${rec.id}`, director.headers, { fields: { TIER: 'v' }, replace: true });
      expect(rep.json().fields).toMatchObject({ TIER: 'v', CITY: null, EMAIL_ADDRESS_: null });
      // Read back with no protected values left (the row's sealed column is null).
      const bare = (await api('GET', `/lists/${listId}/records/${rec.id}`, director.headers)).json();
      expect(bare).toMatchObject({ id: rec.id, fields: { TIER: 'v', EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: null } });
      expect(Date.parse(bare.updatedAt)).toBeGreaterThanOrEqual(Date.parse(bare.createdAt));
      expect((await api('DELETE', `/lists/${listId}/records/${rec.id}`, director.headers)).statusCode).toBe(204);
      expectProblem(await api('GET', `/lists/${listId}/records/${rec.id}`, director.headers), 404, 'not_found');
    });
  });

  describe('reading and redaction', () => {
    it('a Viewer never receives a clear email or phone through any path', async () => {
      const list = (await api('GET', `/lists/${listId}/records?limit=1000`, viewer.headers)).json();
      const text = JSON.stringify(list);
      expect(text).not.toMatch(/jane\.doe|Jane\.Doe/i);
      expect(text).not.toContain(ohashes(JANE).sha256);
      const jane = list.records.find((r: { fields: { CUSTOMER_ID_: string } }) => r.fields.CUSTOMER_ID_ === 'C-1');
      expect(jane.fields).toMatchObject({ EMAIL_ADDRESS_: 'J***@Example.com', MOBILE_NUMBER_: '*******1234', FIRST_NAME: 'J***', EMAIL_SHA256_HASH_: '****', SSN: '123-45-6789' });
      expect(JSON.stringify((await api('GET', `/lists/${listId}/records/${jane.id}`, viewer.headers)).json())).not.toMatch(/Jane\.Doe|555 010/);
      // Searching by the email works without revealing it.
      const found = (await api('GET', `/lists/${listId}/records?filter=${encodeURIComponent(`EMAIL_ADDRESS_:${JANE}`)}`, viewer.headers)).json();
      expect(found.records.map((r: { id: string }) => r.id)).toEqual([jane.id]);
      expect(JSON.stringify(found)).not.toMatch(/Jane\.Doe/);
      // Exports need data.export; a Viewer has none.
      expectProblem(await api('GET', `/lists/${listId}/export?format=csv`, viewer.headers), 403, 'forbidden');
      // Errors do not echo values.
      const bad = await api('POST', `/lists/${listId}/records`, viewer.headers, { fields: { EMAIL_ADDRESS_: JANE } });
      expectProblem(bad, 403, 'forbidden');
      expect(bad.body).not.toMatch(/Jane/);
    });

    it('a Marketer reads and writes lists, sees personal data masked and cannot export', async () => {
      const res = await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:C-1`, marketer.headers);
      expect(res.json().records[0].fields.EMAIL_ADDRESS_).toBe('J***@Example.com');
      expect((await api('POST', `/lists/${listId}/records`, marketer.headers, { fields: { EMAIL_ADDRESS_: 'mk@x.example' } })).statusCode).toBe(201);
      expectProblem(await api('GET', `/lists/${listId}/export`, marketer.headers), 403, 'forbidden');
    });

    it('filters on plain fields, indexed fields and protected indexed fields, with a cursor', async () => {
      const byCity = (await api('GET', `/lists/${listId}/records?filter=CITY:Nice`, director.headers)).json();
      expect(byCity.records).toHaveLength(1);
      const byTier = (await api('GET', `/lists/${listId}/records?filter=TIER:silver`, director.headers)).json();
      expect(byTier.records.map((r: { fields: { EMAIL_ADDRESS_: string } }) => r.fields.EMAIL_ADDRESS_)).toEqual(['new@x.example']);
      const bySsn = (await api('GET', `/lists/${listId}/records?filter=SSN:123-45-6789`, director.headers)).json();
      expect(bySsn.records).toHaveLength(1);
      const byPhone = (await api('GET', `/lists/${listId}/records?filter=${encodeURIComponent('MOBILE_NUMBER_:+1 (555) 010-1234')}`, director.headers)).json();
      expect(byPhone.records).toHaveLength(1);
      const byScore = (await api('GET', `/lists/${listId}/records?filter=SCORE:9`, director.headers)).json();
      expect(byScore.records).toHaveLength(1);
      expectProblem(await api('GET', `/lists/${listId}/records?filter=FIRST_NAME:Jane`, director.headers), 400, 'validation_failed'); // encrypted, not indexed
      const page1 = (await api('GET', `/lists/${listId}/records?limit=2`, director.headers)).json();
      expect(page1.records).toHaveLength(2);
      const page2 = (await api('GET', `/lists/${listId}/records?limit=2&cursor=${page1.nextCursor}`, director.headers)).json();
      expect(page2.records[0].id > page1.records[1].id).toBe(true);
    });

    it('records reads of personal data in clear, one event per request with the count', async () => {
      const before = (await rt.audit.query(t.tenantId, { types: ['data.pii.read'], limit: 100 })).events.length;
      await api('GET', `/lists/${listId}/records?limit=3`, director.headers);
      await api('GET', `/lists/${listId}/records?limit=3`, viewer.headers); // masked: not a clear read
      const events = (await rt.audit.query(t.tenantId, { types: ['data.pii.read'], limit: 100 })).events;
      expect(events.length).toBe(before + 1);
      expect(events[0]).toMatchObject({ principal: { name: 'loader', type: 'api-user' }, details: { records: 3 }, resource: { type: 'list', id: listId } });
    });
  });

  describe('exports', () => {
    let bigList: string;
    beforeAll(async () => {
      bigList = (await api('POST', '/lists', director.headers, { name: 'Big', fields: [{ name: 'N', type: 'number', classification: 'plain' }] })).json().id;
      const records = Array.from({ length: 5001 }, (_, i) => ({ EMAIL_ADDRESS_: `user${i}@big.example`, N: i }));
      const res = await api('POST', `/lists/${bigList}/records/merge`, director.headers, { matchKey: 'EMAIL_ADDRESS_', records });
      expect(res.json().inserted).toBe(5001);
    });

    it('refuses a console export over 5,000 records, naming the API and bulk channels; the same export with a token streams everything', async () => {
      const refused = await api('GET', `/lists/${bigList}/export?format=csv`, directorConsole.headers);
      const body = expectProblem(refused, 422, 'export_limit_exceeded');
      expect(body.detail).toMatch(/REST API with a bearer token/);
      expect(body.detail).toMatch(/bulk-transfer/);
      const ok = await api('GET', `/lists/${bigList}/export?format=csv`, director.headers);
      expect(ok.statusCode).toBe(200);
      expect(ok.headers['content-type']).toMatch(/^text\/csv/);
      const lines = ok.body.trimEnd().split('\r\n');
      expect(lines).toHaveLength(5002);
      expect(lines[0]).toBe('EMAIL_ADDRESS_,MOBILE_NUMBER_,CUSTOMER_ID_,EMAIL_SHA256_HASH_,EMAIL_MD5_HASH_,N');
      expect(lines.some((l) => l.startsWith('user4999@big.example,'))).toBe(true);
      const jsonl = await api('GET', `/lists/${bigList}/export?format=jsonl`, director.headers);
      expect(jsonl.body.trimEnd().split('\n')).toHaveLength(5001);
      // A console export under the limit works, with PII per the user's rights.
      const small = await api('GET', `/lists/${listId}/export?format=jsonl`, directorConsole.headers);
      expect(small.statusCode).toBe(200);
      expect(small.body).toContain(JANE);
      const events = (await rt.audit.query(t.tenantId, { types: ['data.export'], limit: 10 })).events;
      expect(events.map((e) => [e.outcome, (e.details as { records: number }).records])).toEqual(expect.arrayContaining([['denied', 5001], ['success', 5001]]));
      expect(events.find((e) => e.outcome === 'success')?.details).toMatchObject({ piiClear: true });
    });

    it('renders export pages on worker threads in record order, exactly as on the main thread; an export stopped midway does not disturb the next', async () => {
      expect(rt.config.dataThreads).toBeGreaterThan(0);
      const auth = await rt.sessions.authenticate(t.tenantId, parseCredential(director.token)!.secret, 'token', { ip: '127.0.0.1' });
      const collect = async (svc: RecordService, format: 'csv' | 'jsonl') => {
        let text = '';
        for await (const chunk of (await svc.export(auth, t.tenantId, bigList, format, { via: 'token' })).lines) text += chunk;
        return text;
      };
      const inline = new RecordService({ storage: rt.storage, clock: rt.clock, keys: rt.keys, audit: rt.audit, lists: rt.lists, workers: new DataWorkers({ threads: 0 }) });
      const jsonl = await collect(rt.records, 'jsonl');
      const ids = jsonl.trimEnd().split('\n').map((l) => JSON.parse(l).id as string);
      expect(ids).toHaveLength(5001);
      expect([...ids].sort()).toEqual(ids);
      expect(new Set(ids).size).toBe(5001);
      expect(jsonl).toBe(await collect(inline, 'jsonl'));
      expect(await collect(rt.records, 'csv')).toBe(await collect(inline, 'csv'));
      // Stop after the first page of records: the pages already handed to the workers finish unobserved.
      const stopped = (await rt.records.export(auth, t.tenantId, bigList, 'csv', { via: 'token' })).lines[Symbol.asyncIterator]();
      expect((await stopped.next()).value).toMatch(/^EMAIL_ADDRESS_,/);
      expect((await stopped.next()).value).toContain('@big.example');
      await stopped.return?.(undefined);
      await new Promise((r) => setTimeout(r, 200));
      expect((await collect(rt.records, 'csv')).trimEnd().split('\r\n')).toHaveLength(5002);
    });

    it('neutralises spreadsheet formulas and quotes CSV cells', async () => {
      const l = (await api('POST', '/lists', director.headers, { name: 'Csv', fields: [{ name: 'NOTE', type: 'string', classification: 'plain' }] })).json().id;
      await api('POST', `/lists/${l}/records`, director.headers, { fields: { NOTE: '=HYPERLINK("http://evil")' } });
      await api('POST', `/lists/${l}/records`, director.headers, { fields: { NOTE: 'a, "quoted"\nline' } });
      const csv = (await api('GET', `/lists/${l}/export?format=csv`, director.headers)).body;
      expect(csv).toContain(`"'=HYPERLINK(""http://evil"")"`);
      expect(csv).toContain('"a, ""quoted""\nline"');
    });
  });

  describe('schema changes', () => {
    it('adds, reclassifies (re-encrypting or decrypting every value) and drops fields without losing other data', async () => {
      const l = (await api('POST', '/lists', director.headers, { name: 'Evolving', fields: [{ name: 'NICK', type: 'string', classification: 'plain' }, { name: 'NOTE', type: 'string', classification: 'plain' }] })).json().id;
      await api('POST', `/lists/${l}/records/merge`, director.headers, { matchKey: 'CUSTOMER_ID_', records: [{ CUSTOMER_ID_: 'a', NICK: 'ace', NOTE: 'n1' }, { CUSTOMER_ID_: 'b', NICK: 'bee', NOTE: 'n2' }] });
      const changed = await api('PATCH', `/lists/${l}/schema`, director.headers, { add: [{ name: 'AGE', type: 'number', classification: 'sensitive' }], reclassify: [{ name: 'NICK', classification: 'pii' }], drop: ['NOTE'] });
      expect(changed.statusCode, changed.body).toBe(200);
      expect(changed.json().schemaVersion).toBe(2);
      const rows = await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('records').innerJoin('lists', 'lists.key', 'records.list_key').select(['records.id', 'records.plain', 'records.protected']).where('lists.id', '=', l).execute());
      for (const r of rows) {
        expect(r.plain).not.toMatch(/ace|bee|n1|n2/);
        expect(Object.keys(await rt.storage.tenant(t.tenantId).transaction(async (db) => openProtected(await rt.keys.objectKeys(db, t.tenantId, LIST_OBJECT, l), r.id, r.protected)))).toEqual(['NICK']);
      }
      const recs = (await api('GET', `/lists/${l}/records`, director.headers)).json().records;
      expect(recs.map((r: { fields: Record<string, unknown> }) => [r.fields.NICK, r.fields.NOTE, r.fields.AGE])).toEqual([['ace', undefined, null], ['bee', undefined, null]]);
      expect((await api('GET', `/lists/${l}/records`, viewer.headers)).json().records[0].fields.NICK).toBe('a***');
      const back = await api('PATCH', `/lists/${l}/schema`, director.headers, { reclassify: [{ name: 'NICK', classification: 'plain' }] });
      expect(back.statusCode).toBe(200);
      expect((await api('GET', `/lists/${l}/records`, viewer.headers)).json().records[0].fields.NICK).toBe('ace');
      expectProblem(await api('PATCH', `/lists/${l}/schema`, director.headers, { drop: ['EMAIL_ADDRESS_'] }), 400, 'validation_failed');
      expectProblem(await api('PATCH', `/lists/${l}/schema`, director.headers, { add: [{ name: 'NICK', type: 'string', classification: 'plain' }] }), 400, 'validation_failed');
    });
  });

  describe('planner statistics', () => {
    it('refreshes the records statistics after a bulk import (PostgreSQL), so keyset pages use the index', async () => {
      const created = await api('POST', '/lists', director.headers, { name: 'Bulk', fields: [{ name: 'CITY', type: 'string', classification: 'plain' }] });
      const bulkId = created.json().id as string;
      const records = Array.from({ length: STATS_REFRESH_ROWS }, (_, i) => ({ CUSTOMER_ID_: `BULK-${i}`, EMAIL_ADDRESS_: `bulk${i}@x.example`, CITY: 'Lille' }));
      const location = rt.storage.locateTenantStore(t.tenantId);
      const schema = location.kind === 'postgres' ? location.schema : undefined;
      const client = schema !== undefined ? new pg.Client({ connectionString: postgresUrl()! }) : undefined;
      await client?.connect();
      try {
        const stats = async () =>
          (await client!.query<{ last_analyze: Date | null; reltuples: number }>(
            `SELECT s.last_analyze, c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname = $1 AND s.relname = 'records'`,
            [schema],
          )).rows[0]!;
        // Earlier imports of this tenant may have refreshed the statistics already: wait for a refresh after this one.
        const before = client ? (await stats()).last_analyze : null;
        const res = await api('POST', `/lists/${bulkId}/records/merge`, director.headers, { matchKey: 'CUSTOMER_ID_', records });
        expect(res.statusCode, res.body).toBe(200);
        expect(res.json().inserted).toBe(STATS_REFRESH_ROWS);
        if (!client) return; // nothing to refresh: SQLite plans these queries from the schema alone
        const refreshed = (at: Date | null) => at !== null && (before === null || at.getTime() > before.getTime());
        const deadline = Date.now() + 15000;
        while (!refreshed((await stats()).last_analyze) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        const after = await stats();
        expect(refreshed(after.last_analyze)).toBe(true);
        expect(after.reltuples).toBeGreaterThanOrEqual(STATS_REFRESH_ROWS);
        // The export's page query now walks the primary key in order instead of sorting the list. It is asked as
        // the export asks it, with the list's key as a value: behind a sub-select the planner could not use the
        // key's frequency and estimated an average list (32 rows once, with the other lists of this tenant), so
        // the plan depended on what else the tenant held.
        const key = (await client.query<{ key: number }>(`SELECT key FROM ${schema}.lists WHERE id = $1`, [bulkId])).rows[0]!.key;
        const plan = (await client.query<{ 'QUERY PLAN': string }>(`EXPLAIN SELECT id FROM ${schema}.records WHERE list_key = $1 AND id > '' ORDER BY id LIMIT 1000`, [key])).rows
          .map((r) => r['QUERY PLAN'])
          .join('\n');
        expect(plan).not.toMatch(/Sort/);
      } finally {
        await client?.end();
      }
    });
  });

  describe('isolation and keys', () => {
    it("answers 404 for another tenant's list and record ids", async () => {
      const other = await tenantWithAdmin(app, rt, 'otherdata');
      const otherApi = await apiUser(app, rt, other, other.admin.cookie, 'olo', ['data-director']);
      const jane = (await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:C-1`, director.headers)).json().records[0];
      expectProblem(await api('GET', `/lists/${listId}`, otherApi.headers), 404, 'not_found');
      expectProblem(await api('GET', `/lists/${listId}/records/${jane.id}`, otherApi.headers), 404, 'not_found');
      expectProblem(await api('GET', `/lists/${listId}/records`, otherApi.headers), 404, 'not_found');
      expectProblem(await api('GET', `/lists/${listId}/export`, otherApi.headers), 404, 'not_found');
      expectProblem(await api('POST', `/lists/${listId}/records`, otherApi.headers, { fields: { TIER: 'x' } }), 404, 'not_found');
      expect((await api('GET', '/lists', otherApi.headers)).json().lists).toEqual([]);
    });

    it('hides lists of other organizations when organizational access control is on', async () => {
      const admin = await rt.sessions.authenticate(t.tenantId, t.admin.cookie.split('.')[1]!, 'session', {});
      const east = newId();
      await rt.storage.tenant(t.tenantId).transaction((db) => db.insertInto('orgs').values({ id: east, name: 'East', parent_id: null, created_at: clock.now() }).execute());
      const eastList = (await api('POST', '/lists', director.headers, { name: 'EastOnly', orgId: east })).json();
      expect(eastList.orgId).toBe(east);
      const settings = structuredClone(await rt.securitySettings.get(t.tenantId));
      settings.orgAccessControl = true;
      await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, settings));
      try {
        // The loader belongs to no organization: the East list is out of reach.
        expectProblem(await api('GET', `/lists/${eastList.id}`, director.headers), 404, 'not_found');
        expect((await api('GET', '/lists', director.headers)).json().lists.map((l: { name: string }) => l.name)).not.toContain('EastOnly');
        await rt.users.setOrgs(admin, t.tenantId, (await rt.users.list(admin, t.tenantId)).users.find((u) => u.username === 'loader')!.id, [east]);
        expect((await api('GET', `/lists/${eastList.id}`, director.headers)).statusCode).toBe(200);
      } finally {
        settings.orgAccessControl = false;
        await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, settings));
      }
    });

    it("makes a list unreadable while the tenant's customer key is disabled, readable again when enabled; rotation and re-encryption keep it readable", async () => {
      const params = await rt.keys.importParameters(t.tenantId);
      await keyOperations.importKeyMaterial(rt, t.tenantId, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32)), TEST_OPERATOR);
      await keyOperations.disable(rt, t.tenantId, TEST_OPERATOR);
      expectProblem(await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:C-1`, director.headers), 423, 'key_disabled');
      expectProblem(await api('POST', `/lists/${listId}/records`, director.headers, { fields: { TIER: 'x' } }), 423, 'key_disabled');
      await keyOperations.enable(rt, t.tenantId, TEST_OPERATOR);
      expect((await api('GET', `/lists/${listId}/records?filter=CUSTOMER_ID_:C-1`, director.headers)).json().records[0].fields.EMAIL_ADDRESS_).toBe(JANE);
      const report = await keyOperations.reencrypt(rt, t.tenantId, TEST_OPERATOR, { batchSize: 1000 });
      expect(report.changed).toBeGreaterThan(5000);
      // Every record's sealed values were written back under the list's active generation (each pass starts a new one).
      const { sealed, active } = await rt.storage.tenant(t.tenantId).read(async (db) => ({
        sealed: await db.selectFrom('records').select('protected').where('protected', 'is not', null).execute(),
        active: Math.max(...(await db.selectFrom('data_keys').select('generation').where('object_type', '=', LIST_OBJECT).where('object_id', '=', listId).execute()).map((k) => Number(k.generation))),
      }));
      expect(sealed.length).toBeGreaterThan(5000);
      expect(new Set(sealed.map((r) => ciphertextGeneration(Buffer.from(r.protected!))))).toEqual(new Set([active]));
      const jane = (await api('GET', `/lists/${listId}/records?filter=${encodeURIComponent(`EMAIL_ADDRESS_:${JANE}`)}`, director.headers)).json().records[0];
      expect(jane.fields).toMatchObject({ EMAIL_ADDRESS_: JANE, FIRST_NAME: 'Jane', SSN: '123-45-6789' });
    });

    it('keeps no email or phone in clear anywhere in the data directory, while the oHash is there', async () => {
      if (kind !== 'sqlite') return;
      // Keep a connection open so the WAL is there too.
      await rt.storage.tenant(t.tenantId).transaction(async () => undefined);
      const files: string[] = [];
      const walk = (d: string) => {
        for (const e of readdirSync(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) walk(p);
          else files.push(p);
        }
      };
      walk(rt.env.dataDir);
      const all = Buffer.concat(files.map((f) => readFileSync(f)));
      for (const needle of [JANE, JANE.toLowerCase(), 'jane.doe', '555 010 1234', '5550101234', 'user4999@big.example', '123-45-6789']) {
        expect(all.includes(Buffer.from(needle)), needle).toBe(false);
      }
      expect(all.includes(Buffer.from(ohashes(JANE).sha256))).toBe(true);
    });
  });
});
