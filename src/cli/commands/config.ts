import { Command } from 'commander';
import { describeConfig } from '../../core/config.js';
import { configFor } from '../context.js';
import { printJson, printTable } from '../output.js';

/** `custos config show`: the effective configuration, where each value came from, secrets masked. */
export function configCommand(): Command {
  const config = new Command('config').description('inspect the configuration');
  config
    .command('show')
    .description('print the effective configuration (flags > CUSTOS_* environment > custos.config.json > defaults), secrets masked')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }, cmd: Command) => {
      const rows = describeConfig(configFor(cmd));
      if (opts.json) {
        printJson(Object.fromEntries(rows.map((r) => [r.key, { value: r.value ?? null, source: r.source }])));
        return;
      }
      printTable(
        ['KEY', 'VALUE', 'SOURCE', 'ENVIRONMENT'],
        rows.map((r) => [r.key, r.value === undefined ? '(unset)' : Array.isArray(r.value) ? r.value.join(',') : JSON.stringify(r.value).replace(/^"|"$/g, ''), r.source, r.env]),
      );
    });
  return config;
}
