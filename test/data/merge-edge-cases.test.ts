import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { ohashes } from '../../src/data/ohash.js';
import { parseCredential } from '../../src/iam/credentials.js';
import { keyOperations } from '../../src/ops/key-operations.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

const JANE = 'Jane.Doe+news@Example.com';

// Edge cases of merges and exports (issue #5): what a write keeps of a record's email and oHashes, match keys without a
// value, and exports while the tenant's customer-managed key is disabled.
describeEachStorage('merge and export edge cases', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  let t: { tenantId: string; name: string };
  let director: { headers: Record<string, string>; token: string };

  const api = (method: 'GET' | 'POST' | 'PATCH', url: string, headers: Record<string, string>, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  /** A new list of its own for each test (records of one test cannot collide with another's). */
  const newList = async (name: string) => {
    const res = await api('POST', '/lists', director.headers, {
      name: `${name} ${kind}`,
      fields: [
        { name: 'CITY', type: 'string', classification: 'plain' },
        { name: 'TIER', type: 'string', classification: 'plain' },
      ],
    });
    expect(res.statusCode, res.body).toBe(201);
    return res.json().id as string;
  };
  const merge = (listId: string, matchKey: string, records: unknown[], extra: object = {}) => api('POST', `/lists/${listId}/records/merge`, director.headers, { matchKey, records, ...extra });
  const fieldsOf = async (listId: string, id: string) => {
    const res = await api('GET', `/lists/${listId}/records/${id}`, director.headers);
    expect(res.statusCode, res.body).toBe(200);
    return res.json().fields as Record<string, unknown>;
  };
  const find = async (listId: string, field: string, value: string) =>
    ((await api('GET', `/lists/${listId}/records?filter=${encodeURIComponent(`${field}:${value}`)}`, director.headers)).json().records as Array<{ id: string }>).map((r) => r.id);
  const countOf = async (listId: string) => (await api('GET', `/lists/${listId}`, director.headers)).json().recordCount as number;

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    const tenant = await tenantWithAdmin(app, rt, 'edgeco');
    t = tenant;
    director = await apiUser(app, rt, tenant, tenant.admin.cookie, 'loader', ['data-director']);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  describe('replace by an oHash', () => {
    it('keeps the stored email and both oHashes (the email is not the caller’s to change by its hash), and clears the other fields', async () => {
      const l = await newList('Replace by oHash');
      const created = await merge(l, 'EMAIL_ADDRESS_', [{ EMAIL_ADDRESS_: JANE, CUSTOMER_ID_: 'C-1', CITY: 'Paris', TIER: 'gold' }]);
      expect(created.statusCode, created.body).toBe(200);
      const id = created.json().ids[0] as string;
      const { sha256, md5 } = ohashes(JANE);

      const bySha = await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, CITY: 'Lyon' }], { updateOnMatch: 'replace' });
      expect(bySha.statusCode, bySha.body).toBe(200);
      expect(bySha.json()).toMatchObject({ inserted: 0, updated: 1, ids: [id] });
      expect(await fieldsOf(l, id)).toMatchObject({ EMAIL_ADDRESS_: JANE, EMAIL_SHA256_HASH_: sha256, EMAIL_MD5_HASH_: md5, CITY: 'Lyon', TIER: null, CUSTOMER_ID_: null });

      const byMd5 = await merge(l, 'EMAIL_MD5_HASH_', [{ EMAIL_MD5_HASH_: md5.toUpperCase(), TIER: 'silver' }], { updateOnMatch: 'replace' });
      expect(byMd5.json()).toMatchObject({ inserted: 0, updated: 1, ids: [id] });
      expect(await fieldsOf(l, id)).toMatchObject({ EMAIL_ADDRESS_: JANE, EMAIL_SHA256_HASH_: sha256, EMAIL_MD5_HASH_: md5, CITY: null, TIER: 'silver' });

      // Still found by its email and by either oHash, and a merge by email still names it.
      expect(await find(l, 'EMAIL_ADDRESS_', JANE)).toEqual([id]);
      expect(await find(l, 'EMAIL_SHA256_HASH_', sha256)).toEqual([id]);
      expect(await find(l, 'EMAIL_MD5_HASH_', md5)).toEqual([id]);
      expect((await merge(l, 'EMAIL_ADDRESS_', [{ EMAIL_ADDRESS_: JANE.toLowerCase(), CITY: 'Nice' }])).json()).toMatchObject({ inserted: 0, updated: 1, ids: [id] });
      expect(await countOf(l)).toBe(1);
    });

    it('a record known only by its oHash keeps it through a replace by that oHash', async () => {
      const l = await newList('Replace oHash-only');
      const sha256 = ohashes('only-hash@x.example').sha256;
      const created = await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, CITY: 'Oslo', TIER: 'gold' }]);
      expect(created.json()).toMatchObject({ inserted: 1 });
      const id = created.json().ids[0] as string;
      const replaced = await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, CITY: 'Bergen' }], { updateOnMatch: 'replace' });
      expect(replaced.json()).toMatchObject({ inserted: 0, updated: 1, ids: [id] });
      expect(await fieldsOf(l, id)).toMatchObject({ EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: sha256, EMAIL_MD5_HASH_: null, CITY: 'Bergen', TIER: null });
      expect(await find(l, 'EMAIL_SHA256_HASH_', sha256)).toEqual([id]);
    });
  });

  describe('match keys without a value', () => {
    it('rejects every line whose match-key value is null or empty, with its line; nothing is written', async () => {
      const l = await newList('Null keys');
      // A stored record whose customer id is the text "null": a null key must not name it.
      const stored = await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: 'null', CITY: 'Stored' }]);
      expect(stored.statusCode, stored.body).toBe(200);
      const storedId = stored.json().ids[0] as string;

      const nulls = await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: null, CITY: 'A', EMAIL_ADDRESS_: 'a@null.example' }, { CUSTOMER_ID_: null, TIER: 'b', EMAIL_ADDRESS_: 'b@null.example' }]);
      expect(expectProblem(nulls, 400, 'validation_failed').errors).toEqual([
        { line: 1, field: 'CUSTOMER_ID_', reason: 'the match key is missing' },
        { line: 2, field: 'CUSTOMER_ID_', reason: 'the match key is missing' },
      ]);
      const mixed = await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: 'K-1', CITY: 'fine' }, { CUSTOMER_ID_: '', CITY: 'C' }, { CUSTOMER_ID_: '  ', CITY: 'D' }, { CITY: 'E' }]);
      expect(expectProblem(mixed, 400, 'validation_failed').errors).toEqual([
        { line: 2, field: 'CUSTOMER_ID_', reason: 'the match key is missing' },
        { line: 3, field: 'CUSTOMER_ID_', reason: 'the match key is missing' },
        { line: 4, field: 'CUSTOMER_ID_', reason: 'the match key is missing' },
      ]);
      const emails = await merge(l, 'EMAIL_ADDRESS_', [{ EMAIL_ADDRESS_: null, CITY: 'F' }, { EMAIL_ADDRESS_: null, CITY: 'G' }]);
      expect(expectProblem(emails, 400, 'validation_failed').errors).toEqual([
        { line: 1, field: 'EMAIL_ADDRESS_', reason: 'the match key is missing' },
        { line: 2, field: 'EMAIL_ADDRESS_', reason: 'the match key is missing' },
      ]);
      // Nothing was written: the stored record is as it was, and it is the only one.
      expect(await countOf(l)).toBe(1);
      expect(await fieldsOf(l, storedId)).toMatchObject({ CUSTOMER_ID_: 'null', CITY: 'Stored', TIER: null, EMAIL_ADDRESS_: null });
    });
  });

  describe('clearing the email', () => {
    it('an explicit null email clears both oHashes: the old email’s hash no longer names the record', async () => {
      const l = await newList('Clear email');
      const { sha256, md5 } = ohashes(JANE);
      const created = await api('POST', `/lists/${l}/records`, director.headers, { fields: { EMAIL_ADDRESS_: JANE, CUSTOMER_ID_: 'C-1', CITY: 'Paris' } });
      expect(created.statusCode, created.body).toBe(201);
      const id = created.json().id as string;

      const cleared = await api('PATCH', `/lists/${l}/records/${id}`, director.headers, { fields: { EMAIL_ADDRESS_: null } });
      expect(cleared.statusCode, cleared.body).toBe(200);
      expect(cleared.json().fields).toMatchObject({ EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: null, EMAIL_MD5_HASH_: null, CUSTOMER_ID_: 'C-1', CITY: 'Paris' });
      expect(await fieldsOf(l, id)).toMatchObject({ EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: null, EMAIL_MD5_HASH_: null });
      expect(await find(l, 'EMAIL_SHA256_HASH_', sha256)).toEqual([]);
      expect(await find(l, 'EMAIL_MD5_HASH_', md5)).toEqual([]);
      // A merge by the old email's oHash finds nothing and inserts a record of its own.
      const bySha = await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, CITY: 'Lyon' }]);
      expect(bySha.statusCode, bySha.body).toBe(200);
      expect(bySha.json()).toMatchObject({ inserted: 1, updated: 0 });
      expect(bySha.json().ids[0]).not.toBe(id);
      expect(await fieldsOf(l, id)).toMatchObject({ CITY: 'Paris', EMAIL_SHA256_HASH_: null });

      // The same through a merge by customer id.
      const other = 'other@x.example';
      const second = await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: 'C-2', EMAIL_ADDRESS_: other, CITY: 'Rome' }]);
      const secondId = second.json().ids[0] as string;
      expect(await fieldsOf(l, secondId)).toMatchObject({ EMAIL_SHA256_HASH_: ohashes(other).sha256 });
      expect((await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: 'C-2', EMAIL_ADDRESS_: null }])).json()).toMatchObject({ updated: 1, ids: [secondId] });
      expect(await fieldsOf(l, secondId)).toMatchObject({ EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: null, EMAIL_MD5_HASH_: null, CITY: 'Rome' });
      expect(await find(l, 'EMAIL_MD5_HASH_', ohashes(other).md5)).toEqual([]);
      const byMd5 = await merge(l, 'EMAIL_MD5_HASH_', [{ EMAIL_MD5_HASH_: ohashes(other).md5, CITY: 'Milan' }]);
      expect(byMd5.json()).toMatchObject({ inserted: 1, updated: 0 });
    });

    it('a record known only by its oHash keeps it through writes that do not touch the email', async () => {
      const l = await newList('oHash-only');
      const sha256 = ohashes('hash-only@x.example').sha256;
      const created = await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, CITY: 'Oslo' }]);
      const id = created.json().ids[0] as string;
      const patched = await api('PATCH', `/lists/${l}/records/${id}`, director.headers, { fields: { TIER: 'gold', CUSTOMER_ID_: 'H-1' } });
      expect(patched.statusCode, patched.body).toBe(200);
      expect(patched.json().fields).toMatchObject({ EMAIL_ADDRESS_: null, EMAIL_SHA256_HASH_: sha256, CITY: 'Oslo', TIER: 'gold' });
      expect((await merge(l, 'CUSTOMER_ID_', [{ CUSTOMER_ID_: 'H-1', CITY: 'Bergen' }])).json()).toMatchObject({ updated: 1, ids: [id] });
      expect(await fieldsOf(l, id)).toMatchObject({ EMAIL_SHA256_HASH_: sha256, CITY: 'Bergen', TIER: 'gold' });
      expect((await merge(l, 'EMAIL_SHA256_HASH_', [{ EMAIL_SHA256_HASH_: sha256, TIER: 'silver' }])).json()).toMatchObject({ inserted: 0, updated: 1, ids: [id] });
      expect(await find(l, 'EMAIL_SHA256_HASH_', sha256)).toEqual([id]);
    });
  });

  describe('exports while the customer-managed key is disabled', () => {
    it('answer 423 key_disabled before any byte of data, in both formats, and record no successful export; once enabled, the export works', async () => {
      const l = await newList('Export key');
      expect((await merge(l, 'EMAIL_ADDRESS_', [{ EMAIL_ADDRESS_: JANE, CITY: 'Paris' }, { EMAIL_ADDRESS_: 'second@x.example', CITY: 'Lyon' }])).statusCode).toBe(200);
      const exportEvents = async () => (await rt.audit.query(t.tenantId, { types: ['data.export'], limit: 100 })).events.filter((e) => (e.resource as { id?: string } | undefined)?.id === l);
      const params = await rt.keys.importParameters(t.tenantId);
      await keyOperations.importKeyMaterial(rt, t.tenantId, publicEncrypt({ key: params.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, randomBytes(32)), TEST_OPERATOR);
      await keyOperations.disable(rt, t.tenantId, TEST_OPERATOR);
      try {
        for (const format of ['csv', 'jsonl'] as const) {
          const res = await api('GET', `/lists/${l}/export?format=${format}`, director.headers);
          const body = expectProblem(res, 423, 'key_disabled');
          expect(res.body, format).not.toMatch(/EMAIL_ADDRESS_|Paris|Lyon/);
          expect(body, format).not.toHaveProperty('errors');
          expect(res.headers['x-record-count'], format).toBeUndefined();
        }
        // The service refuses before it hands out any line.
        const auth = await rt.sessions.authenticate(t.tenantId, parseCredential(director.token)!.secret, 'token', { ip: '127.0.0.1' });
        await expect(rt.records.export(auth, t.tenantId, l, 'csv', { via: 'token' })).rejects.toMatchObject({ code: 'key_disabled' });
        const refused = await exportEvents();
        expect(refused.filter((e) => e.outcome === 'success')).toEqual([]);
        expect(refused.map((e) => [e.outcome, e.code])).toEqual([
          ['denied', 'key_disabled'],
          ['denied', 'key_disabled'],
          ['denied', 'key_disabled'],
        ]);
      } finally {
        await keyOperations.enable(rt, t.tenantId, TEST_OPERATOR);
      }
      const csv = await api('GET', `/lists/${l}/export?format=csv`, director.headers);
      expect(csv.statusCode, csv.body).toBe(200);
      const lines = csv.body.trimEnd().split('\r\n');
      expect(lines[0]).toBe('EMAIL_ADDRESS_,MOBILE_NUMBER_,CUSTOMER_ID_,EMAIL_SHA256_HASH_,EMAIL_MD5_HASH_,CITY,TIER');
      expect(lines).toHaveLength(3);
      expect(csv.body).toContain(JANE);
      const jsonl = await api('GET', `/lists/${l}/export?format=jsonl`, director.headers);
      expect(jsonl.statusCode, jsonl.body).toBe(200);
      expect(jsonl.body.trimEnd().split('\n')).toHaveLength(2);
      const events = await exportEvents();
      expect(events.filter((e) => e.outcome === 'success').map((e) => e.details)).toEqual([
        expect.objectContaining({ records: 2, format: 'jsonl', piiClear: true }),
        expect.objectContaining({ records: 2, format: 'csv', piiClear: true }),
      ]);
    });

    it('a key disabled after the export began fails its first line: the CSV header does not leave before the first page is read', async () => {
      const l = await newList('Export key race');
      expect((await merge(l, 'EMAIL_ADDRESS_', [{ EMAIL_ADDRESS_: JANE, CITY: 'Paris' }])).statusCode).toBe(200);
      const auth = await rt.sessions.authenticate(t.tenantId, parseCredential(director.token)!.secret, 'token', { ip: '127.0.0.1' });
      const csv = (await rt.records.export(auth, t.tenantId, l, 'csv', { via: 'token' })).lines[Symbol.asyncIterator]();
      const jsonl = (await rt.records.export(auth, t.tenantId, l, 'jsonl', { via: 'token' })).lines[Symbol.asyncIterator]();
      await keyOperations.disable(rt, t.tenantId, TEST_OPERATOR);
      try {
        await expect(csv.next()).rejects.toMatchObject({ code: 'key_disabled' });
        await expect(jsonl.next()).rejects.toMatchObject({ code: 'key_disabled' });
      } finally {
        await keyOperations.enable(rt, t.tenantId, TEST_OPERATOR);
      }
      // An empty list's CSV export is its header alone.
      const empty = await newList('Export empty');
      const lines: string[] = [];
      for await (const chunk of (await rt.records.export(auth, t.tenantId, empty, 'csv', { via: 'token' })).lines) lines.push(chunk);
      expect(lines).toEqual(['EMAIL_ADDRESS_,MOBILE_NUMBER_,CUSTOMER_ID_,EMAIL_SHA256_HASH_,EMAIL_MD5_HASH_,CITY,TIER\r\n']);
    });
  });
});
