import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ALL_PERMISSIONS, BUILTIN_ROLES, PERMISSIONS, type BuiltinRoleKey } from '../../src/iam/permissions.js';

describe('docs/PERMISSIONS.md', () => {
  const doc = readFileSync(new URL('../../docs/PERMISSIONS.md', import.meta.url), 'utf8');
  const rows = (section: string) => {
    const start = doc.indexOf(`## ${section}`);
    const end = doc.indexOf('\n## ', start + 1);
    return doc.slice(start, end < 0 ? undefined : end).split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| permission') && !l.startsWith('| role'));
  };

  it.each(ALL_PERMISSIONS)('documents permission %s with its description', (p) => {
    const row = rows('Permission catalogue').find((l) => l.startsWith(`| \`${p}\` |`));
    expect(row, p).toBeDefined();
    // The description as the catalogue has it (the document may mark names up as code).
    expect(row!.split('|')[2]!.trim().replace(/`/g, '')).toBe(PERMISSIONS[p]);
  });

  it('documents no permission that does not exist', () => {
    const documented = rows('Permission catalogue').map((l) => /^\| `([a-z.]+)` \|/.exec(l)?.[1]);
    expect(documented.sort()).toEqual([...ALL_PERMISSIONS].sort());
  });

  it.each(Object.keys(BUILTIN_ROLES) as BuiltinRoleKey[])('documents built-in role %s with exactly its permissions', (key) => {
    const role = BUILTIN_ROLES[key];
    const row = rows('Built-in roles').find((l) => l.includes(`| \`${key}\` |`));
    expect(row, key).toBeDefined();
    const [, name, , perms] = row!.split('|').map((c) => c.trim());
    expect(name).toBe(role.name);
    if (role.permissions.length === ALL_PERMISSIONS.length) {
      expect(perms).toBe('every permission');
    } else {
      // Permissions before the dash are the role's; any after it explain what it lacks.
      const listed = [...perms!.split(' — ')[0]!.matchAll(/`([a-z.]+)`/g)].map((m) => m[1]);
      expect(listed.sort()).toEqual([...role.permissions].sort());
    }
  });

  it('documents no built-in role that does not exist', () => {
    const keys = rows('Built-in roles').map((l) => /\| `([a-z-]+)` \|/.exec(l)?.[1]);
    expect(keys.sort()).toEqual(Object.keys(BUILTIN_ROLES).sort());
  });
});
