import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { makeApp } from '../helpers/app.js';
import { apiUser, tenantWithAdmin } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

const JANE = 'jane.doe@example.com';
const JANE_PHONE = '+1 555 010 1234';

// Reads of personal data in clear are recorded, one event per request: an update's answer is the whole stored
// record, so it reads the personal data the request did not name.
describeEachStorage('records of reads: an update answers the stored record', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let t: { tenantId: string; name: string };
  let director: { headers: Record<string, string> };
  let marketer: { headers: Record<string, string> };
  let listId: string;
  let recordId: string;

  const api = (method: 'GET' | 'POST' | 'PATCH', url: string, headers: Record<string, string>, payload?: unknown) =>
    app.inject({ method, url: `/api/v1${url}`, headers, ...(payload === undefined ? {} : { payload: payload as object }) });
  const piiReads = async () => (await rt.audit.query(t.tenantId, { types: ['data.pii.read'], limit: 1000 })).events;

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock: new ManualClock(Date.now()) });
    app = await makeApp(rt);
    const tenant = await tenantWithAdmin(app, rt, 'readco');
    t = tenant;
    director = await apiUser(app, rt, tenant, tenant.admin.cookie, 'loader', ['data-director']);
    marketer = await apiUser(app, rt, tenant, tenant.admin.cookie, 'campaigns', ['marketer']);
    const list = await api('POST', '/lists', director.headers, { name: 'People', fields: [{ name: 'CITY', type: 'string', classification: 'plain' }] });
    expect(list.statusCode, list.body).toBe(201);
    listId = list.json().id;
    const created = await api('POST', `/lists/${listId}/records`, director.headers, { fields: { EMAIL_ADDRESS_: JANE, MOBILE_NUMBER_: JANE_PHONE, CITY: 'Paris' } });
    expect(created.statusCode, created.body).toBe(201);
    recordId = created.json().id;
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  it('an update by a principal with data.pii.view answers the stored email in clear and records one data.pii.read event', async () => {
    const before = (await piiReads()).length;
    const res = await api('PATCH', `/lists/${listId}/records/${recordId}`, director.headers, { fields: { CITY: 'Lyon' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().fields).toMatchObject({ EMAIL_ADDRESS_: JANE, MOBILE_NUMBER_: JANE_PHONE, CITY: 'Lyon' });
    const events = await piiReads();
    expect(events.length).toBe(before + 1);
    expect(events[0]).toMatchObject({ principal: { name: 'loader', type: 'api-user' }, details: { records: 1 }, resource: { type: 'list', id: listId } });
  });

  it('an update by a principal without data.pii.view answers masked values and records no read of personal data', async () => {
    const before = (await piiReads()).length;
    const res = await api('PATCH', `/lists/${listId}/records/${recordId}`, marketer.headers, { fields: { CITY: 'Nice' } });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().fields).toMatchObject({ EMAIL_ADDRESS_: 'j***@example.com', MOBILE_NUMBER_: '*******1234', CITY: 'Nice' });
    expect(res.body).not.toContain(JANE);
    expect((await piiReads()).length).toBe(before);
  });
});
