import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { newId } from '../../src/core/ids.js';
import { ObjectKeys } from '../../src/crypto/field-cipher.js';
import { renderExportPage, type ExportPage, type ExportShape } from '../../src/data/export-format.js';
import { DataWorkers } from '../../src/data/data-workers.js';
import { STANDARD_FIELDS, type FieldDef } from '../../src/data/fields.js';
import { ohashes } from '../../src/data/ohash.js';
import { LIST_OBJECT, decodeRecord, lookupKey, sealProtected } from '../../src/data/record-codec.js';

const material = (generation: number) => ({ generation, dek: randomBytes(32), indexKey: randomBytes(32) });
const gen1 = material(1);
const gen2 = material(2);
const keys = new ObjectKeys('tenant-a', LIST_OBJECT, 'list-a', gen2, [gen1, gen2]);
const field = (name: string, classification: FieldDef['classification'], mask: FieldDef['mask'] = null): FieldDef => ({ name, type: 'string', classification, required: false, unique: false, indexed: false, mask, standard: false, computed: false });
const defs: FieldDef[] = [...STANDARD_FIELDS, field('FIRST_NAME', 'pii', { kind: 'partial', keepFirst: 1, keepLast: 0 }), field('SSN', 'sensitive'), field('NOTE', 'plain')];

/** A page of records sealed as the record codec seals them, some under the older generation. */
function page(n: number, k: ObjectKeys = keys): ExportPage {
  const p: ExportPage = { ids: [], plain: [], protected: [], sha256: [], md5: [] };
  const notes = ['=HYPERLINK("http://evil")', 'a, "quoted"\nline', 'plain', '', 'naïve – ünïcode', '+44 20 7946 0958'];
  const old = new ObjectKeys('tenant-a', LIST_OBJECT, 'list-a', gen1, [gen1]);
  for (let i = 0; i < n; i++) {
    const id = newId();
    const email = `person${i}@example.org`;
    const prot = i % 5 === 4 ? {} : { EMAIL_ADDRESS_: email, MOBILE_NUMBER_: `+1 555 ${String(i).padStart(7, '0')}`, FIRST_NAME: `Name, "${i}"`, SSN: `123-45-${i}` };
    p.ids.push(id);
    p.plain.push(JSON.stringify({ CUSTOMER_ID_: `C${i}`, NOTE: notes[i % notes.length] }));
    // As the engines give it: upper-case hex from SQLite's hex(), lower-case from PostgreSQL's encode().
    const hex = sealProtected(i % 3 === 0 ? old : k, id, prot)?.toString('hex') ?? null;
    p.protected.push(i % 2 === 0 ? (hex?.toUpperCase() ?? null) : hex);
    p.sha256.push(i % 5 === 4 ? null : ohashes(email).sha256);
    p.md5.push(i % 5 === 4 ? null : ohashes(email).md5);
  }
  return p;
}

describe('data workers', () => {
  const threaded = new DataWorkers({ threads: 2 });
  const inline = new DataWorkers({ threads: 0 });
  afterAll(async () => {
    await threaded.close();
  });

  it('renders in worker threads exactly what it renders in this thread: CSV and JSON Lines, personal data clear and masked', async () => {
    const p = page(250);
    for (const shape of [
      { defs, clear: true, format: 'csv' },
      { defs, clear: false, format: 'csv' },
      { defs, clear: true, format: 'jsonl' },
      { defs, clear: false, format: 'jsonl' },
    ] satisfies ExportShape[]) {
      const here = await inline.render(keys, shape, p);
      expect(await threaded.render(keys, shape, p)).toBe(here);
      expect(here.split(shape.format === 'csv' ? '\r\n' : '\n')).toHaveLength(251);
    }
    const clear = await threaded.render(keys, { defs, clear: true, format: 'jsonl' }, p);
    const masked = await threaded.render(keys, { defs, clear: false, format: 'csv' }, p);
    const first = JSON.parse(clear.split('\n')[0]!);
    expect(first).toMatchObject({ id: p.ids[0], EMAIL_ADDRESS_: 'person0@example.org', FIRST_NAME: 'Name, "0"', SSN: '123-45-0', NOTE: '=HYPERLINK("http://evil")', EMAIL_SHA256_HASH_: ohashes('person0@example.org').sha256 });
    // Masked: no email, phone, name or oHash in clear; sensitive values stay visible; formulas neutralised, cells quoted.
    expect(masked).not.toMatch(/person\d+@|555 0|Name,|[0-9a-f]{32}/);
    expect(masked.split('\r\n')[0]).toBe(`p***@example.org,*******0000,C0,****,****,N***,123-45-0,"'=HYPERLINK(""http://evil"")"`);
    expect(masked.split('\r\n')[1]).toContain('"a, ""quoted""\nline"');
  });

  it('keeps the pages of concurrent renders apart and in their own order', async () => {
    const pages = Array.from({ length: 12 }, () => page(40));
    const out = await Promise.all(pages.map((p) => threaded.render(keys, { defs, clear: true, format: 'jsonl' }, p)));
    out.forEach((text, i) => expect(text.trimEnd().split('\n').map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(pages[i]!.ids));
  });

  it('fails a page with decryption_failed when the keys lack its generation, and for a ciphertext moved to another record', async () => {
    const p = page(10);
    const newerOnly = new ObjectKeys('tenant-a', LIST_OBJECT, 'list-a', gen2, [gen2]);
    await expect(threaded.render(newerOnly, { defs, clear: true, format: 'csv' }, p)).rejects.toMatchObject({ code: 'decryption_failed' });
    const moved = { ...p, protected: [p.protected[1]!, p.protected[0]!, ...p.protected.slice(2)] };
    await expect(threaded.render(keys, { defs, clear: true, format: 'csv' }, moved)).rejects.toMatchObject({ code: 'decryption_failed' });
    // Hex that is cut short or not hex at all does not open either.
    const cut = { ...p, protected: [p.protected[0]!.slice(0, -2), ...p.protected.slice(1)] };
    await expect(threaded.render(keys, { defs, clear: true, format: 'csv' }, cut)).rejects.toMatchObject({ code: 'decryption_failed' });
    const garbled = { ...p, protected: [`${p.protected[0]!.slice(0, 40)}zz${p.protected[0]!.slice(42)}`, ...p.protected.slice(1)] };
    await expect(threaded.render(keys, { defs, clear: true, format: 'csv' }, garbled)).rejects.toMatchObject({ code: 'decryption_failed' });
    const otherTenant = new ObjectKeys('tenant-b', LIST_OBJECT, 'list-a', gen2, [gen1, gen2]);
    await expect(threaded.render(otherTenant, { defs, clear: true, format: 'csv' }, p)).rejects.toMatchObject({ code: 'decryption_failed' });
    // The workers are still there for the next page.
    expect(await threaded.render(keys, { defs, clear: true, format: 'csv' }, p)).toBe(renderExportPage(keys, { defs, clear: true, format: 'csv' }, p));
  });

  it('fails a malformed page without the data in the error, and refuses work once closed', async () => {
    const bad = { ...page(3), plain: ['{not json', '{}', '{}'] };
    const err = await threaded.render(keys, { defs, clear: true, format: 'csv' }, bad).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/failed to render \(SyntaxError\)/);
    expect((err as Error).message).not.toMatch(/not json|person/);
    const closing = new DataWorkers({ threads: 1 });
    expect(await closing.render(keys, { defs, clear: true, format: 'csv' }, page(2))).toContain('person0@example.org');
    await closing.close();
    await expect(closing.render(keys, { defs, clear: true, format: 'csv' }, page(2))).rejects.toThrow(/closed/);
    await expect(closing.encode(keys, { fields: defs, listKey: 1, times: { created: 1, updated: 1 }, records: [] })).rejects.toThrow(/closed/);
    expect(() => new DataWorkers({ threads: -1 })).toThrow(TypeError);
  });

  it('encodes new records in worker threads as this thread does: same lookup keys, blind indexes and oHashes, sealed values that open to the same fields', async () => {
    const fields = defs.map((f) => (f.name === 'SSN' ? { ...f, indexed: true, unique: true } : f));
    const records = Array.from({ length: 1203 }, (_, i) => ({
      id: newId(),
      values: new Map<string, unknown>([
        ['EMAIL_ADDRESS_', `Person${i}@Example.org`],
        ['MOBILE_NUMBER_', `+1 555 ${String(i).padStart(7, '0')}`],
        ['CUSTOMER_ID_', `C${i}`],
        ['FIRST_NAME', `Name ${i}`],
        ['SSN', `123-45-${i}`],
        ['NOTE', i % 2 === 0 ? 'even' : 'odd'],
      ]),
      ...(i === 7 ? { presetHashes: { md5: 'ab'.repeat(16) } } : {}),
    }));
    // A record with no email keeps a preset oHash.
    records[7]!.values.delete('EMAIL_ADDRESS_');
    const job = { fields, listKey: 42, times: { created: 1000, updated: 2000 }, records };
    const there = await threaded.encode(keys, job);
    const here = await inline.encode(keys, job);
    expect(there).toHaveLength(records.length);
    for (let i = 0; i < records.length; i++) {
      const [a, b] = [there[i]!, here[i]!];
      expect(Buffer.isBuffer(a.row.protected) && Buffer.isBuffer(a.row.mobile_bi)).toBe(true);
      // Random nonces: the sealed values differ, everything else is the same.
      expect({ ...a.row, protected: null }).toEqual({ ...b.row, protected: null });
      expect(a.index).toEqual(b.index);
      expect(a.index.every((ix) => Buffer.isBuffer(ix.value))).toBe(true);
      expect(a.row.protected!.equals(b.row.protected!)).toBe(false);
      expect(decodeRecord(keys, fields, a.row)).toEqual(decodeRecord(keys, fields, b.row));
    }
    expect(there[0]!.row).toMatchObject({ list_key: 42, id: records[0]!.id, customer_id: 'C0', email_sha256: ohashes('person0@example.org').sha256, k_sha256: lookupKey(ohashes('person0@example.org').sha256), created_at: 1000, updated_at: 2000 });
    expect(there[7]!.row).toMatchObject({ email_sha256: null, email_md5: 'ab'.repeat(16), email_bi: null });
    expect(decodeRecord(keys, fields, there[1202]!.row).get('FIRST_NAME')).toBe('Name 1202');
    // Sealed for this record: another record's id does not open it.
    expect(() => decodeRecord(keys, fields, { ...there[0]!.row, id: records[1]!.id })).toThrow(expect.objectContaining({ code: 'decryption_failed' }));
  });

  it('fails an encode job whose values cannot be encoded without the values in the error', async () => {
    const bad = { id: newId(), values: new Map<string, unknown>([['FIRST_NAME', 'secret-name'], ['NOTE', 10n]]) };
    const err = await threaded.encode(keys, { fields: defs, listKey: 1, times: { created: 1, updated: 1 }, records: [bad] }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/records failed to encode \(TypeError\)/);
    expect((err as Error).message).not.toMatch(/secret-name/);
  });
});

