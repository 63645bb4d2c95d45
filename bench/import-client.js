// Import client for bench/records.bench.js, in its own process: sends N generated records to the merge
// API in batches of 10,000 (one request at a time, as `custos records import` does, or `inflight` at a time) and prints
// { records, seconds, rate }. Usage: node bench/import-client.js '<json {url, ca, token, listId, records, offset}>'
// With `suffix`, the records' FIRST_NAME and CITY carry it (a re-import that changes stored records), and every
// batch must answer that it updated each of its records.
import { readFileSync } from 'node:fs';
import { Pool } from 'undici';

const o = JSON.parse(process.argv[2]);
const url = new URL(o.url);
const pool = new Pool(url.origin, { connections: o.inflight ?? 1, connect: { ca: readFileSync(o.ca) } });
const BATCH = 10000;
const record = (i) => ({
  EMAIL_ADDRESS_: `person${i}@example.org`,
  MOBILE_NUMBER_: `+1 555 ${String(i).padStart(7, '0')}`,
  FIRST_NAME: `Name${i}${o.suffix ?? ''}`,
  CUSTOMER_ID_: `C${i}`,
  CITY: `${['Paris', 'Lyon', 'Nice', 'Lille'][i % 4]}${o.suffix ?? ''}`,
  SCORE: i % 1000,
});
// o.inflight (default 1, as `custos records import` does) requests at a time; the bench's batches never name
// the same record twice, so their order does not matter.
const inflight = o.inflight ?? 1;
async function send(from, to) {
  const records = [];
  for (let i = from; i < to; i++) records.push(record(i));
  const res = await pool.request({
    method: 'POST',
    path: `/api/v1/lists/${o.listId}/records/merge`,
    headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ matchKey: 'CUSTOMER_ID_', records }),
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`merge failed: ${res.statusCode} ${text.slice(0, 300)}`);
  if (o.suffix !== undefined) {
    const r = JSON.parse(text);
    if (r.updated !== to - from) throw new Error(`a re-import batch updated ${r.updated} of ${to - from} records: ${text.slice(0, 300)}`);
  }
}
const start = performance.now();
let next = o.offset;
const end = o.offset + o.records;
await Promise.all(
  Array.from({ length: inflight }, async () => {
    while (next < end) {
      const from = next;
      next = Math.min(next + BATCH, end);
      await send(from, next);
    }
  }),
);
const seconds = (performance.now() - start) / 1000;
await pool.close();
console.log(JSON.stringify({ records: o.records, seconds, rate: o.records / seconds }));
