import type { Kysely } from 'kysely';
import type { AuditEventInput } from '../audit/audit-types.js';
import { CustosError } from '../core/errors.js';
import type { Actor } from '../core/principal.js';
import { MAX_DELETION_DAYS, MIN_DELETION_DAYS } from '../crypto/key-service.js';
import { reencryptTenant, type ReencryptProgress, type ReencryptReport } from '../crypto/reencrypt.js';
import type { Runtime } from '../runtime.js';
import type { ControlDB } from '../storage/schema.js';
import { rotateMasterKey } from './master-key.js';

type Event = Omit<AuditEventInput, 'actor' | 'outcome'>;

/**
 * Runs a key operation so that the tenant sees it: the tenant's stream records
 * the action before it happens (if the tenant cannot be told, nothing happens),
 * an operator's action also lands in the provider stream in the same
 * control-plane transaction as the change, and a failure after the
 * announcement is recorded as such.
 */
async function announced<T>(rt: Runtime, tenantId: string, actor: Actor, event: Event, act: (onControl: (db: Kysely<ControlDB>, details?: Record<string, unknown>) => Promise<void>) => Promise<T>): Promise<T> {
  await rt.audit.record(tenantId, { ...event, outcome: 'success', actor });
  const onControl = async (db: Kysely<ControlDB>, details?: Record<string, unknown>) => {
    if (actor.principal.type === 'operator') {
      await rt.audit.appendProvider(db, { ...event, outcome: 'success', actor, details: { ...event.details, ...details, tenantId } });
    }
  };
  try {
    return await act(onControl);
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'internal_error';
    await rt.audit.record(tenantId, { ...event, outcome: 'failure', code, actor, details: { ...event.details, note: 'the action announced by the previous event failed' } }).catch(() => undefined);
    throw err;
  }
}

const ring = (tenantId: string) => ({ type: 'key-ring', id: tenantId });

/** Bad input is refused before anything is announced. */
function checkDays(days: number, min: number, max: number, message: string): Promise<never> | undefined {
  return Number.isInteger(days) && days >= min && days <= max ? undefined : Promise.reject(new CustosError('validation_failed', message));
}

/** Key operations with their activity events, shared by the CLI and the API. */
export const keyOperations = {
  rotate: (rt: Runtime, tenantId: string, actor: Actor) =>
    announced(rt, tenantId, actor, { type: 'keys.rotate', resource: ring(tenantId) }, (onControl) => rt.keys.rotate(tenantId, { onControl: (db, version) => onControl(db, { version }) })),

  importKeyMaterial: (rt: Runtime, tenantId: string, wrapped: Buffer, actor: Actor) =>
    announced(rt, tenantId, actor, { type: 'keys.import', resource: ring(tenantId) }, (onControl) => rt.keys.importKeyMaterial(tenantId, wrapped, { onControl: (db, version) => onControl(db, { version }) })),

  disable: (rt: Runtime, tenantId: string, actor: Actor) => announced(rt, tenantId, actor, { type: 'keys.disable', resource: ring(tenantId) }, (onControl) => rt.keys.disable(tenantId, onControl)),

  /**
   * Enabling rewraps the data keys still under an older version (key material
   * imported while the key was disabled); when it did, the tenant's stream
   * records how many, as after a scheduled rotation.
   */
  async enable(rt: Runtime, tenantId: string, actor: Actor): Promise<void> {
    const r = await announced(rt, tenantId, actor, { type: 'keys.enable', resource: ring(tenantId) }, (onControl) => rt.keys.enable(tenantId, onControl));
    if (r.rewrapped > 0) await rt.audit.record(tenantId, { type: 'keys.rewrap', outcome: 'success', actor, resource: ring(tenantId), details: { version: r.version, rewrapped: r.rewrapped, trigger: 'keys.enable' } });
  },

  scheduleDeletion: (rt: Runtime, tenantId: string, days: number, actor: Actor) =>
    checkDays(days, MIN_DELETION_DAYS, MAX_DELETION_DAYS, 'deletion must be scheduled 7 to 30 days ahead') ??
    announced(rt, tenantId, actor, { type: 'keys.deletion.schedule', resource: ring(tenantId), details: { days } }, (onControl) => rt.keys.scheduleDeletion(tenantId, days, onControl)),

  cancelDeletion: (rt: Runtime, tenantId: string, actor: Actor) =>
    announced(rt, tenantId, actor, { type: 'keys.deletion.cancel', resource: ring(tenantId) }, (onControl) => rt.keys.cancelDeletion(tenantId, onControl)),

  setRotationPeriod: (rt: Runtime, tenantId: string, days: number, actor: Actor) =>
    checkDays(days, 1, 3650, 'rotation period must be 1 to 3650 days') ??
    announced(rt, tenantId, actor, { type: 'keys.rotation.period', resource: ring(tenantId), details: { days } }, async (onControl) => {
      await rt.keys.setRotationPeriod(tenantId, days);
      await rt.storage.controlTransaction((db) => onControl(db));
    }),

  async reencrypt(rt: Runtime, tenantId: string, actor: Actor, opts: { batchSize?: number; onProgress?: (p: ReencryptProgress) => void } = {}): Promise<ReencryptReport> {
    const report = await announced(rt, tenantId, actor, { type: 'keys.reencrypt.start', resource: ring(tenantId) }, () =>
      reencryptTenant({ storage: rt.storage, keys: rt.keys, clock: rt.clock, sources: rt.encryptedSources }, tenantId, opts),
    );
    await rt.audit.record(tenantId, { type: 'keys.reencrypt.finish', outcome: 'success', actor, resource: ring(tenantId), details: { processed: report.processed, changed: report.changed, resumed: report.resumed } });
    return report;
  },

  /** Provider-only: rotates the master key; the provider stream and every tenant's stream record it. */
  async rotateMaster(rt: Runtime, actor: Actor): Promise<{ from: string; to: string; rewrapped: number }> {
    const tenants = await rt.tenants.list();
    for (const t of tenants) await rt.audit.record(t.id, { type: 'keys.master.rotate', outcome: 'success', actor, resource: { type: 'master-key' } });
    const res = await rotateMasterKey({ storage: rt.storage, keys: rt.keys, clock: rt.clock, masterKeyFile: rt.config.masterKeyFile }, (db, ids) =>
      rt.audit.appendProvider(db, { type: 'keys.master.rotate', outcome: 'success', actor, resource: { type: 'master-key', id: ids.to }, details: { from: ids.from, to: ids.to, rewrapped: ids.rewrapped } }).then(() => undefined),
    );
    rt.useMasterKey(res.next);
    return { from: res.from, to: res.to, rewrapped: res.rewrapped };
  },
};
