import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { failpoint } from '../core/failpoint.js';
import { newId } from '../core/ids.js';
import { isProcessGone, processIdentity } from '../core/process-identity.js';
import { checkEdition, checkEmail, checkTenantName, type Edition } from '../core/validation.js';
import type { AuditService } from '../audit/audit-service.js';
import type { Actor } from '../core/principal.js';
import { SYSTEM_ACTOR } from '../core/principal.js';
import type { KeyService } from '../crypto/key-service.js';
import { insertInitialAdmin, prepareInitialAdmin, type IssuedAdmin } from '../iam/initial-admin.js';
import type { TenantsTable } from '../storage/schema.js';
import type { Storage, TenantStoreLocation } from '../storage/storage.js';

/** A tenant as operators see it. No tenant data, no secrets. */
export interface TenantView {
  id: string;
  name: string;
  edition: Edition;
  status: 'active' | 'suspended';
  adminEmail: string;
  createdAt: string;
  updatedAt: string;
  store: TenantStoreLocation;
}

export interface CreatedTenant extends TenantView {
  admin: Omit<IssuedAdmin, 'temporaryPasswordExpiresAt'> & { temporaryPasswordExpiresAt: string };
}

export interface RecoveryReport {
  /** Half-created tenants whose store was removed. */
  removed: string[];
  /** Half-deleted tenants whose deletion was finished. */
  finishedDeleting: string[];
}

/** Lifecycle work from another host counts as abandoned after this long. */
const FOREIGN_LIFECYCLE_TIMEOUT_MS = 10 * 60 * 1000;

const UNIQUE_VIOLATION = /unique|duplicate key/i;

/**
 * Tenant (service instance) lifecycle: create, list, show, suspend, resume,
 * delete, and recovery of work a crash interrupted. Creation is a small state
 * machine: a `provisioning` row (never listed, never usable), then the store and
 * first administrator, then `active`. Deletion runs the other way through
 * `deleting`. {@link TenantService.recover} finishes or undoes what a killed
 * process left behind.
 */
export class TenantService {
  readonly #storage: Storage;
  readonly #clock: Clock;
  readonly #keys: KeyService;
  readonly #audit: AuditService;
  readonly #identity: string;

  constructor(deps: { storage: Storage; clock: Clock; keys: KeyService; audit: AuditService }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#keys = deps.keys;
    this.#audit = deps.audit;
    this.#identity = processIdentity();
  }

  #view(row: TenantsTable): TenantView {
    return {
      id: row.id,
      name: row.name,
      edition: row.edition as Edition,
      status: row.status as 'active' | 'suspended',
      adminEmail: row.admin_email,
      createdAt: rfc3339(row.created_at),
      updatedAt: rfc3339(row.updated_at),
      store: this.#storage.locateTenantStore(row.id),
    };
  }

  /**
   * Creates a tenant: its key ring, its store, its first Account Administrator
   * (with a temporary password returned once), recorded in the tenant's own
   * activity stream and in the provider's.
   */
  async create(input: { name: unknown; edition: unknown; adminEmail: unknown }, actor: Actor): Promise<CreatedTenant> {
    const name = checkTenantName(input.name);
    const edition = checkEdition(input.edition);
    const adminEmail = checkEmail(input.adminEmail);
    const now = this.#clock.now();
    const id = newId(now);
    const admin = await prepareInitialAdmin(adminEmail, now);

    await this.#storage.controlTransaction(async (db) => {
      const taken = await db.selectFrom('tenants').select('id').where('name', '=', name).executeTakeFirst();
      if (taken) throw new CustosError('tenant_exists', `tenant ${name} already exists`);
      try {
        await db
          .insertInto('tenants')
          .values({ id, name, edition, status: 'provisioning', admin_email: adminEmail, created_at: now, updated_at: now, lifecycle_owner: this.#identity })
          .execute();
        await this.#keys.createRing(db, id);
      } catch (err) {
        if (UNIQUE_VIOLATION.test((err as Error).message)) throw new CustosError('tenant_exists', `tenant ${name} already exists`);
        throw err;
      }
    });

    failpoint('tenant-create:after-row');
    try {
      await this.#storage.createTenantStore(id);
      failpoint('tenant-create:after-store');
      const resource = { type: 'tenant', id, name };
      await this.#storage.tenant(id).transaction(async (db) => {
        await this.#audit.append(db, id, { type: 'tenant.create', outcome: 'success', actor, resource, details: { edition } });
        await insertInitialAdmin(db, admin, now);
        await this.#audit.append(db, id, {
          type: 'iam.user.create',
          outcome: 'success',
          actor,
          resource: { type: 'user', id: admin.issued.id, name: admin.issued.username },
          change: { after: { username: admin.issued.username, email: adminEmail, kind: 'console', roles: ['account-administrator'], mustChangePassword: true }, sensitive: ['email'] },
        });
      });
      failpoint('tenant-create:after-admin');
      await this.#storage.controlTransaction(async (db) => {
        const activated = await db
          .updateTable('tenants')
          .set({ status: 'active', lifecycle_owner: null, updated_at: this.#clock.now() })
          .where('id', '=', id)
          .where('status', '=', 'provisioning')
          .executeTakeFirst();
        if (Number(activated.numUpdatedRows) !== 1) throw new CustosError('conflict', 'tenant creation was interrupted');
        await this.#audit.appendProvider(db, { type: 'tenant.create', outcome: 'success', actor, resource, details: { edition } });
      });
    } catch (err) {
      await this.#undoProvisioning(id).catch(() => undefined);
      throw err;
    }

    const row = await this.#row(name);
    return {
      ...this.#view(row),
      admin: { ...admin.issued, temporaryPasswordExpiresAt: rfc3339(admin.issued.temporaryPasswordExpiresAt) },
    };
  }

  async #undoProvisioning(id: string): Promise<void> {
    await this.#keys.destroyRing(id, { removeRing: true });
    await this.#storage.dropTenantStore(id);
    await this.#storage.controlTransaction((db) =>
      db.deleteFrom('tenants').where('id', '=', id).where('status', '=', 'provisioning').execute(),
    );
  }

  /** Tenants that exist for users: active or suspended, by name. */
  async list(): Promise<TenantView[]> {
    const rows = await this.#storage.control
      .selectFrom('tenants')
      .selectAll()
      .where('status', 'in', ['active', 'suspended'])
      .orderBy('name')
      .execute();
    return rows.map((r) => this.#view(r));
  }

  async #row(name: string): Promise<TenantsTable> {
    const row = await this.#storage.control
      .selectFrom('tenants')
      .selectAll()
      .where('name', '=', name)
      .where('status', 'in', ['active', 'suspended'])
      .executeTakeFirst();
    if (!row) throw new CustosError('tenant_not_found', `no tenant named ${name}`);
    return row;
  }

  async show(name: unknown): Promise<TenantView> {
    return this.#view(await this.#row(checkTenantName(name)));
  }

  /** The control-plane row of a tenant that users can reach, or undefined. Used by request binding. */
  async findUsable(name: string): Promise<TenantsTable | undefined> {
    return this.#storage.control
      .selectFrom('tenants')
      .selectAll()
      .where('name', '=', name)
      .where('status', 'in', ['active', 'suspended'])
      .executeTakeFirst();
  }

  async findUsableById(id: string): Promise<TenantsTable | undefined> {
    return this.#storage.control
      .selectFrom('tenants')
      .selectAll()
      .where('id', '=', id)
      .where('status', 'in', ['active', 'suspended'])
      .executeTakeFirst();
  }

  /**
   * Changes a tenant's status. The tenant's own stream records the operator's
   * action first — if the tenant cannot be told, nothing happens — then the
   * change commits together with the provider stream's event.
   */
  async #setStatus(name: unknown, from: 'active' | 'suspended', to: 'active' | 'suspended', actor: Actor): Promise<TenantView> {
    const n = checkTenantName(name);
    const row = await this.#row(n);
    if (row.status === to) return this.#view(row);
    if (row.status !== from) throw new CustosError('conflict', `tenant ${n} is ${row.status}`);
    const type = to === 'suspended' ? 'tenant.suspend' : 'tenant.resume';
    const resource = { type: 'tenant', id: row.id, name: row.name };
    const change = { before: { status: from }, after: { status: to } };
    await this.#audit.record(row.id, { type, outcome: 'success', actor, resource, change });
    try {
      await this.#storage.controlTransaction(async (db) => {
        await db.updateTable('tenants').set({ status: to, updated_at: this.#clock.now() }).where('id', '=', row.id).where('status', '=', from).execute();
        await this.#audit.appendProvider(db, { type, outcome: 'success', actor, resource, change });
      });
    } catch (err) {
      await this.#audit.record(row.id, { type, outcome: 'failure', code: 'internal_error', actor, resource, details: { note: 'the change announced by the previous event did not happen' } }).catch(() => undefined);
      throw err;
    }
    return this.#view(await this.#row(n));
  }

  /** Suspends a tenant: its users and API clients are refused (403 tenant_suspended) until it resumes. Idempotent. */
  suspend(name: unknown, actor: Actor): Promise<TenantView> {
    return this.#setStatus(name, 'active', 'suspended', actor);
  }

  resume(name: unknown, actor: Actor): Promise<TenantView> {
    return this.#setStatus(name, 'suspended', 'active', actor);
  }

  /**
   * Deletes a tenant: its key ring is destroyed first (crypto-shredding), then
   * its store. The name becomes free again. The provider stream keeps the
   * record; the tenant's own stream goes with its store.
   */
  async delete(name: unknown, actor: Actor): Promise<{ id: string; name: string }> {
    const n = checkTenantName(name);
    const row = await this.#row(n);
    await this.#storage.controlTransaction(async (db) => {
      await db
        .updateTable('tenants')
        .set({ status: 'deleting', lifecycle_owner: this.#identity, updated_at: this.#clock.now() })
        .where('id', '=', row.id)
        .execute();
      await this.#audit.appendProvider(db, { type: 'tenant.delete', outcome: 'success', actor, resource: { type: 'tenant', id: row.id, name: row.name }, details: { edition: row.edition } });
    });
    failpoint('tenant-delete:after-mark');
    await this.#finishDeleting(row.id);
    return { id: row.id, name: row.name };
  }

  /** Crypto-shreds first: once the ring is gone, no copy of the store can be decrypted, whatever happens next. */
  async #finishDeleting(id: string): Promise<void> {
    await this.#keys.destroyRing(id, { removeRing: true });
    failpoint('tenant-delete:after-shred');
    await this.#storage.dropTenantStore(id);
    await this.#storage.controlTransaction((db) => db.deleteFrom('tenants').where('id', '=', id).where('status', '=', 'deleting').execute());
  }

  /**
   * Finishes or undoes lifecycle work whose process died: a half-created tenant
   * is removed (its one-time password was never shown, so completing it would
   * give nobody access), a half-deleted tenant is deleted. Work of a live
   * process, or of another host within the timeout, is left alone.
   */
  async recover(): Promise<RecoveryReport> {
    const rows = await this.#storage.control
      .selectFrom('tenants')
      .selectAll()
      .where('status', 'in', ['provisioning', 'deleting'])
      .execute();
    const report: RecoveryReport = { removed: [], finishedDeleting: [] };
    for (const row of rows) {
      const gone = row.lifecycle_owner === null ? true : isProcessGone(row.lifecycle_owner);
      const abandoned = gone ?? this.#clock.now() - row.updated_at > FOREIGN_LIFECYCLE_TIMEOUT_MS;
      if (!abandoned) continue;
      const resource = { type: 'tenant', id: row.id, name: row.name };
      if (row.status === 'provisioning') {
        await this.#undoProvisioning(row.id);
        await this.#audit.recordProvider({ type: 'tenant.create', outcome: 'failure', code: 'conflict', actor: SYSTEM_ACTOR, resource, details: { recovery: 'removed a tenant whose creation was interrupted' } });
        report.removed.push(row.name);
      } else {
        await this.#finishDeleting(row.id);
        await this.#audit.recordProvider({ type: 'tenant.delete', outcome: 'success', actor: SYSTEM_ACTOR, resource, details: { recovery: 'finished a deletion that was interrupted' } });
        report.finishedDeleting.push(row.name);
      }
    }
    return report;
  }

  /** Applies pending migrations to every tenant store. Safe to interrupt and run again. */
  async migrateAll(concurrency = 4): Promise<{ tenants: number; applied: number }> {
    const rows = await this.#storage.control.selectFrom('tenants').select('id').where('status', 'in', ['active', 'suspended']).execute();
    let applied = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < rows.length) {
        const row = rows[next++]!;
        applied += (await this.#storage.migrateTenant(row.id)).applied.length;
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, rows.length) }, worker));
    return { tenants: rows.length, applied };
  }
}
