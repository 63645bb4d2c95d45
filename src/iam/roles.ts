/**
 * Built-in functional roles. The full permission catalogue and custom roles
 * come with the identity-and-access feature; the foundation needs the role a
 * tenant's first user holds.
 */
export const BUILTIN_ROLES = {
  'account-administrator': { name: 'Account Administrator' },
  'super-user': { name: 'Super User' },
  'data-director': { name: 'Data Director' },
  marketer: { name: 'Marketer' },
  viewer: { name: 'Viewer' },
} as const;

export type BuiltinRoleKey = keyof typeof BUILTIN_ROLES;

export const ACCOUNT_ADMINISTRATOR: BuiltinRoleKey = 'account-administrator';
