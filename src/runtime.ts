import { AuditService } from './audit/audit-service.js';
import type { Clock } from './core/clock.js';
import { systemClock } from './core/clock.js';
import type { Config } from './core/config.js';
import type { Logger } from './core/logger.js';
import type { EncryptedSource } from './crypto/encrypted-source.js';
import { KeyService } from './crypto/key-service.js';
import { readMasterKeyFile } from './crypto/master-key.js';
import { TenantSecrets } from './crypto/tenant-secrets.js';
import { AlertAdminService } from './alerts/alert-admin-service.js';
import { AlertService } from './alerts/alert-service.js';
import { ListService } from './data/list-service.js';
import { DataWorkers } from './data/data-workers.js';
import { RecordService } from './data/record-service.js';
import { AccountService } from './iam/account-service.js';
import { ClientCertificates } from './iam/client-certificates.js';
import { LoginService } from './iam/login-service.js';
import { Mfa } from './iam/mfa.js';
import { OrgService } from './iam/org-service.js';
import { RoleService } from './iam/role-service.js';
import { SecuritySettingsStore } from './iam/security-settings.js';
import { SessionService } from './iam/session-service.js';
import { SecuritySettingsService } from './iam/settings-service.js';
import { UserService } from './iam/user-service.js';
import { SamlService } from './iam/sso/saml-service.js';
import { SamlSettingsService } from './iam/sso/saml-settings.js';
import { MailService } from './notify/mail-service.js';
import { WebhookService } from './notify/webhook-service.js';
import { resolveMasterKey } from './ops/master-key.js';
import { TenantService } from './ops/tenant-service.js';
import { openStorage } from './storage/open.js';
import type { Storage } from './storage/storage.js';

/**
 * The composition root: configuration, storage and the services built on it.
 * The HTTP app and the CLI both work through one of these.
 */
export interface Runtime {
  readonly config: Config;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly storage: Storage;
  /** The provider master key: the root of every tenant key ring (changes when it is rotated). */
  readonly masterKey: Buffer;
  /** Switches the running process to a new master key after a committed rotation. */
  useMasterKey(key: Buffer): void;
  readonly tenants: TenantService;
  /** The activity streams (tenants' and the provider's): append, record, query, verify, purge. */
  readonly audit: AuditService;
  readonly keys: KeyService;
  readonly secrets: TenantSecrets;
  readonly mail: MailService;
  readonly webhooks: WebhookService;
  readonly alerts: AlertService;
  readonly securitySettings: SecuritySettingsStore;
  readonly sessions: SessionService;
  readonly mfa: Mfa;
  readonly login: LoginService;
  readonly users: UserService;
  readonly account: AccountService;
  readonly lists: ListService;
  readonly records: RecordService;
  /** Custom roles (and the read-only built-in ones). */
  readonly roles: RoleService;
  /** The organization tree. */
  readonly orgs: OrgService;
  /** Security settings as account administrators change them (authorized, recorded). */
  readonly securityAdmin: SecuritySettingsService;
  /** Alert rules and webhook endpoints as tenant administrators manage them (authorized, recorded). */
  readonly alertAdmin: AlertAdminService;
  /** API users' client certificates: registration and sign-in by certificate. */
  readonly clientCertificates: ClientCertificates;
  /** SAML 2.0 settings as account administrators change them (authorized, recorded), and as sign-in reads them. */
  readonly samlSettings: SamlSettingsService;
  /** SAML 2.0 single sign-on (service provider): AuthnRequests and the assertion consumer service. */
  readonly saml: SamlService;
  /** Every table that holds field ciphertexts, for re-encryption. */
  readonly encryptedSources: readonly EncryptedSource[];
  close(): Promise<void>;
}

export interface OpenRuntimeOptions {
  logger: Logger;
  clock?: Clock;
  /** Also bring every tenant store up to the current schema (serve, init, migrate). */
  migrateTenants?: boolean;
}

/**
 * Opens storage, applies control-plane migrations, finishes or undoes tenant
 * lifecycle work a crashed process left, and optionally migrates every tenant.
 */
export async function openRuntime(config: Config, opts: OpenRuntimeOptions): Promise<Runtime> {
  const clock = opts.clock ?? systemClock;
  let masterKey = await readMasterKeyFile(config.masterKeyFile);
  const storage = openStorage(config, clock, () => masterKey);
  try {
    await storage.migrateControl();
    masterKey = await resolveMasterKey(storage, config.masterKeyFile, masterKey, clock);
    const audit = await AuditService.open({ storage, clock, masterKey: () => masterKey, logger: opts.logger, config });
    const keys = new KeyService({ storage, clock, masterKey });
    const secrets = new TenantSecrets({ keys, clock });
    const encryptedSources: EncryptedSource[] = [TenantSecrets.source, RecordService.source(storage.adapter)];
    const mail = new MailService({ storage, clock, logger: opts.logger, smtpUrl: config.smtpUrl, mailFrom: config.mailFrom });
    const webhooks = new WebhookService({ storage, clock, secrets, logger: opts.logger });
    const alerts = new AlertService({ storage, clock, audit, mail, webhooks });
    const securitySettings = new SecuritySettingsStore({ storage, clock });
    const sessions = new SessionService({ storage, clock, settings: securitySettings });
    const mfa = new Mfa({ secrets, clock });
    const login = new LoginService({ storage, clock, audit, mail, settings: securitySettings, sessions, mfa, publicUrl: config.publicUrl });
    const users = new UserService({ storage, clock, audit, mail, sessions, login, mfa });
    const account = new AccountService({ storage, audit, mfa, sessions, login });
    const lists = new ListService({ storage, clock, keys, audit });
    const dataWorkers = new DataWorkers({ threads: config.dataThreads });
    const records = new RecordService({ storage, clock, keys, audit, lists, logger: opts.logger, workers: dataWorkers });
    const roles = new RoleService({ storage, clock, audit, settings: securitySettings });
    const orgs = new OrgService({ storage, clock, audit });
    const securityAdmin = new SecuritySettingsService({ storage, audit, settings: securitySettings });
    const alertAdmin = new AlertAdminService({ storage, audit, alerts, webhooks });
    const clientCertificates = new ClientCertificates({ storage, clock, audit, login });
    const samlSettings = new SamlSettingsService({ storage, clock, audit, publicUrl: config.publicUrl });
    const saml = new SamlService({ storage, clock, audit, login, settings: samlSettings, publicUrl: config.publicUrl });
    const tenants = new TenantService({ storage, clock, keys, audit });
    const recovered = await tenants.recover();
    if (recovered.removed.length > 0 || recovered.finishedDeleting.length > 0) {
      opts.logger.warn({ recovered }, 'finished tenant lifecycle work interrupted by a crash');
    }
    if (opts.migrateTenants) {
      const report = await tenants.migrateAll();
      if (report.applied > 0) opts.logger.info(report, 'migrated tenant stores');
    }
    return {
      config,
      clock,
      logger: opts.logger,
      storage,
      get masterKey() {
        return masterKey;
      },
      useMasterKey(key: Buffer) {
        masterKey = key;
        keys.useMasterKey(key);
      },
      tenants,
      audit,
      keys,
      secrets,
      mail,
      webhooks,
      alerts,
      securitySettings,
      sessions,
      mfa,
      login,
      users,
      account,
      lists,
      records,
      roles,
      orgs,
      securityAdmin,
      alertAdmin,
      clientCertificates,
      samlSettings,
      saml,
      encryptedSources,
      close: async () => {
        mail.close();
        await dataWorkers.close();
        await audit.close();
        await storage.close();
      },
    };
  } catch (err) {
    await storage.close().catch(() => undefined);
    throw err;
  }
}
