import type { AuditService } from '../audit/audit-service.js';
import { CustosError } from '../core/errors.js';
import type { Storage } from '../storage/storage.js';
import { authorize, type AuthContext } from './authorize.js';
import { checkSecuritySettings, ipAllowed, type SecuritySettings, type SecuritySettingsStore } from './security-settings.js';

/**
 * The settings as the activity stream records them. The stream removes values
 * under any key named like `password` (secrets); the password *rules* are no
 * secret, so they travel as `pwPolicy`.
 */
function forStream(s: SecuritySettings): Record<string, unknown> {
  const { password, ...rest } = s;
  return { ...rest, pwPolicy: { ...password } };
}

/**
 * Account administration of a tenant's security settings (`account.admin`):
 * read them, replace the whole document. A replacement is validated whole
 * (`checkSecuritySettings`), stored, and recorded as
 * `iam.settings.security.update` with before and after in the same
 * transaction.
 */
export class SecuritySettingsService {
  readonly #storage: Storage;
  readonly #audit: AuditService;
  readonly #settings: SecuritySettingsStore;

  constructor(deps: { storage: Storage; audit: AuditService; settings: SecuritySettingsStore }) {
    this.#storage = deps.storage;
    this.#audit = deps.audit;
    this.#settings = deps.settings;
  }

  async get(auth: AuthContext, tenantId: string): Promise<SecuritySettings> {
    authorize(auth, 'account.admin');
    return this.#storage.tenant(tenantId).transaction((db) => this.#settings.inTx(db));
  }

  /**
   * Replaces the settings. An IP allowlist that would shut out the address
   * the change comes from is refused: it would lock every administrator out,
   * and only the provider could undo it.
   */
  async put(auth: AuthContext, tenantId: string, input: unknown): Promise<SecuritySettings> {
    authorize(auth, 'account.admin');
    const checked = checkSecuritySettings(input);
    const ip = auth.source?.ip;
    if (ip !== undefined && !ipAllowed(ip, checked.ipAllowlist)) {
      throw new CustosError('validation_failed', `ipAllowlist must include the address this change comes from (${ip}), or you would lock yourself out`);
    }
    const after = await this.#storage.tenant(tenantId).transaction(async (db) => {
      const change = await this.#settings.put(db, tenantId, checked);
      await this.#audit.append(db, tenantId, {
        type: 'iam.settings.security.update',
        outcome: 'success',
        actor: auth,
        resource: { type: 'security-settings', id: tenantId },
        change: { before: forStream(change.before), after: forStream(change.after) },
      });
      return change.after;
    });
    // The store dropped its cache inside the transaction; drop it again in case a reader refilled it from the old state before the commit.
    this.#settings.invalidate(tenantId);
    return after;
  }
}
