import type { ColumnType } from 'kysely';

/** A column the database fills when an insert leaves it out (a default, or NULL). */
export type Defaulted<T> = ColumnType<T, T | undefined, T>;

/**
 * Table types of the control plane and of a tenant store, as Kysely sees them.
 * Conventions that hold in both engines: times are integers (milliseconds since
 * the epoch), flags are integers 0/1, JSON is text, binary is a Buffer.
 */

export type TenantStatus = 'provisioning' | 'active' | 'suspended' | 'deleting';

export interface TenantsTable {
  id: string;
  name: string;
  edition: string;
  status: TenantStatus;
  admin_email: string;
  created_at: number;
  updated_at: number;
  /** Who is provisioning or deleting the tenant: `host:pid`, checked by crash recovery. */
  lifecycle_owner: string | null;
}

export interface ProviderSettingsTable {
  key: string;
  value: string;
  updated_at: number;
}

export interface ControlDB {
  tenants: TenantsTable;
  provider_settings: ProviderSettingsTable;
}

export type UserKind = 'console' | 'api';
export type UserStatus = 'active' | 'suspended';

export interface UsersTable {
  id: string;
  username: string;
  email: string;
  kind: UserKind;
  status: UserStatus;
  password_hash: string | null;
  /** 1 while the password is a temporary one that must be changed at next login. */
  must_change_password: number;
  /** When a temporary password stops working; null for a chosen password. */
  password_expires_at: number | null;
  created_at: number;
  updated_at: number;
  failed_attempts: Defaulted<number>;
  /** Locked until this time; `LOCKED_UNTIL_ADMIN` means until an administrator unlocks. */
  locked_until: Defaulted<number | null>;
  last_login_at: Defaulted<number | null>;
  password_changed_at: Defaulted<number | null>;
  full_name: Defaulted<string | null>;
}

export interface UserRolesTable {
  user_id: string;
  role: string;
}

export interface StoreMetaTable {
  key: string;
  value: string;
}

export interface TenantDB {
  store_meta: StoreMetaTable;
  users: UsersTable;
  user_roles: UserRolesTable;
}
