// Shared helpers for benchmarks: timing, machine description, result lines.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';

/** Runs `fn` repeatedly for about `ms` milliseconds (after a warm-up) and returns operations per second. */
export function opsPerSecond(fn, ms = 2000, batch = 1000) {
  const warmEnd = performance.now() + Math.min(300, ms / 4);
  while (performance.now() < warmEnd) for (let i = 0; i < batch; i++) fn();
  let ops = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < batch; i++) fn();
    ops += batch;
    now = performance.now();
  }
  return (ops * 1000) / (now - start);
}

/** Times an async workload that performs `ops` operations; returns operations per second. */
export async function timeAsync(ops, fn) {
  const start = performance.now();
  await fn();
  return (ops * 1000) / (performance.now() - start);
}

export function machine() {
  const c = cpus();
  return `${c.length} × ${c[0]?.model ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
}

export function fmt(n) {
  return Math.round(n).toLocaleString('en-US');
}

/** Prints one result line: workload, rate, baseline, ratio, and whether it meets the target ratio (if any). */
export function report(name, rate, baselineName, baseline, target) {
  const ratio = baseline ? rate / baseline : undefined;
  const verdict = target === undefined || ratio === undefined ? '' : ratio >= target ? `  (target ≥ ${Math.round(target * 100)} %: met)` : `  (target ≥ ${Math.round(target * 100)} %: NOT met)`;
  console.log(`${name}: ${fmt(rate)}/s${baseline ? ` | ${baselineName}: ${fmt(baseline)}/s | ratio ${(ratio * 100).toFixed(1)} %${verdict}` : ''}`);
  return ratio;
}

/**
 * The HTTP load generator's script: `wrk.js` (Debian's wrk, in C) when wrk is installed, else `load.js` (undici).
 * BENCH_LOADER=wrk|undici chooses. On two cores the generator's own CPU is taken from the server's, and load.js
 * needs several times wrk's CPU per request, so figures from the two are not comparable: results name theirs.
 */
export function loadGenerator() {
  const want = process.env.BENCH_LOADER;
  const hasWrk = spawnSync('wrk', ['--version'], { stdio: 'ignore' }).error === undefined;
  if (want === 'wrk' && !hasWrk) throw new Error('BENCH_LOADER=wrk but wrk is not installed (apt-get install wrk)');
  return want === 'undici' || (!want && !hasWrk) ? { script: 'load.js', name: 'undici (load.js)' } : { script: 'wrk.js', name: 'wrk' };
}

/**
 * CPU seconds (user + system) used so far by process `pid` and its live descendants (Linux /proc; USER_HZ 100).
 * Per request it is the steadier figure on a shared machine: throughput and latency move with what the
 * neighbours do, the CPU a request costs much less.
 */
export function treeCpuSeconds(pid) {
  const pids = [pid];
  for (let i = 0; i < pids.length; i++) {
    try {
      for (const task of readdirSync(`/proc/${pids[i]}/task`)) {
        const children = readFileSync(`/proc/${pids[i]}/task/${task}/children`, 'utf8').trim();
        if (children) pids.push(...children.split(/\s+/).map(Number));
      }
    } catch {
      // gone meanwhile
    }
  }
  let ticks = 0;
  for (const p of pids) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      // gone meanwhile
    }
  }
  return ticks / 100;
}
