import type { ObjectKeys } from '../crypto/field-cipher.js';
import type { FieldDef } from './fields.js';
import { decodeFields, type StoredValues } from './record-codec.js';
import { redact } from './redaction.js';

export type ExportFormat = 'csv' | 'jsonl';

/** A page of stored rows as an export reads them, column by column (the form that crosses to a worker thread cheaply). */
export interface ExportPage {
  ids: string[];
  plain: string[];
  /** The sealed values as hex text (either case), null when the record has none. */
  protected: Array<string | null>;
  sha256: Array<string | null>;
  md5: Array<string | null>;
}

/** What a page of export lines is rendered from: the fields in order, whether `pii` is in clear, and the format. */
export interface ExportShape {
  defs: readonly FieldDef[];
  clear: boolean;
  format: ExportFormat;
}

/** One CSV cell: quoted when needed, spreadsheet formulas neutralised. */
export function csvCell(v: unknown): string {
  if (v === null || v === undefined) return '';
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  // Quote when needed; neutralise spreadsheet formulas (CSV injection). Numbers and phone
  // numbers (+44 20 …, -3.5) cannot carry a formula and stay as they are, so exports re-import.
  const safe = /^[=+\-@\t\r]/.test(s) && !/^[+-]?[0-9 ().-]+$/.test(s) ? `'${s}` : s;
  return /[",\r\n]/.test(safe) || safe !== s ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** The header line of a CSV export. */
export function csvHeader(fields: readonly string[]): string {
  return `${fields.map(csvCell).join(',')}\r\n`;
}

/**
 * Decrypts a page of rows and renders its export lines: `pii` masked unless
 * `clear`, CSV cells neutralised, one JSON object per line for JSON Lines.
 * Throws `decryption_failed` as decryption does (the caller retries once
 * with fresh keys). The same function runs in this thread or in an export
 * worker thread.
 */
export function renderExportPage(keys: ObjectKeys, shape: ExportShape, page: ExportPage): string {
  const { defs, clear, format } = shape;
  let out = '';
  const row: { -readonly [K in keyof StoredValues]: StoredValues[K] } = { id: '', plain: '', protected: null, email_sha256: null, email_md5: null };
  for (let i = 0; i < page.ids.length; i++) {
    row.id = page.ids[i]!;
    row.plain = page.plain[i]!;
    const sealed = page.protected[i];
    row.protected = sealed ? Buffer.from(sealed, 'hex') : null;
    row.email_sha256 = page.sha256[i] ?? null;
    row.email_md5 = page.md5[i] ?? null;
    const values = decodeFields(keys, defs, row);
    if (!clear) for (let j = 0; j < defs.length; j++) values[j] = redact(defs[j]!, values[j]);
    if (format === 'csv') {
      let line = csvCell(values[0]);
      for (let j = 1; j < values.length; j++) line += `,${csvCell(values[j])}`;
      out += `${line}\r\n`;
    } else {
      const obj: Record<string, unknown> = { id: row.id };
      for (let j = 0; j < defs.length; j++) obj[defs[j]!.name] = values[j];
      out += `${JSON.stringify(obj)}\n`;
    }
  }
  return out;
}
