/** Table types of the key hierarchy, added to the control-plane and tenant schemas. */

export type RingMode = 'provider' | 'customer';
/**
 * `enabled` → usable; `disabled` / `pending_deletion` → every use fails
 * `key_disabled`; `destroyed` → its versions are gone, every use fails
 * `key_destroyed`. A deleted tenant's ring has no row at all.
 */
export type RingState = 'enabled' | 'disabled' | 'pending_deletion' | 'destroyed';

export interface KeyRingsTable {
  tenant_id: string;
  mode: RingMode;
  state: RingState;
  current_version: number;
  rotation_period_days: number;
  last_rotated_at: number;
  deletion_due_at: number | null;
  /** SPKI PEM of the RSA key customers wrap key material for import with. */
  import_public_key: string | null;
  /** PKCS#8 DER of its private half, sealed under the master wrapping key. */
  import_private_key: Buffer | null;
  import_expires_at: number | null;
  created_at: number;
  updated_at: number;
}

export type KekOrigin = 'generated' | 'imported';

export interface KeyVersionsTable {
  tenant_id: string;
  version: number;
  origin: KekOrigin;
  /** `active` for the current version, `retired` for older ones (kept to open older wraps, e.g. in backups). */
  state: 'active' | 'retired';
  /** The KEK sealed under the master wrapping key, bound to tenant and version. */
  wrapped_key: Buffer;
  created_at: number;
  retired_at: number | null;
}

export interface DataKeysTable {
  object_type: string;
  object_id: string;
  generation: number;
  /** `active` for the newest generation; `retired` ones still open older ciphertexts until re-encryption finishes. */
  state: 'active' | 'retired';
  kek_version: number;
  wrapped_dek: Buffer;
  wrapped_index_key: Buffer;
  created_at: number;
}

export interface TenantSecretsTable {
  id: string;
  purpose: string;
  name: string;
  ciphertext: Buffer;
  created_at: number;
  updated_at: number;
}

export interface KeyJobsTable {
  id: string;
  kind: 'reencrypt';
  state: 'running' | 'finished';
  /** JSON: the generation each protected object is being moved to. */
  targets: string;
  /** Which registered encrypted-data source the job is on, and where in it. */
  source_index: number;
  cursor: string | null;
  processed: number;
  total: number;
  started_at: number;
  updated_at: number;
  finished_at: number | null;
}

declare module '../storage/schema.js' {
  interface ControlDB {
    key_rings: KeyRingsTable;
    key_versions: KeyVersionsTable;
  }
  interface TenantDB {
    data_keys: DataKeysTable;
    tenant_secrets: TenantSecretsTable;
    key_jobs: KeyJobsTable;
  }
}
