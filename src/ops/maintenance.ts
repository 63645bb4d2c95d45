import { SYSTEM_ACTOR } from '../core/principal.js';
import type { Runtime } from '../runtime.js';

export interface MaintenanceReport {
  rotated: string[];
  destroyed: string[];
  checkpoints: number;
  purged: number;
  errors: Array<{ task: string; tenantId?: string; error: string }>;
}

const DELIVERY_INTERVAL_MS = 2_000;
const SWEEP_INTERVAL_MS = 60_000;
const MAINTENANCE_INTERVAL_MS = 3_600_000;
const PURGE_INTERVAL_MS = 86_400_000;

/**
 * Scheduled work of a Custos process. `runOnce` does the periodic duties —
 * scheduled key rotations and destructions, signed checkpoints of every
 * activity stream, and (when `purge`) retention — and `start` runs them on
 * timers inside the server together with mail and webhook delivery. Failures
 * of one tenant never stop the others; each is logged and reported.
 */
export class Maintenance {
  readonly #rt: Runtime;
  readonly #timers: NodeJS.Timeout[] = [];
  #running: Promise<unknown> = Promise.resolve();
  #stopped = false;
  #lastSweep = 0;
  readonly #poked = new Set<string>();

  constructor(rt: Runtime) {
    this.#rt = rt;
  }

  /** Marks a tenant as having fresh mail or webhook work, so the next delivery tick looks at it. */
  poke(tenantId: string): void {
    this.#poked.add(tenantId);
  }

  async runOnce(opts: { purge?: boolean } = {}): Promise<MaintenanceReport> {
    const rt = this.#rt;
    const report: MaintenanceReport = { rotated: [], destroyed: [], checkpoints: 0, purged: 0, errors: [] };
    const attempt = async (task: string, tenantId: string | undefined, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        report.errors.push({ task, tenantId, error: (err as Error).message });
        rt.logger.error({ err, task, tenantId }, 'maintenance task failed');
      }
    };

    for (const tenantId of await rt.keys.dueForRotation()) {
      await attempt('keys.rotate', tenantId, async () => {
        const r = await rt.keys.rotate(tenantId, {
          onControl: (db, version) => rt.audit.appendProvider(db, { type: 'keys.rotate', outcome: 'success', actor: SYSTEM_ACTOR, resource: { type: 'key-ring', id: tenantId }, details: { version, scheduled: true } }).then(() => undefined),
        });
        await rt.audit.record(tenantId, { type: 'keys.rotate', outcome: 'success', actor: SYSTEM_ACTOR, resource: { type: 'key-ring', id: tenantId }, details: { version: r.version, rewrapped: r.rewrapped, scheduled: true } });
        report.rotated.push(tenantId);
      });
    }
    for (const tenantId of await rt.keys.dueForDestruction()) {
      await attempt('keys.destroy', tenantId, async () => {
        await rt.audit.record(tenantId, { type: 'keys.destroy', outcome: 'success', actor: SYSTEM_ACTOR, resource: { type: 'key-ring', id: tenantId }, details: { scheduled: true } });
        await rt.keys.destroyRing(tenantId, { removeRing: false });
        await rt.audit.recordProvider({ type: 'keys.destroy', outcome: 'success', actor: SYSTEM_ACTOR, resource: { type: 'key-ring', id: tenantId }, details: { scheduled: true } });
        report.destroyed.push(tenantId);
      });
    }
    const tenants = await rt.tenants.list();
    for (const t of tenants) {
      await attempt('audit.checkpoint', t.id, async () => {
        if (await rt.audit.checkpoint(t.id)) report.checkpoints++;
      });
      if (opts.purge) {
        await attempt('audit.purge', t.id, async () => {
          report.purged += (await rt.audit.purge(t.id, { actor: SYSTEM_ACTOR })).purged;
        });
      }
    }
    await attempt('audit.checkpoint', undefined, async () => {
      if (await rt.audit.checkpoint(null)) report.checkpoints++;
    });
    if (opts.purge) {
      await attempt('audit.purge', undefined, async () => {
        report.purged += (await rt.audit.purge(null, { actor: SYSTEM_ACTOR })).purged;
      });
    }
    return report;
  }

  /** Sends due mail and webhook deliveries: poked tenants every tick, every tenant once a minute. */
  async deliver(): Promise<void> {
    const rt = this.#rt;
    const now = Date.now();
    let ids: string[];
    if (now - this.#lastSweep >= SWEEP_INTERVAL_MS) {
      this.#lastSweep = now;
      ids = (await rt.tenants.list()).map((t) => t.id);
    } else {
      ids = [...this.#poked];
    }
    this.#poked.clear();
    for (const id of ids) {
      try {
        await rt.mail.deliverDue(id);
        const w = await rt.webhooks.deliverDue(id);
        if (w.retrying > 0) this.#poked.add(id);
      } catch (err) {
        rt.logger.warn({ err, tenantId: id }, 'delivery pass failed');
      }
    }
  }

  #every(ms: number, fn: () => Promise<unknown>, runNow: boolean): void {
    const run = () => {
      if (this.#stopped) return;
      this.#running = this.#running.then(fn).catch((err: unknown) => this.#rt.logger.error({ err }, 'scheduled task failed'));
    };
    const timer = setInterval(run, ms);
    timer.unref();
    this.#timers.push(timer);
    if (runNow) run();
  }

  /** Starts the timers (inside `serve`). Tasks never overlap: they run one after another. */
  start(): void {
    this.#every(DELIVERY_INTERVAL_MS, () => this.deliver(), false);
    this.#every(MAINTENANCE_INTERVAL_MS, () => this.runOnce(), true);
    this.#every(PURGE_INTERVAL_MS, () => this.runOnce({ purge: true }), true);
  }

  /** Stops the timers and waits for the task in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    await this.#running;
  }
}
