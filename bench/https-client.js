// Load generator for the HTTP benchmarks, run in its own process (so its CPU is not the server's event loop):
// C keep-alive TLS connections, each sending one request at a time (no pipelining) for a fixed time.
// A minimal HTTP/1.1 client on tls.connect keeps the generator's own cost low: it writes prepared request bytes
// and reads each answer up to its Content-Length.
//
//   node bench/https-client.js '<json>'   with json = { url, ca (file), concurrency, warmupMs, durationMs,
//                                                    requests: [{ method, path, headers, body }] }
// Connection i sends requests[i % requests.length] over and over. Prints one JSON line:
//   { completed, seconds, rate, statuses: { "200": n, … }, errors }
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

const opts = JSON.parse(process.argv[2]);
const url = new URL(opts.url);
const ca = readFileSync(opts.ca);
const HEADER_END = Buffer.from('\r\n\r\n');

function requestBytes(r) {
  const body = r.body === undefined ? '' : JSON.stringify(r.body);
  const lines = [`${r.method ?? 'GET'} ${r.path} HTTP/1.1`, `Host: ${url.host}`, 'Connection: keep-alive'];
  if (body) lines.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`);
  for (const [k, v] of Object.entries(r.headers ?? {})) lines.push(`${k}: ${v}`);
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n${body}`);
}

let measuring = false;
let stopped = false;
let completed = 0;
let errors = 0;
const statuses = {};

function connection(bytes) {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: url.hostname, port: Number(url.port), ca });
    let buf = Buffer.alloc(0);
    let need = -1; // total bytes of the current answer, once its header is read
    const send = () => {
      if (stopped) {
        socket.end();
        resolve();
        return;
      }
      socket.write(bytes);
    };
    socket.on('secureConnect', send);
    socket.on('data', (chunk) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      for (;;) {
        if (need < 0) {
          const end = buf.indexOf(HEADER_END);
          if (end < 0) return;
          const head = buf.subarray(0, end).toString('latin1');
          const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
          if (!m) {
            errors++;
            socket.destroy();
            resolve();
            return;
          }
          need = end + 4 + Number(m[1]);
          const status = head.slice(9, 12);
          if (measuring) statuses[status] = (statuses[status] ?? 0) + 1;
        }
        if (buf.length < need) return;
        buf = buf.subarray(need);
        need = -1;
        if (measuring) completed++;
        send();
        if (buf.length === 0) return;
      }
    });
    socket.on('error', () => {
      errors++;
      resolve();
    });
  });
}

const prepared = opts.requests.map(requestBytes);
const conns = Array.from({ length: opts.concurrency }, (_, i) => connection(prepared[i % prepared.length]));
await new Promise((r) => setTimeout(r, opts.warmupMs));
measuring = true;
const start = performance.now();
await new Promise((r) => setTimeout(r, opts.durationMs));
measuring = false;
const seconds = (performance.now() - start) / 1000;
stopped = true;
await Promise.all(conns);
process.stdout.write(`${JSON.stringify({ completed, seconds, rate: completed / seconds, statuses, errors })}\n`);
