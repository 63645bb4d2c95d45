import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresAdapter, sqliteAdapter } from '../../src/storage/adapter.js';
import { MultiRowUpdate, type MultiRowUpdateShape } from '../../src/storage/multi-row-update.js';
import type { TenantDB } from '../../src/storage/schema.js';
import { asOwner } from '../audit/helpers.js';
import { describeEachStorage, makeRuntime, TEST_OPERATOR, type TestRuntime } from '../helpers/storage-kinds.js';

const shape = (blob: string, big: string): MultiRowUpdateShape => ({
  table: 'mru_rows',
  scope: 'grp',
  key: 'id',
  columns: ['name', 'data', 'n'],
  types: { id: 'text', name: 'text', data: blob, n: big },
});

describe('MultiRowUpdate', () => {
  it('refuses sizes that do not decrease to 1, and columns without a SQL type', () => {
    expect(() => new MultiRowUpdate(shape('blob', 'integer'), [10, 5], sqliteAdapter)).toThrow(TypeError);
    expect(() => new MultiRowUpdate(shape('bytea', 'bigint'), [5, 10, 1], postgresAdapter)).toThrow(TypeError);
    expect(() => new MultiRowUpdate({ ...shape('bytea', 'bigint'), types: { id: 'text', name: 'text', data: 'bytea' } }, [10, 1], postgresAdapter)).toThrow(/column n/);
    expect(() => new MultiRowUpdate(shape('bytea', 'bigint'), [10, 2, 1], postgresAdapter)).not.toThrow();
  });
});

describeEachStorage('MultiRowUpdate on a real table', (kind) => {
  let rt: TestRuntime;
  let tenantId: string;
  let update: MultiRowUpdate;
  const row = (i: number) => ({ grp: i % 2, id: `r${String(i).padStart(4, '0')}`, name: `before-${i}`, data: Buffer.from([i & 0xff]), n: i });

  beforeAll(async () => {
    rt = await makeRuntime(kind);
    tenantId = (await rt.tenants.create({ name: `mru-${kind}-${process.pid}`, edition: 'standard', adminEmail: 'ops@example.com' }, TEST_OPERATOR)).id;
    const { blobType, bigintType } = rt.storage.adapter;
    update = new MultiRowUpdate(shape(blobType, bigintType), [200, 50, 10, 1], rt.storage.adapter);
    // A table of the tenant's own, made by its owner (the tenant's role may not change the schema).
    await asOwner(rt, tenantId, [`CREATE TABLE mru_rows (grp integer NOT NULL, id text NOT NULL, name text, data ${blobType}, n ${bigintType}, PRIMARY KEY (grp, id))`]);
    await rt.storage.tenant(tenantId).transaction(async (db) => {
      const d = db as unknown as Kysely<Record<string, Record<string, unknown>>>;
      for (let i = 0; i < 700; i += 100) await d.insertInto('mru_rows').values(Array.from({ length: 100 }, (_, k) => row(i + k))).execute();
    });
  });
  afterAll(async () => {
    await rt.storage.dropTenantStore(tenantId);
    await rt.close();
  });

  const read = (db: Kysely<TenantDB>) => sql<{ grp: number; id: string; name: string | null; data: Uint8Array | null; n: number | string | null }>`SELECT grp, id, name, data, n FROM mru_rows ORDER BY grp, id`.execute(db);

  it('sets each named row of the scope to its own values (on PostgreSQL in chunks of every size; on SQLite a statement each) and counts them', async () => {
    // 263 rows of group 1 (odd i): on PostgreSQL chunks of 200, 50, 10, 1, 1, 1. Text, bytes, big integers and nulls.
    const targets = Array.from({ length: 263 }, (_, k) => row(2 * k + 1));
    const values = targets.map((r, k) => [r.id, k % 7 === 0 ? null : `after-${r.n}`, k % 5 === 0 ? null : Buffer.from([0xfe, k & 0xff]), k % 3 === 0 ? null : 2 ** 40 + k]);
    const updated = await rt.storage.tenant(tenantId).transaction((db) => update.run(db, 1, values));
    expect(updated).toBe(263);
    const rows = (await rt.storage.tenant(tenantId).transaction(read)).rows;
    const byKey = new Map(rows.map((r) => [`${r.grp}/${r.id}`, r]));
    targets.forEach((t, k) => {
      const r = byKey.get(`1/${t.id}`)!;
      expect(r.name).toBe(k % 7 === 0 ? null : `after-${t.n}`);
      expect(r.data === null ? null : Buffer.from(r.data).toString('hex')).toBe(k % 5 === 0 ? null : Buffer.from([0xfe, k & 0xff]).toString('hex'));
      expect(r.n === null ? null : Number(r.n)).toBe(k % 3 === 0 ? null : 2 ** 40 + k);
    });
    // Rows of group 1 not named, and every row of group 0 (the same ids exist nowhere else here), are untouched.
    for (const r of rows) {
      const i = Number(r.id.slice(1));
      if (r.grp === 1 && i < 2 * 263) continue;
      expect(r.name).toBe(`before-${i}`);
      expect(Number(r.n)).toBe(i);
    }
  });

  it('only touches rows of its scope: a key of another scope updates nothing', async () => {
    // r0000 exists in group 0 only.
    const updated = await rt.storage.tenant(tenantId).transaction((db) => update.run(db, 1, [['r0000', 'moved', null, null]]));
    expect(updated).toBe(0);
    const r0 = (await rt.storage.tenant(tenantId).transaction(read)).rows.find((r) => r.id === 'r0000')!;
    expect(r0).toMatchObject({ grp: 0, name: 'before-0' });
  });

  it('refuses a key named twice and rows of the wrong width, writing nothing', async () => {
    const before = (await rt.storage.tenant(tenantId).transaction(read)).rows;
    await expect(rt.storage.tenant(tenantId).transaction((db) => update.run(db, 0, [['r0002', 'x', null, 1], ['r0002', 'y', null, 2]]))).rejects.toThrow(/twice/);
    await expect(rt.storage.tenant(tenantId).transaction((db) => update.run(db, 0, [['r0002', 'x', null]]))).rejects.toThrow(/4 values/);
    expect((await rt.storage.tenant(tenantId).transaction(read)).rows).toEqual(before);
  });
});
