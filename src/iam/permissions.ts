/**
 * The functional permission catalogue. Every route and every service
 * operation names exactly one of these; roles are sets of them. Documented in
 * docs/PERMISSIONS.md (a test keeps the two in step).
 */
export const PERMISSIONS = {
  'lists.read': 'Read lists and their records (personal data redacted without data.pii.view)',
  'lists.write': 'Create, change and delete lists and records',
  'data.pii.view': 'See personal data (pii fields) in clear',
  'data.export': 'Export records (console exports are limited to 5,000 records)',
  'data.import': 'Import records in bulk',
  'connect.manage': 'Manage bulk-transfer connections and jobs (SFTP, PGP)',
  'blobs.read': 'Read attachments',
  'blobs.manage': 'Archive, restore and clean attachments',
  'activity.read': "Read and export the tenant's activity stream",
  'alerts.manage': 'Manage alert rules and webhook endpoints',
  'users.read': 'List users, roles and organizations',
  'users.manage': 'Create, change, suspend, unlock and delete users; reset their passwords; assign roles and organizations',
  'roles.manage': 'Create, change and delete custom roles',
  'orgs.manage': 'Create, change and delete organizations',
  'keys.read': "See the tenant's key ring (never key material)",
  'keys.manage': 'Rotate, import, disable, enable and schedule deletion of the tenant key',
  'account.admin': 'Account administration: security settings (password rules, lockout, idle timeout, MFA policy, IP allowlist, organizational access control), SSO',
} as const;

export type Permission = keyof typeof PERMISSIONS;

export const ALL_PERMISSIONS = Object.keys(PERMISSIONS) as Permission[];

export function isPermission(p: unknown): p is Permission {
  return typeof p === 'string' && Object.hasOwn(PERMISSIONS, p);
}

/** What only Account Administrators may do: account administration and the people and keys that come with it. */
const ACCOUNT_ADMINISTRATION: readonly Permission[] = ['account.admin', 'users.manage', 'roles.manage', 'orgs.manage', 'keys.manage'];

/**
 * Built-in functional roles, after Oracle Responsys's: assign Super User,
 * Account Administrator and Data Director sparingly (least privilege).
 */
export const BUILTIN_ROLES = {
  'account-administrator': {
    name: 'Account Administrator',
    description: 'Everything, including account administration',
    permissions: ALL_PERMISSIONS,
  },
  'super-user': {
    name: 'Super User',
    description: 'Every functional area except account administration',
    permissions: ALL_PERMISSIONS.filter((p) => !ACCOUNT_ADMINISTRATION.includes(p)),
  },
  'data-director': {
    name: 'Data Director',
    description: 'Full access to data, including personal data, import and export, and bulk transfer',
    permissions: ['lists.read', 'lists.write', 'data.pii.view', 'data.export', 'data.import', 'connect.manage', 'blobs.read', 'blobs.manage'] as Permission[],
  },
  marketer: {
    name: 'Marketer',
    description: 'Read and write lists; no export; personal data redacted',
    permissions: ['lists.read', 'lists.write', 'blobs.read'] as Permission[],
  },
  viewer: {
    name: 'Viewer',
    description: 'Read only; personal data redacted',
    permissions: ['lists.read'] as Permission[],
  },
} as const satisfies Record<string, { name: string; description: string; permissions: readonly Permission[] }>;

export type BuiltinRoleKey = keyof typeof BUILTIN_ROLES;

export const ACCOUNT_ADMINISTRATOR: BuiltinRoleKey = 'account-administrator';

export function isBuiltinRole(key: string): key is BuiltinRoleKey {
  return Object.hasOwn(BUILTIN_ROLES, key);
}
