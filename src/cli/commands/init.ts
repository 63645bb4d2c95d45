import { Command } from 'commander';
import { initDataDir } from '../../ops/init.js';
import { openRuntime } from '../../runtime.js';
import { cliLogger, configFor } from '../context.js';
import { printJson, println } from '../output.js';

/** `custos init`: data directory, control store, TLS certificate, master key. Idempotent. */
export function initCommand(): Command {
  return new Command('init')
    .description('create the data directory, control store, a self-signed TLS certificate and the provider master key')
    .option('--cert <file>', 'use this PEM certificate instead of making a self-signed one')
    .option('--key <file>', 'private key of --cert')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const loaded = configFor(cmd);
      const report = await initDataDir(loaded);
      const rt = await openRuntime(loaded.config, { logger: cliLogger(), migrateTenants: true });
      await rt.close();
      if (opts.json) return printJson(report);
      println(`Data directory: ${report.dataDir}`);
      println(`Storage: ${loaded.config.databaseUrl ? `PostgreSQL, schema ${loaded.config.databaseSchema}` : 'SQLite files in the data directory'}`);
      for (const f of report.created) println(`created ${f}`);
      for (const f of report.kept) println(`kept    ${f}`);
    });
}
