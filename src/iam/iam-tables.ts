/** Table types of identity and access, added to the tenant schema. */

import type { Defaulted } from '../storage/schema.js';

export interface RolesTable {
  id: string;
  name: string;
  description: string;
  /** JSON array of permission names. */
  permissions: string;
  created_at: number;
  updated_at: number;
}

export interface OrgsTable {
  id: string;
  name: string;
  parent_id: string | null;
  created_at: number;
}

export interface UserOrgsTable {
  user_id: string;
  org_id: string;
}

export interface TenantSettingsTable {
  key: string;
  value: string;
  updated_at: number;
}

/** A console session (`kind` console) or an API bearer token (`kind` api). Only the SHA-256 of the secret is stored. */
export interface SessionsTable {
  id_hash: Buffer;
  user_id: string;
  kind: 'console' | 'api';
  auth_method: 'password' | 'certificate' | 'saml';
  csrf_hash: Buffer | null;
  created_at: number;
  last_seen_at: number;
  /** Absolute end of life (12 hours for sessions, 1 hour for tokens). */
  expires_at: number;
  ip: string | null;
  user_agent: string | null;
  /** Identifier shown to the user (listing and ending sessions); not a credential. */
  public_id: string;
}

export interface LoginFlowsTable {
  id_hash: Buffer;
  user_id: string;
  /** JSON array of the challenges still to pass, in order. */
  pending: string;
  code_hash: Buffer | null;
  code_expires_at: number | null;
  code_attempts: number;
  created_at: number;
  expires_at: number;
  /** How the first factor was passed: null for a password, `saml` for the tenant's IdP. */
  auth_method: Defaulted<'saml' | null>;
}

export interface DevicesTable {
  id_hash: Buffer;
  user_id: string;
  created_at: number;
  last_used_at: number;
  expires_at: number;
  user_agent: string | null;
}

export interface PasswordHistoryTable {
  /** A ULID: orders the history even when two changes share a millisecond. */
  id: string;
  user_id: string;
  password_hash: string;
  created_at: number;
}

export interface PasswordResetsTable {
  token_hash: Buffer;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

export interface MfaTotpTable {
  user_id: string;
  confirmed_at: number | null;
  /** Last accepted 30-second counter: a code is never accepted twice. */
  last_counter: number | null;
  created_at: number;
}

export interface MfaRecoveryCodesTable {
  code_hash: Buffer;
  user_id: string;
  used_at: number | null;
}

/** Client certificates an API user may authenticate with: an issuing CA (PEM) or a pinned SHA-256 fingerprint. */
export interface ApiCredentialsTable {
  id: string;
  user_id: string;
  kind: 'ca' | 'fingerprint';
  name: string;
  value: string;
  created_at: number;
}

/** Failed password sign-ins from one client address in one minute (`bucket` = minutes since the epoch). */
export interface LoginIpFailuresTable {
  ip: string;
  bucket: number;
  failures: number;
}

declare module '../storage/schema.js' {
  interface TenantDB {
    roles: RolesTable;
    orgs: OrgsTable;
    user_orgs: UserOrgsTable;
    tenant_settings: TenantSettingsTable;
    sessions: SessionsTable;
    login_flows: LoginFlowsTable;
    devices: DevicesTable;
    password_history: PasswordHistoryTable;
    password_resets: PasswordResetsTable;
    mfa_totp: MfaTotpTable;
    mfa_recovery_codes: MfaRecoveryCodesTable;
    api_credentials: ApiCredentialsTable;
    login_ip_failures: LoginIpFailuresTable;
  }
}
