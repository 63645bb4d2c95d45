import { Command } from 'commander';
import { runtimeFor } from '../context.js';
import { printJson, println } from '../output.js';

/** `custos migrate`: bring the control plane and every tenant store to the current schema. Resumable. */
export function migrateCommand(): Command {
  return new Command('migrate')
    .description('apply pending schema migrations to the control plane and every tenant (safe to interrupt and rerun)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const rt = await runtimeFor(cmd);
      try {
        const report = await rt.tenants.migrateAll();
        if (opts.json) printJson(report);
        else println(`Migrated ${report.tenants} tenant store(s); ${report.applied} migration(s) applied.`);
      } finally {
        await rt.close();
      }
    });
}
