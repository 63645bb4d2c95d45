#!/usr/bin/env node
// Runs every bench/*.bench.js (or those whose name contains the first argument), one after another.
// Each bench runs its workload and its baseline in the same process and prints the ratio.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const filter = process.argv[2] ?? '';
const benches = readdirSync(dir).filter((f) => f.endsWith('.bench.js') && f.includes(filter)).sort();
let failed = 0;
for (const file of benches) {
  console.log(`\n=== ${file} ===`);
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(dir, file), ...process.argv.slice(3)], { stdio: 'inherit' });
  if (r.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
