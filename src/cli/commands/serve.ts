import { Command } from 'commander';
import { createLogger } from '../../core/logger.js';
import type { RunningServer } from '../../http/server.js';
import { initDataDir, isInitialized } from '../../ops/init.js';
import { Maintenance } from '../../ops/maintenance.js';
import { openRuntime, type Runtime } from '../../runtime.js';
import { configFor } from '../context.js';
import { println } from '../output.js';
import { printCreatedTenant } from './tenant.js';
import { CustosError } from '../../core/errors.js';
import { operatorActor } from '../../core/principal.js';

function serverOptions(cmd: Command): Command {
  return cmd
    .option('--host <address>', 'address to bind')
    .option('--port <port>', 'port to listen on')
    .option('--cert <file>', 'PEM certificate to present')
    .option('--key <file>', 'private key of --cert')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent');
}

/** The HTTP stack is loaded only by the commands that serve. */
async function startServer(rt: Runtime): Promise<RunningServer> {
  const { startServer: start } = await import('../../http/server.js');
  return start(rt);
}

/**
 * Runs the scheduled work (delivery, checkpoints, rotation, retention) beside
 * the server and resolves when SIGTERM or SIGINT arrives and both have drained.
 */
function untilSignal(server: RunningServer, rt: Runtime): Promise<void> {
  const maintenance = new Maintenance(rt);
  rt.mail.onEnqueue((tenantId) => maintenance.poke(tenantId));
  rt.webhooks.onEnqueue((tenantId) => maintenance.poke(tenantId));
  maintenance.start();
  return new Promise((resolve, reject) => {
    const onSignal = (signal: NodeJS.Signals) => {
      rt.logger.info({ signal }, 'shutting down: finishing in-flight requests');
      maintenance
        .stop()
        .then(() => server.stop())
        .then(() => {
          rt.logger.info('stopped');
          resolve();
        }, reject);
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
}

/** `custos serve`: the HTTPS server, until SIGTERM or SIGINT. */
export function serveCommand(): Command {
  return serverOptions(new Command('serve').description('run the HTTPS server until SIGTERM or SIGINT')).action(async (_opts, cmd: Command) => {
    const loaded = configFor(cmd);
    if (!isInitialized(loaded.config)) throw new CustosError('invalid_configuration', `${loaded.config.dataDir} is not initialised; run custos init`);
    const rt = await openRuntime(loaded.config, { logger: createLogger(loaded.config.logLevel), migrateTenants: true });
    const server = await startServer(rt).catch(async (err: unknown) => {
      await rt.close();
      throw err;
    });
    rt.logger.info({ url: server.url }, 'listening');
    await untilSignal(server, rt);
  });
}

export const DEMO_TENANT = 'demo';

/**
 * `custos start` (what `npm start` runs): initialise the data directory if
 * needed, create tenant `demo` with its `admin` if missing, print how to sign
 * in, serve until interrupted.
 */
export function startCommand(): Command {
  return serverOptions(
    new Command('start').description(`first-run path: init if needed, create tenant "${DEMO_TENANT}" if missing, then serve`),
  ).action(async (_opts, cmd: Command) => {
    const loaded = configFor(cmd);
    const { config } = loaded;
    const firstInit = !isInitialized(config);
    if (firstInit) await initDataDir(loaded);
    const rt = await openRuntime(config, { logger: createLogger(config.logLevel), migrateTenants: true });
    let created;
    try {
      if (!(await rt.tenants.findUsable(DEMO_TENANT))) {
        created = await rt.tenants.create({ name: DEMO_TENANT, edition: 'enterprise', adminEmail: 'admin@demo.example' }, operatorActor());
      }
    } catch (err) {
      await rt.close();
      throw err;
    }
    const server = await startServer(rt).catch(async (err: unknown) => {
      await rt.close();
      throw err;
    });
    println('');
    println(`Custos is running at ${server.url}`);
    println(`Data directory: ${config.dataDir}${firstInit ? ' (initialised now)' : ''}`);
    println(`Storage: ${config.databaseUrl ? 'PostgreSQL' : 'SQLite'}; TLS certificate ${config.tlsCert}`);
    if (created) {
      println('');
      printCreatedTenant(created);
      println('');
      println(`Sign in with tenant "${DEMO_TENANT}", username "${created.admin.username}" and the temporary password above.`);
    } else {
      println(`Tenant "${DEMO_TENANT}" exists; its administrator's temporary password was printed when it was created.`);
    }
    println('Press Ctrl+C to stop.');
    println('');
    rt.logger.info({ url: server.url }, 'listening');
    await untilSignal(server, rt);
  });
}
