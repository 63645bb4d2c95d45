// Load generator for HTTP benchmarks, run in its own process so its CPU is not the server's event loop.
// undici Pool with C keep-alive TLS connections; C workers each keep one request in flight for a fixed time.
//
//   node bench/load.js '<json>'   with json = { url, ca (file), concurrency, warmupMs, durationMs,
//                                               requests: [{ method, path, headers, body }] }
// Worker i sends requests[i % requests.length] again and again. Prints one JSON line:
//   { completed, seconds, rate, p50Ms, p99Ms, maxMs, statuses: { "200": n, … }, errors }
import { readFileSync } from 'node:fs';
import { Pool } from 'undici';

const opts = JSON.parse(process.argv[2]);
const url = new URL(opts.url);
const pool = new Pool(url.origin, { connections: opts.concurrency, pipelining: 1, connect: { ca: readFileSync(opts.ca) } });
const latencies = [];
const statuses = {};
let errors = 0;
let measuring = false;
let stopped = false;

async function worker(r) {
  const body = r.body === undefined ? undefined : JSON.stringify(r.body);
  const headers = { ...(r.headers ?? {}), ...(body ? { 'content-type': 'application/json' } : {}) };
  while (!stopped) {
    const t0 = performance.now();
    try {
      const res = await pool.request({ method: r.method ?? 'GET', path: r.path, headers, body });
      await res.body.dump();
      if (measuring) {
        latencies.push(performance.now() - t0);
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
      }
    } catch {
      if (measuring) errors++;
    }
  }
}

const workers = Array.from({ length: opts.concurrency }, (_, i) => worker(opts.requests[i % opts.requests.length]));
await new Promise((r) => setTimeout(r, opts.warmupMs ?? 1000));
measuring = true;
const start = performance.now();
await new Promise((r) => setTimeout(r, opts.durationMs ?? 5000));
measuring = false;
const seconds = (performance.now() - start) / 1000;
stopped = true;
await Promise.all(workers);
await pool.close();
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0;
console.log(JSON.stringify({ completed: latencies.length, seconds, rate: latencies.length / seconds, p50Ms: q(0.5), p99Ms: q(0.99), maxMs: latencies.at(-1) ?? 0, statuses, errors }));
