import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { Command } from 'commander';
import { parse } from 'csv-parse';
import { CustosError } from '../../core/errors.js';
import { ApiClient, problemFrom } from '../api-client.js';
import { output, printJson, println, printTable } from '../output.js';
import { progressBar } from '../progress.js';

interface ListSummary {
  id: string;
  name: string;
  recordCount: number;
  orgId: string | null;
  fields: Array<{ name: string; type: string; classification: string; unique: boolean; indexed: boolean; standard: boolean }>;
}

/** Connection failures after which a batch is sent again: the request may or may not have reached the server. */
const RETRIED_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ETIMEDOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
/** Waits before the retries of a batch whose connection failed (then it gives up). */
export const IMPORT_RETRY_DELAYS_MS = [250, 1000, 4000];

/**
 * Sends an import batch, again when the connection fails before an answer
 * (reset, refused while the server restarts, timed out). Safe because a
 * merge by match key is idempotent: if the lost attempt was applied, the
 * retry finds the same records and writes the same values (they count as
 * updated, not inserted). HTTP answers, errors included, are never retried.
 */
async function sendBatch(c: ApiClient, path: string, body: unknown, onRetry: (code: string, attempt: number) => void): Promise<Awaited<ReturnType<ApiClient['send']>>> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await c.send('POST', path, body);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'string' || !RETRIED_ERRORS.has(code)) throw err;
      const delay = IMPORT_RETRY_DELAYS_MS[attempt];
      if (delay === undefined) throw new CustosError('service_unavailable', `the connection failed (${code}) ${attempt + 1} times`);
      onRetry(code, attempt + 1);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

async function withClient<T>(fn: (c: ApiClient) => Promise<T>): Promise<T> {
  const c = await ApiClient.fromProfile();
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

/** `custos lists …`: the signed-in user's lists (through the API, with the user's rights). */
export function listsCommand(): Command {
  const lists = new Command('lists').description('lists of the tenant you are logged in to (custos login)');
  lists
    .command('list')
    .description('lists you can reach')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const { lists: all } = await withClient((c) => c.json<{ lists: ListSummary[] }>('GET', '/lists'));
      if (opts.json) return printJson(all);
      if (all.length === 0) return println('No lists.');
      printTable(['NAME', 'RECORDS', 'FIELDS', 'ID'], all.map((l) => [l.name, String(l.recordCount), String(l.fields.length), l.id]));
    });
  lists
    .command('show')
    .description('a list and its schema')
    .argument('<list>', 'name or id')
    .option('--json', 'print JSON')
    .action(async (nameOrId: string, opts: { json?: boolean }) => {
      const l = await withClient(async (c) => c.json<ListSummary>('GET', `/lists/${await c.listId(nameOrId)}`));
      if (opts.json) return printJson(l);
      println(`${l.name} (${l.id}): ${l.recordCount} record(s)`);
      printTable(['FIELD', 'TYPE', 'CLASSIFICATION', 'UNIQUE', 'INDEXED'], l.fields.map((f) => [f.name, f.type, f.classification, f.unique ? 'yes' : '', f.indexed ? 'yes' : '']));
    });
  lists
    .command('create')
    .description('create a list (standard fields are added); --fields names a JSON file with an array of field definitions')
    .argument('<name>')
    .option('--fields <file>', 'JSON array of {name, type, classification, required?, unique?, indexed?, mask?}')
    .option('--description <text>')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { fields?: string; description?: string; json?: boolean }) => {
      let fields: unknown = [];
      if (opts.fields) {
        try {
          fields = JSON.parse(await readFile(opts.fields, 'utf8'));
        } catch {
          throw new CustosError('validation_failed', `${opts.fields} is not a JSON file`);
        }
      }
      const l = await withClient((c) => c.json<ListSummary>('POST', '/lists', { name, fields, ...(opts.description ? { description: opts.description } : {}) }));
      output(opts.json, l, () => `Created list ${l.name} (${l.id}).`);
    });
  return lists;
}

/** `custos records import|export`: bulk records through the API, with progress. */
export function recordsCommand(): Command {
  const records = new Command('records').description('import and export records of a list (custos login first)');
  records
    .command('import')
    .description('import a CSV file (header row = field names) by merging on a match key, in all-or-nothing batches')
    .argument('<file>', 'CSV file')
    .requiredOption('--list <list>', 'list name or id')
    .option('--match-key <field>', 'CUSTOMER_ID_, EMAIL_ADDRESS_, EMAIL_SHA256_HASH_ or EMAIL_MD5_HASH_', 'EMAIL_ADDRESS_')
    .option('--batch-size <n>', 'records per request (at most 10000)', '5000')
    .option('--json', 'print JSON')
    .action(async (file: string, opts: { list: string; matchKey: string; batchSize: string; json?: boolean }) => {
      const batchSize = Number(opts.batchSize);
      if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 10000) throw new CustosError('validation_failed', '--batch-size must be 1 to 10000');
      let size: number;
      try {
        size = statSync(file).size;
      } catch {
        throw new CustosError('validation_failed', `cannot read ${file}`);
      }
      const totals = { inserted: 0, updated: 0, skipped: 0, records: 0 };
      const bar = progressBar('importing');
      let bytes = 0;
      await withClient(async (c) => {
        const listId = await c.listId(opts.list);
        const input = createReadStream(file);
        input.on('data', (d) => {
          bytes += d.length;
          bar.update(bytes, size);
        });
        const parser = input.pipe(parse({ columns: true, skip_empty_lines: true, bom: true, info: true, relax_column_count: false }));
        let batch: Array<Record<string, string>> = [];
        let firstLine = 2;
        const flush = async () => {
          if (batch.length === 0) return;
          let res;
          try {
            res = await sendBatch(c, `/lists/${listId}/records/merge`, { matchKey: opts.matchKey, records: batch }, (code, attempt) => {
              process.stderr.write(`\nthe connection failed (${code}) while sending the batch starting at line ${firstLine}; sending it again (retry ${attempt} of ${IMPORT_RETRY_DELAYS_MS.length})\n`);
            });
          } catch (err) {
            bar.stop();
            const why = err instanceof CustosError ? err.message : `${(err as Error).name}: ${(err as Error).message}`;
            throw new CustosError('service_unavailable', `the batch starting at line ${firstLine} could not be sent (${why}); ${totals.records} record(s) before it were imported, and it may have been applied: run the import again from that line, or whole (merges are idempotent)`);
          }
          if (res.status !== 200) {
            const err = await problemFrom(res);
            const errors = (err.extensions?.errors ?? []) as Array<{ line: number; field?: string; reason: string }>;
            bar.stop();
            for (const e of errors) process.stderr.write(`line ${firstLine + e.line - 1}${e.field ? `: ${e.field}` : ''}: ${e.reason}\n`);
            throw new CustosError(err.code, `the batch starting at line ${firstLine} was rejected (${err.detail ?? err.message}); ${totals.records} record(s) before it were imported`);
          }
          const r = (await res.body.json()) as { inserted: number; updated: number; skipped: number };
          totals.inserted += r.inserted;
          totals.updated += r.updated;
          totals.skipped += r.skipped;
          totals.records += batch.length;
          batch = [];
        };
        try {
          for await (const row of parser as AsyncIterable<{ record: Record<string, string>; info: { lines: number } }>) {
            if (batch.length === 0) firstLine = row.info.lines;
            const rec: Record<string, string> = {};
            for (const [k, v] of Object.entries(row.record)) if (v !== '') rec[k] = v;
            batch.push(rec);
            if (batch.length >= batchSize) await flush();
          }
          await flush();
        } catch (err) {
          if (err instanceof CustosError) throw err;
          throw new CustosError('validation_failed', `${file}: ${(err as Error).message}`);
        } finally {
          bar.stop();
        }
      });
      output(opts.json, totals, () => `Imported ${totals.records} record(s): ${totals.inserted} inserted, ${totals.updated} updated, ${totals.skipped} skipped.`);
    });
  records
    .command('export')
    .description('export a list (streamed; with an API user there is no record limit)')
    .requiredOption('--list <list>', 'list name or id')
    .option('--format <format>', 'csv or jsonl', 'csv')
    .option('--out <file>', 'write to this file instead of standard output')
    .action(async (opts: { list: string; format: string; out?: string }) => {
      if (opts.format !== 'csv' && opts.format !== 'jsonl') throw new CustosError('validation_failed', '--format must be csv or jsonl');
      await withClient(async (c) => {
        const listId = await c.listId(opts.list);
        const res = await c.send('GET', `/lists/${listId}/export?format=${opts.format}`);
        if (res.status !== 200) throw await problemFrom(res);
        const total = Number(res.headers['x-record-count'] ?? 0);
        const bar = progressBar('exporting');
        let done = 0;
        const count = new Transform({
          transform(chunk: Buffer, _enc, cb) {
            for (const b of chunk) if (b === 0x0a) done++;
            bar.update(Math.min(done, total), total);
            cb(null, chunk);
          },
        });
        try {
          await pipeline(res.body, count, opts.out ? createWriteStream(opts.out, { mode: 0o600 }) : process.stdout);
        } finally {
          bar.stop();
        }
      });
    });
  return records;
}
