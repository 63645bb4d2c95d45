import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/audit/canonical-json.js';
import { GENESIS_HASH, chainHash } from '../../src/audit/chain-hash.js';
import { prepareEvent } from '../../src/audit/event-builder.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';
import { ev, newTenant, storedBodies } from './helpers.js';

describe('chain hash', () => {
  it('is SHA-256 over u64be(seq) ‖ prev_hash ‖ body', () => {
    const body = Buffer.from('{"a":1}');
    const prev = Buffer.alloc(32, 7);
    const seq = Buffer.alloc(8);
    seq.writeBigUInt64BE(5n);
    const expected = createHash('sha256').update(seq).update(prev).update(body).digest();
    expect(chainHash(5, prev, body).equals(expected)).toBe(true);
    expect(chainHash(6, prev, body).equals(expected)).toBe(false);
    expect(GENESIS_HASH.equals(Buffer.alloc(32))).toBe(true);
  });

  it('canonicalises JSON per RFC 8785 (sorted keys, no whitespace, ES number form)', () => {
    expect(canonicalJson({ b: 1, a: [true, null, 'x'], c: { z: 1e21, y: 0.1 } })).toBe('{"a":[true,null,"x"],"b":1,"c":{"y":0.1,"z":1e+21}}');
    expect(() => canonicalJson({ x: Number.NaN })).toThrow(TypeError);
  });

  it('writes every shape of event exactly as the RFC 8785 library does', () => {
    const strings = ['plain', 'quote " and \\ backslash', 'ctl \u0000\u001f\t\n', 'é ü 中文 😀', '\u2028\u2029', '</script>', ''];
    const pick = <T,>(xs: readonly T[], i: number): T => xs[i % xs.length]!;
    let n = 0;
    for (let i = 0; i < 400; i++) {
      const s = (k: number) => pick(strings, i + k) || 'x';
      const tenant = i % 5 === 0 ? null : '01m83vfcrf2w60bbg20mt7t1f8';
      const input = {
        type: 'iam.user.update',
        outcome: (['success', 'failure', 'denied'] as const)[i % 3]!,
        ...(i % 3 === 1 ? { code: 'invalid_credentials' } : {}),
        actor: {
          principal: { type: (['user', 'api-user', 'operator', 'system'] as const)[i % 4]!, id: s(1), ...(i % 2 ? { name: s(2) } : {}) },
          ...(i % 4 ? { source: { ...(i % 3 ? { ip: '203.0.113.7' } : {}), ...(i % 5 ? { userAgent: s(3) } : {}), ...(i % 7 ? { sessionId: s(4) } : {}) } } : {}),
          ...(i % 6 ? { request: { id: s(5), method: 'POST', path: `/p/${s(6)}` } } : {}),
        },
        ...(i % 4 !== 3 ? { resource: { type: 'user', ...(i % 2 ? { id: s(7) } : {}), ...(i % 3 ? { name: s(8) } : {}) } } : {}),
        ...(i % 2 ? { details: { b: 1e21, a: [0.1, -0, 5, true, null, s(9)], nested: { z: s(10), y: { '\u00e9': 1, e: 2 } } } } : {}),
        ...(i % 3 ? { change: { before: { email: s(11), n: i }, after: { email: s(12), password: 'x', list: [1, 'two'] }, sensitive: i % 2 ? ['email'] : [] } } : {}),
      };
      const p = prepareEvent(tenant, input, Date.UTC(2026, 0, 1) + i, () => Buffer.alloc(32, 1));
      expect(p.bodyText).toBe(canonicalJson(p.event));
      expect(p.body.equals(Buffer.from(canonicalJson(JSON.parse(p.bodyText)), 'utf8'))).toBe(true);
      n++;
    }
    expect(n).toBe(400);
  });

  it('replaces lone surrogates in client-supplied text rather than failing the record', () => {
    const p = prepareEvent(null, { type: 'auth.login.failure', outcome: 'failure', code: 'invalid_credentials', actor: { principal: { type: 'user', id: 'u' }, source: { userAgent: 'bad \ud800 agent' } } }, 0, () => Buffer.alloc(32));
    expect(p.event.source!.userAgent).toBe('bad \ufffd agent');
    expect(p.bodyText).toBe(canonicalJson(p.event));
    expect(() => prepareEvent(null, { type: 'a.b', outcome: 'success', actor: { principal: { type: 'user', id: 'lone \udc00' } } }, 0, () => Buffer.alloc(32))).toThrow(/principal.id/);
  });
});

describeEachStorage('activity stream: chaining', (kind) => {
  let rt: TestRuntime;
  beforeAll(async () => {
    rt = await makeRuntime(kind);
  });
  afterAll(async () => rt.close());

  it('stores body, prev_hash and hash so that each event links to the one before', async () => {
    const tenant = await newTenant(rt);
    for (let i = 0; i < 5; i++) await rt.audit.record(tenant, ev('iam.user.update', { details: { i } }));
    const rows = await rt.storage.tenant(tenant).transaction((db) => db.selectFrom('audit_events').selectAll().orderBy('seq').execute());
    let prev = GENESIS_HASH;
    rows.forEach((r, i) => {
      expect(Number(r.seq)).toBe(i + 1);
      expect(Buffer.from(r.prev_hash).equals(prev)).toBe(true);
      expect(Buffer.from(r.hash).equals(chainHash(i + 1, prev, Buffer.from(r.body, 'utf8')))).toBe(true);
      expect(r.body).toBe(canonicalJson(JSON.parse(r.body)));
      prev = Buffer.from(r.hash);
    });
  });

  it('keeps the chain gap-free and valid under 200 concurrent record and append calls', async () => {
    const tenant = await newTenant(rt);
    const start = (await storedBodies(rt, tenant)).length;
    const calls = Array.from({ length: 200 }, (_, i) =>
      i % 2 === 0
        ? rt.audit.record(tenant, ev('auth.login.failure', { outcome: 'failure', code: 'invalid_credentials', details: { i } }))
        : rt.storage.tenant(tenant).transaction(async (db) => {
            const e = await rt.audit.append(db, tenant, ev('iam.user.update', { details: { i } }));
            // Hold the transaction open a moment so appenders really overlap (PostgreSQL runs them in parallel).
            await sql`SELECT 1`.execute(db);
            return e;
          }),
    );
    const events = await Promise.all(calls);
    const seqs = events.map((e) => e.seq).sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: 200 }, (_, i) => start + i + 1));
    const stored = await storedBodies(rt, tenant);
    expect(stored.map((r) => Number(r.seq))).toEqual(Array.from({ length: start + 200 }, (_, i) => i + 1));
    const report = await rt.audit.verify(tenant);
    expect(report).toMatchObject({ valid: true, events: start + 200, validEvents: start + 200, problems: [] });
  });

  it('makes a signed checkpoint in the appending transaction each time seq crosses a multiple of 1,000', async () => {
    const tenant = await newTenant(rt);
    const start = (await storedBodies(rt, tenant)).length;
    const target = 2100 - start;
    for (let done = 0; done < target; ) {
      const n = Math.min(300, target - done);
      await Promise.all(Array.from({ length: n }, () => rt.audit.record(tenant, ev('data.record.read'))));
      done += n;
    }
    const cps = await rt.storage.tenant(tenant).transaction((db) => db.selectFrom('audit_checkpoints').selectAll().where('kind', '=', 'checkpoint').orderBy('seq').execute());
    expect(cps).toHaveLength(2);
    expect(Number(cps[0]!.seq)).toBeGreaterThanOrEqual(1000);
    expect(Number(cps[0]!.seq)).toBeLessThan(1300);
    expect(Number(cps[1]!.seq)).toBeGreaterThanOrEqual(2000);
    // Each names its event's hash.
    for (const c of cps) {
      const row = await rt.storage.tenant(tenant).transaction((db) => db.selectFrom('audit_events').select('hash').where('seq', '=', Number(c.seq)).executeTakeFirstOrThrow());
      expect(Buffer.from(row.hash).equals(Buffer.from(c.hash))).toBe(true);
    }
    const report = await rt.audit.verify(tenant);
    expect(report).toMatchObject({ valid: true, checkpoints: { store: 2 } });
    // An hourly checkpoint adds one only when events were appended since the last.
    const made = await rt.audit.checkpoint(tenant);
    expect(made).toMatchObject({ kind: 'checkpoint', stream: tenant, seq: 2100 });
    expect(await rt.audit.checkpoint(tenant)).toBeUndefined();
  });
});
