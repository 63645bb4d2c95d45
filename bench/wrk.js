// Load generator for HTTP benchmarks on wrk (Debian's `wrk`, written in C): the same interface and output as
// load.js, at a fraction of its CPU. On these 2-core machines the load generator shares the cores with the server,
// so a generator that needs most of a core for itself (load.js, on undici) caps what any server can show.
//
//   node bench/wrk.js '<json>'   with json = { url, concurrency, warmupMs, durationMs, threads?,
//                                              requests: [{ method, path, headers, body }] }
// Requests are sent round-robin over the list. Prints one JSON line:
//   { completed, seconds, rate, p50Ms, p99Ms, maxMs, statuses: { "2xx": n, "other": n }, errors }
// wrk does not verify the server's certificate (loopback only); its latencies are per request, closed loop.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const opts = JSON.parse(process.argv[2]);
const lua = (s) => JSON.stringify(s); // a JSON string is a valid Lua string literal for the characters used here
const requests = opts.requests
  .map((r) => {
    const body = r.body === undefined ? undefined : JSON.stringify(r.body);
    const headers = { ...(r.headers ?? {}), ...(body ? { 'content-type': 'application/json' } : {}) };
    const h = Object.entries(headers)
      .map(([k, v]) => `[${lua(k)}] = ${lua(String(v))}`)
      .join(', ');
    return `wrk.format(${lua(r.method ?? 'GET')}, ${lua(r.path)}, { ${h} }${body ? `, ${lua(body)}` : ''})`;
  })
  .join(',\n  ');
const script = `
local reqs = nil
local i = 0
function init(args)
  reqs = {
  ${requests}
  }
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"completed":%d,"us":%d,"p50":%d,"p99":%d,"max":%d,"non2xx":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
`;
const dir = mkdtempSync(path.join(tmpdir(), 'custos-wrk-'));
const file = path.join(dir, 'requests.lua');
writeFileSync(file, script);
const threads = String(opts.threads ?? 1);
const conns = String(opts.concurrency);
const url = new URL(opts.url).origin;
try {
  // Warm-up: connections, TLS sessions, the server's JIT; its figures are dropped.
  if ((opts.warmupMs ?? 1000) > 0) {
    spawnSync('wrk', ['-t', threads, '-c', conns, '-d', `${Math.max(1, Math.round((opts.warmupMs ?? 1000) / 1000))}s`, '-s', file, url], { stdio: 'ignore' });
  }
  const out = execFileSync('wrk', ['-t', threads, '-c', conns, '-d', `${Math.round((opts.durationMs ?? 5000) / 1000)}s`, '--timeout', '10s', '-s', file, url], { encoding: 'utf8' });
  const line = out.trim().split('\n').find((l) => l.startsWith('{"completed"'));
  if (!line) throw new Error(`wrk printed no summary:\n${out}`);
  const r = JSON.parse(line);
  const seconds = r.us / 1e6;
  console.log(
    JSON.stringify({
      completed: r.completed,
      seconds,
      rate: r.completed / seconds,
      p50Ms: r.p50 / 1000,
      p99Ms: r.p99 / 1000,
      maxMs: r.max / 1000,
      statuses: { '2xx': r.completed - r.non2xx, other: r.non2xx },
      errors: r.errors,
      generator: 'wrk',
    }),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
