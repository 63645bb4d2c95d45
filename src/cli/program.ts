import { Command } from 'commander';
import { VERSION } from '../version.js';
import { auditCommand } from './commands/audit.js';
import { configCommand } from './commands/config.js';
import { listsCommand, recordsCommand } from './commands/data.js';
import { initCommand } from './commands/init.js';
import { loginCommands } from './commands/login.js';
import { keysCommand } from './commands/keys.js';
import { mailCommand } from './commands/mail.js';
import { maintenanceCommand } from './commands/maintenance.js';
import { migrateCommand } from './commands/migrate.js';
import { serveCommand, startCommand } from './commands/serve.js';
import { tenantCommand } from './commands/tenant.js';

/** The `custos` command tree. Options given to the program apply to every command. */
export function buildProgram(): Command {
  const program = new Command('custos')
    .description('Custos: multi-tenant customer-data service with the shared-responsibility security model built in')
    .version(VERSION)
    .option('--data-dir <dir>', 'data directory (default ./.custos, or CUSTOS_DATA_DIR)')
    .option('--database-url <url>', 'postgres://… to use PostgreSQL instead of SQLite (or CUSTOS_DATABASE_URL)')
    .enablePositionalOptions(false);
  program.addCommand(initCommand());
  program.addCommand(serveCommand());
  program.addCommand(startCommand());
  program.addCommand(tenantCommand());
  program.addCommand(auditCommand());
  program.addCommand(keysCommand());
  program.addCommand(mailCommand());
  program.addCommand(maintenanceCommand());
  for (const c of loginCommands()) program.addCommand(c);
  program.addCommand(listsCommand());
  program.addCommand(recordsCommand());
  program.addCommand(configCommand());
  program.addCommand(migrateCommand());
  return program;
}
