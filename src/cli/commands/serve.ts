import cluster from 'node:cluster';
import { failpoint } from '../../core/failpoint.js';
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
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .option('--workers <n>', 'server processes sharing the port (default 1)');
}

/**
 * The primary of a multi-process server: forks `workers` processes that run
 * `serve` on the shared port, restarts one that dies, and on SIGTERM or SIGINT
 * passes the signal on and waits for every worker to drain. Workers that
 * keep dying (more than `2 × workers`, at least 5, within a minute: a broken
 * data directory or database, say) stop the whole server with an error
 * rather than a restart loop.
 */
function runCluster(workers: number, rt: { logger: Runtime['logger'] }): Promise<'stopped' | 'crash-loop'> {
  return new Promise((resolve) => {
    let outcome: 'stopped' | 'crash-loop' = 'stopped';
    const deaths: number[] = [];
    const maxDeaths = Math.max(5, 2 * workers);
    let stopping = false;
    let announced = false;
    const listening = new Set<number>();
    // One worker runs the scheduled work; if it dies, its replacement takes that over.
    let scheduler: number | undefined;
    const fork = (scheduled: boolean) => {
      const w = cluster.fork({ CUSTOS_SCHEDULED_WORK: scheduled ? '1' : '0' });
      if (scheduled) scheduler = w.id;
      w.on('message', (m: { type?: string; url?: string }) => {
        if (m.type !== 'listening') return;
        listening.add(w.id);
        // Announced once every first-generation worker listens: then the port is shared by all of them.
        if (!announced && listening.size >= workers) {
          announced = true;
          rt.logger.info({ url: m.url, workers }, 'listening');
        }
      });
    };
    for (let i = 0; i < workers; i++) fork(i === 0);
    cluster.on('exit', (worker, code, signal) => {
      if (!stopping) {
        const now = Date.now();
        deaths.push(now);
        while (deaths.length > 0 && deaths[0]! < now - 60_000) deaths.shift();
        if (deaths.length > maxDeaths) {
          rt.logger.fatal({ deaths: deaths.length, code, signal }, 'server workers keep dying; stopping');
          outcome = 'crash-loop';
          stopping = true;
          for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
        } else {
          rt.logger.error({ worker: worker.id, code, signal }, 'server worker died; starting another');
          fork(worker.id === scheduler);
          return;
        }
      }
      if (Object.keys(cluster.workers ?? {}).length === 0) {
        rt.logger.info('stopped');
        resolve(outcome);
      }
    });
    const onSignal = (signal: NodeJS.Signals) => {
      stopping = true;
      rt.logger.info({ signal }, 'shutting down: workers finish in-flight requests');
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
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
function untilSignal(server: RunningServer, rt: Runtime, opts: { scheduled?: boolean } = {}): Promise<void> {
  const maintenance = new Maintenance(rt);
  rt.mail.onEnqueue((tenantId) => maintenance.poke(tenantId));
  rt.webhooks.onEnqueue((tenantId) => maintenance.poke(tenantId));
  if (opts.scheduled ?? true) maintenance.start();
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
    const logger = createLogger(loaded.config.logLevel);
    if (loaded.config.workers > 1 && cluster.isPrimary) {
      // Migrations and crash recovery run once, here; then the workers serve.
      await (await openRuntime(loaded.config, { logger, migrateTenants: true })).close();
      if ((await runCluster(loaded.config.workers, { logger })) === 'crash-loop') throw new CustosError('service_unavailable', 'server workers kept dying; see the log above');
      return;
    }
    const rt = await openRuntime(loaded.config, { logger, migrateTenants: !cluster.isWorker });
    if (cluster.isWorker) failpoint('serve:worker-start');
    const server = await startServer(rt).catch(async (err: unknown) => {
      await rt.close();
      throw err;
    });
    if (cluster.isWorker) process.send?.({ type: 'listening', url: server.url });
    else rt.logger.info({ url: server.url }, 'listening');
    // Scheduled work (delivery, rotation, checkpoints, retention) runs in one process only.
    await untilSignal(server, rt, { scheduled: !cluster.isWorker || process.env.CUSTOS_SCHEDULED_WORK === '1' });
    // A worker's channel to the primary would keep it alive: let go once drained.
    if (cluster.isWorker) cluster.worker?.disconnect();
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
      if (!config.smtpUrl) println(`Mail stays in the tenant's outbox (no SMTP set): the new-device code is shown by \`custos mail list --tenant ${DEMO_TENANT} --bodies\`.`);
    } else {
      println(`Tenant "${DEMO_TENANT}" exists; its administrator's temporary password was printed when it was created.`);
    }
    println('Press Ctrl+C to stop.');
    println('');
    rt.logger.info({ url: server.url }, 'listening');
    await untilSignal(server, rt);
  });
}
