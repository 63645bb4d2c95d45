import type { Clock } from '../core/clock.js';
import { rfc3339 } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { failpoint } from '../core/failpoint.js';
import { newId } from '../core/ids.js';
import { isProcessGone, processIdentity } from '../core/process-identity.js';
import { checkEdition, checkEmail, checkTenantName, type Edition } from '../core/validation.js';
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
  readonly #identity: string;

  constructor(deps: { storage: Storage; clock: Clock; keys: KeyService }) {
    this.#storage = deps.storage;
    this.#clock = deps.clock;
    this.#keys = deps.keys;
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

  async create(input: { name: unknown; edition: unknown; adminEmail: unknown }): Promise<CreatedTenant> {
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
      await this.#storage.tenant(id).transaction((db) => insertInitialAdmin(db, admin, now));
      failpoint('tenant-create:after-admin');
      const activated = await this.#storage.controlTransaction((db) =>
        db
          .updateTable('tenants')
          .set({ status: 'active', lifecycle_owner: null, updated_at: this.#clock.now() })
          .where('id', '=', id)
          .where('status', '=', 'provisioning')
          .executeTakeFirst(),
      );
      if (Number(activated.numUpdatedRows) !== 1) throw new CustosError('conflict', 'tenant creation was interrupted');
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

  async #setStatus(name: unknown, from: 'active' | 'suspended', to: 'active' | 'suspended'): Promise<TenantView> {
    const n = checkTenantName(name);
    const row = await this.#row(n);
    if (row.status === to) return this.#view(row);
    if (row.status !== from) throw new CustosError('conflict', `tenant ${n} is ${row.status}`);
    await this.#storage.controlTransaction((db) =>
      db.updateTable('tenants').set({ status: to, updated_at: this.#clock.now() }).where('id', '=', row.id).where('status', '=', from).execute(),
    );
    return this.#view(await this.#row(n));
  }

  /** Suspends a tenant: its users and API clients are refused (403 tenant_suspended) until it resumes. Idempotent. */
  suspend(name: unknown): Promise<TenantView> {
    return this.#setStatus(name, 'active', 'suspended');
  }

  resume(name: unknown): Promise<TenantView> {
    return this.#setStatus(name, 'suspended', 'active');
  }

  /** Deletes a tenant and its store. The name becomes free again. */
  async delete(name: unknown): Promise<{ id: string; name: string }> {
    const n = checkTenantName(name);
    const row = await this.#row(n);
    await this.#storage.controlTransaction((db) =>
      db
        .updateTable('tenants')
        .set({ status: 'deleting', lifecycle_owner: this.#identity, updated_at: this.#clock.now() })
        .where('id', '=', row.id)
        .execute(),
    );
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
      if (row.status === 'provisioning') {
        await this.#undoProvisioning(row.id);
        report.removed.push(row.name);
      } else {
        await this.#finishDeleting(row.id);
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
