// Import client for bench/records.bench.js, in its own process: sends N generated records to the merge
// API in batches of 10,000 (one request at a time, as `custos records import` does) and prints
// { records, seconds, rate }. Usage: node bench/import-client.js '<json {url, ca, token, listId, records, offset}>'
import { readFileSync } from 'node:fs';
import { Pool } from 'undici';

const o = JSON.parse(process.argv[2]);
const url = new URL(o.url);
const pool = new Pool(url.origin, { connections: 1, connect: { ca: readFileSync(o.ca) } });
const BATCH = 10000;
const record = (i) => ({
  EMAIL_ADDRESS_: `person${i}@example.org`,
  MOBILE_NUMBER_: `+1 555 ${String(i).padStart(7, '0')}`,
  FIRST_NAME: `Name${i}`,
  CUSTOMER_ID_: `C${i}`,
  CITY: ['Paris', 'Lyon', 'Nice', 'Lille'][i % 4],
  SCORE: i % 1000,
});
const start = performance.now();
for (let b = o.offset; b < o.offset + o.records; b += BATCH) {
  const records = [];
  for (let i = b; i < Math.min(b + BATCH, o.offset + o.records); i++) records.push(record(i));
  const res = await pool.request({
    method: 'POST',
    path: `/api/v1/lists/${o.listId}/records/merge`,
    headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ matchKey: 'CUSTOMER_ID_', records }),
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`merge failed: ${res.statusCode} ${text.slice(0, 300)}`);
}
const seconds = (performance.now() - start) / 1000;
await pool.close();
console.log(JSON.stringify({ records: o.records, seconds, rate: o.records / seconds }));
