import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

// Schema changes are migrations of the list that never lose data: a request that names one field in two
// conflicting ways is refused as a whole, before anything is rewritten.
describeEachStorage('list schema changes: conflicting entries', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let director: { headers: Record<string, string> };

  const api = (method: 'GET' | 'POST' | 'PATCH', url: string, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers: director.headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock: new ManualClock(Date.now()) });
    app = await makeApp(rt);
    const t = await tenantWithAdmin(app, rt, 'schemaco');
    director = await apiUser(app, rt, t, t.admin.cookie, 'loader', ['data-director']);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  async function listWithNotes(name: string): Promise<string> {
    const created = await api('POST', '/lists', { name, fields: [{ name: 'NOTE', type: 'string', classification: 'plain', indexed: true }] });
    expect(created.statusCode, created.body).toBe(201);
    const id = created.json().id as string;
    const merged = await api('POST', `/lists/${id}/records/merge`, { matchKey: 'CUSTOMER_ID_', records: [{ CUSTOMER_ID_: 'a', NOTE: 'n1' }, { CUSTOMER_ID_: 'b', NOTE: 'n2' }] });
    expect(merged.statusCode, merged.body).toBe(200);
    return id;
  }

  async function unchanged(id: string): Promise<void> {
    const list = (await api('GET', `/lists/${id}`)).json();
    expect(list.schemaVersion).toBe(1);
    expect(list.fields.find((f: { name: string }) => f.name === 'NOTE').classification).toBe('plain');
    const notes = (await api('GET', `/lists/${id}/records`)).json().records.map((r: { fields: Record<string, unknown> }) => r.fields.NOTE);
    expect(notes.sort()).toEqual(['n1', 'n2']);
    const found = (await api('GET', `/lists/${id}/records?filter=NOTE:n2`)).json().records;
    expect(found.map((r: { fields: Record<string, unknown> }) => r.fields.CUSTOMER_ID_)).toEqual(['b']);
  }

  it('a field reclassified twice in one request is refused, and no value is lost', async () => {
    const id = await listWithNotes('Twice');
    const res = await api('PATCH', `/lists/${id}/schema`, { reclassify: [{ name: 'NOTE', classification: 'pii' }, { name: 'NOTE', classification: 'plain' }] });
    expectProblem(res, 400, 'validation_failed');
    expect(res.json().detail).toMatch(/NOTE is reclassified twice/);
    await unchanged(id);
  });

  it('a field both reclassified and dropped in one request is refused, and no value is lost', async () => {
    const id = await listWithNotes('Both');
    const res = await api('PATCH', `/lists/${id}/schema`, { reclassify: [{ name: 'NOTE', classification: 'sensitive' }], drop: ['NOTE'] });
    expectProblem(res, 400, 'validation_failed');
    await unchanged(id);
  });

  it('one reclassification per field still moves every value (and its index) both ways', async () => {
    const id = await listWithNotes('Once');
    expect((await api('PATCH', `/lists/${id}/schema`, { reclassify: [{ name: 'NOTE', classification: 'pii' }] })).statusCode).toBe(200);
    const back = await api('PATCH', `/lists/${id}/schema`, { reclassify: [{ name: 'NOTE', classification: 'plain' }] });
    expect(back.statusCode, back.body).toBe(200);
    expect(back.json().schemaVersion).toBe(3);
    const notes = (await api('GET', `/lists/${id}/records`)).json().records.map((r: { fields: Record<string, unknown> }) => r.fields.NOTE);
    expect(notes.sort()).toEqual(['n1', 'n2']);
    const found = (await api('GET', `/lists/${id}/records?filter=NOTE:n2`)).json().records;
    expect(found.map((r: { fields: Record<string, unknown> }) => r.fields.CUSTOMER_ID_)).toEqual(['b']);
  });
});
