export { ACCOUNT_ADMINISTRATOR, BUILTIN_ROLES, type BuiltinRoleKey } from './permissions.js';
