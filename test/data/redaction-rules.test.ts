import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type { FieldDef } from '../../src/data/fields.js';
import { redact } from '../../src/data/redaction.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

// A principal without data.pii.view never receives a pii value in clear: not by declassifying the field itself,
// and not through a mask that shows what matters of the value.
describeEachStorage('redaction: no way around the mask', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let director: { headers: Record<string, string> };
  let marketer: { headers: Record<string, string> };
  let viewer: { headers: Record<string, string> };

  const api = (who: { headers: Record<string, string> }, method: 'GET' | 'POST' | 'PATCH', url: string, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers: who.headers, ...(payload === undefined ? {} : { payload: payload as object }) });

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock: new ManualClock(Date.now()) });
    app = await makeApp(rt);
    const t = await tenantWithAdmin(app, rt, 'maskco');
    director = await apiUser(app, rt, t, t.admin.cookie, 'loader', ['data-director']);
    marketer = await apiUser(app, rt, t, t.admin.cookie, 'campaigns', ['marketer']);
    viewer = await apiUser(app, rt, t, t.admin.cookie, 'reader', ['viewer']);
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  async function listWith(name: string, fields: unknown[], record: Record<string, unknown>): Promise<{ listId: string; recordId: string }> {
    const list = await api(director, 'POST', '/lists', { name, fields });
    expect(list.statusCode, list.body).toBe(201);
    const listId = list.json().id as string;
    const created = await api(director, 'POST', `/lists/${listId}/records`, { fields: record });
    expect(created.statusCode, created.body).toBe(201);
    return { listId, recordId: created.json().id as string };
  }

  it('a principal without data.pii.view cannot take a field out of pii (403), so its values stay masked; one with it can', async () => {
    const { listId, recordId } = await listWith('Declassify', [{ name: 'FULL_NAME', type: 'string', classification: 'pii' }], { CUSTOMER_ID_: 'c1', FULL_NAME: 'Alice Smith' });
    for (const to of ['plain', 'sensitive']) {
      expectProblem(await api(marketer, 'PATCH', `/lists/${listId}/schema`, { reclassify: [{ name: 'FULL_NAME', classification: to }] }), 403, 'forbidden');
    }
    const list = (await api(marketer, 'GET', `/lists/${listId}`)).json();
    expect(list.schemaVersion).toBe(1);
    const seen = await api(marketer, 'GET', `/lists/${listId}/records/${recordId}`);
    expect(seen.json().fields.FULL_NAME).toBe('A***');
    expect(seen.body).not.toContain('Alice Smith');
    // Into pii is always allowed (it hides more); out of it, for a principal that sees the values anyway.
    const back = await api(director, 'PATCH', `/lists/${listId}/schema`, { reclassify: [{ name: 'FULL_NAME', classification: 'plain' }] });
    expect(back.statusCode, back.body).toBe(200);
    expect((await api(marketer, 'GET', `/lists/${listId}/records/${recordId}`)).json().fields.FULL_NAME).toBe('Alice Smith');
    expect((await api(marketer, 'PATCH', `/lists/${listId}/schema`, { reclassify: [{ name: 'FULL_NAME', classification: 'pii' }] })).statusCode).toBe(200);
    expect((await api(marketer, 'GET', `/lists/${listId}/records/${recordId}`)).json().fields.FULL_NAME).toBe('A***');
  });

  it('pii fields other than text, email and phone are fully masked by default: a boolean, a number, a date show nothing of their value', async () => {
    const { listId, recordId } = await listWith(
      'Flags',
      [
        { name: 'AT_RISK', type: 'boolean', classification: 'pii' },
        { name: 'INCOME', type: 'number', classification: 'pii' },
        { name: 'BORN', type: 'date', classification: 'pii' },
        { name: 'NICK', type: 'string', classification: 'pii' },
      ],
      { CUSTOMER_ID_: 'c2', AT_RISK: true, INCOME: 48000, BORN: '1975-04-02', NICK: 'Ace' },
    );
    for (const who of [viewer, marketer]) {
      const res = await api(who, 'GET', `/lists/${listId}/records/${recordId}`);
      expect(res.json().fields).toMatchObject({ AT_RISK: '****', INCOME: '****', BORN: '****', NICK: 'A***' });
    }
    const csv = (await api(director, 'GET', `/lists/${listId}/export?format=csv`)).body;
    expect(csv).toContain('true');
    expect(JSON.stringify((await api(viewer, 'GET', `/lists/${listId}/records`)).json())).not.toMatch(/true|48000|1975/);
  });

  it('a boolean pii field cannot be given a partial mask (any character of true or false tells which)', async () => {
    const res = await api(director, 'POST', '/lists', { name: 'Bad mask', fields: [{ name: 'AT_RISK', type: 'boolean', classification: 'pii', mask: { kind: 'partial', keepFirst: 1, keepLast: 0 } }] });
    expectProblem(res, 400, 'validation_failed');
    expect(res.json().detail).toMatch(/AT_RISK: a boolean pii field can only be fully masked/);
  });
});

describe('redact', () => {
  it('masks a boolean pii value fully even under a partial mask stored by an older list', () => {
    const field: FieldDef = { name: 'AT_RISK', type: 'boolean', classification: 'pii', required: false, unique: false, indexed: false, mask: { kind: 'partial', keepFirst: 1, keepLast: 0 }, standard: false, computed: false };
    expect(redact(field, true)).toBe('****');
    expect(redact(field, false)).toBe('****');
    expect(redact({ ...field, type: 'string' }, 'Ace')).toBe('A***');
  });
});
