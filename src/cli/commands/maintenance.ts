import { Command } from 'commander';
import { Maintenance } from '../../ops/maintenance.js';
import { withRuntime } from '../context.js';
import { printJson, println } from '../output.js';

/**
 * `custos maintenance run`: the scheduled duties `serve` performs on its own
 * (key rotations and destructions that are due, signed checkpoints, and with
 * `--purge` activity-stream retention, plus one mail and webhook delivery
 * pass), for deployments that prefer to drive them from cron.
 */
export function maintenanceCommand(): Command {
  const m = new Command('maintenance').description('scheduled duties: key rotation and destruction, checkpoints, retention, delivery');
  m.command('run')
    .description('run the scheduled duties once')
    .option('--purge', 'also apply activity-stream retention')
    .option('--json', 'print JSON')
    .action(async (opts: { purge?: boolean; json?: boolean }, cmd: Command) => {
      const report = await withRuntime(cmd, async (rt) => {
        const maintenance = new Maintenance(rt);
        const r = await maintenance.runOnce({ purge: opts.purge ?? false });
        await maintenance.deliver();
        return r;
      });
      if (opts.json) printJson(report);
      else {
        println(`Rotated ${report.rotated.length} key ring(s), destroyed ${report.destroyed.length}, wrote ${report.checkpoints} checkpoint(s), purged ${report.purged} event(s).`);
        for (const e of report.errors) println(`error: ${e.task}${e.tenantId ? ` (${e.tenantId})` : ''}: ${e.error}`);
      }
      if (report.errors.length > 0) process.exitCode = 1;
    });
  return m;
}
