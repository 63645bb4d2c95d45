import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CSV_COLUMNS, csvField } from '../../src/audit/export-format.js';
import { ManualClock } from '../../src/core/clock.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';
import { alice, ev, newTenant } from './helpers.js';

/** A small RFC 4180 parser, to check the export round-trips (quotes, commas, line breaks inside fields). */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
      i++;
    } else field += c;
  }
  expect(field).toBe('');
  return rows;
}

async function collect(it: AsyncIterable<string>): Promise<string> {
  let out = '';
  for await (const chunk of it) out += chunk;
  return out;
}

describe('CSV fields', () => {
  it('quotes per RFC 4180 and defuses spreadsheet formulas', () => {
    expect(csvField('plain')).toBe('plain');
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField('two\nlines')).toBe('"two\nlines"');
    expect(csvField('=HYPERLINK("http://evil")')).toBe(`"'=HYPERLINK(""http://evil"")"`);
    expect(csvField('+1')).toBe("'+1");
    expect(csvField(undefined)).toBe('');
    expect(csvField(42)).toBe('42');
  });
});

describeEachStorage('activity stream: query and export', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  const T0 = Date.UTC(2026, 2, 1);
  const clock = new ManualClock(T0);
  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    tenant = await newTenant(rt);
    clock.set(T0 + 1000);
    await rt.audit.record(tenant, ev('auth.login.success'));
    clock.set(T0 + 2000);
    await rt.audit.record(tenant, ev('auth.login.failure', { outcome: 'failure', code: 'invalid_credentials', actor: { ...alice, source: { userAgent: '=cmd|calc' } } }));
    clock.set(T0 + 3000);
    await rt.audit.record(tenant, ev('iam.user.invite', { resource: { type: 'user', id: 'u9', name: 'Smith, "Jo"\nline2' }, details: { note: 'a,b' } }));
    clock.set(T0 + 4000);
    await rt.audit.record(tenant, ev('auth.logout'));
    // 2,500 more so exports span several pages.
    clock.set(T0 + 5000);
    for (let done = 0; done < 2500; done += 250) await Promise.all(Array.from({ length: 250 }, (_, i) => rt.audit.record(tenant, ev('data.record.read', { details: { n: done + i } }))));
  });
  afterAll(async () => rt.close());

  it('pages newest first with a cursor and filters by type glob, time and outcome', async () => {
    const p1 = await rt.audit.query(tenant, { types: ['auth.*'], limit: 2 });
    expect(p1.events.map((e) => e.type)).toEqual(['auth.logout', 'auth.login.failure']);
    expect(p1.nextCursor).toBeDefined();
    const p2 = await rt.audit.query(tenant, { types: ['auth.*'], limit: 2, cursor: p1.nextCursor! });
    expect(p2.events.map((e) => e.type)).toEqual(['auth.login.success']);
    expect(p2.nextCursor).toBeUndefined();

    expect((await rt.audit.query(tenant, { types: ['auth.login.*', 'iam.user.invite'], limit: 10 })).events.map((e) => e.type)).toEqual(['iam.user.invite', 'auth.login.failure', 'auth.login.success']);
    expect((await rt.audit.query(tenant, { types: ['*.failure'], limit: 10 })).events.map((e) => e.type)).toEqual(['auth.login.failure']);
    expect((await rt.audit.query(tenant, { outcome: 'failure', limit: 10 })).events).toHaveLength(1);
    const window = await rt.audit.query(tenant, { since: new Date(T0 + 2000).toISOString(), until: T0 + 4000, limit: 10 });
    expect(window.events.map((e) => e.type)).toEqual(['iam.user.invite', 'auth.login.failure']);
    // `_` in a pattern is a literal, not LIKE's wildcard.
    expect((await rt.audit.query(tenant, { types: ['auth_login*'], limit: 10 })).events).toEqual([]);
  });

  it.each([
    [{ limit: 0 }, /limit/],
    [{ limit: 5000 }, /limit/],
    [{ limit: 5, cursor: 'garbage' }, /cursor/],
    [{ limit: 5, since: 'yesterday' }, /since/],
    [{ limit: 5, types: ["x' OR 1=1 --"] }, /types/],
    [{ limit: 5, outcome: 'meh' }, /outcome/],
  ])('refuses a bad query %j', async (q, msg) => {
    await expect(rt.audit.query(tenant, q as never)).rejects.toMatchObject({ code: 'validation_failed', message: expect.stringMatching(msg) });
  });

  it('exports JSON Lines oldest first, each line the stored event plus seq, with --since and --type filters', async () => {
    const all = (await collect(rt.audit.export(tenant, {}, 'jsonl'))).trimEnd().split('\n');
    expect(all.length).toBeGreaterThanOrEqual(2504);
    const events = all.map((l) => JSON.parse(l) as { seq: number; type: string });
    expect(events.map((e) => e.seq)).toEqual([...events.map((e) => e.seq)].sort((a, b) => a - b));
    expect(new Set(events.map((e) => e.seq)).size).toBe(events.length);

    const auth = (await collect(rt.audit.export(tenant, { types: ['auth.*'], since: new Date(T0 + 2000).toISOString() }, 'jsonl'))).trimEnd().split('\n');
    expect(auth.map((l) => (JSON.parse(l) as { type: string }).type)).toEqual(['auth.login.failure', 'auth.logout']);
    const first = JSON.parse(auth[0]!) as Record<string, unknown>;
    expect(first).toMatchObject({ type: 'auth.login.failure', outcome: 'failure', code: 'invalid_credentials', tenant, time: new Date(T0 + 2000).toISOString() });
    expect(Object.keys(first)[0]).toBe('seq');
  });

  it('exports CSV with a header and correct quoting', async () => {
    const text = await collect(rt.audit.export(tenant, { types: ['auth.login.*', 'iam.*'] }, 'csv'));
    const rows = parseCsv(text);
    expect(rows[0]).toEqual([...CSV_COLUMNS]);
    const body = rows.slice(1).filter((r) => r[3] !== 'tenant.create' && !r[3]!.startsWith('keys.'));
    const col = (name: (typeof CSV_COLUMNS)[number]) => CSV_COLUMNS.indexOf(name);
    const byType = new Map(body.map((r) => [r[col('type')], r]));
    expect(byType.get('auth.login.failure')![col('source_user_agent')]).toBe("'=cmd|calc");
    expect(byType.get('auth.login.failure')![col('code')]).toBe('invalid_credentials');
    const create = byType.get('iam.user.invite')!;
    expect(create[col('resource_name')]).toBe('Smith, "Jo"\nline2');
    expect(JSON.parse(create[col('details')]!)).toEqual({ note: 'a,b' });
    expect(create[col('principal_name')]).toBe('alice');
    expect(create[col('time')]).toBe(new Date(T0 + 3000).toISOString());
    expect(rows.every((r) => r.length === CSV_COLUMNS.length)).toBe(true);
    // --since applies to CSV as well.
    const later = parseCsv(await collect(rt.audit.export(tenant, { since: T0 + 4000, types: ['auth.*'] }, 'csv')));
    expect(later.slice(1).map((r) => r[3])).toEqual(['auth.logout']);
  });

  it('streams page by page rather than loading the stream', async () => {
    let chunks = 0;
    for await (const chunk of rt.audit.export(tenant, {}, 'jsonl')) {
      chunks++;
      expect(chunk.split('\n').length - 1).toBeLessThanOrEqual(1000);
    }
    expect(chunks).toBeGreaterThanOrEqual(3);
  });
});
