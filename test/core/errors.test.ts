import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CustosError, ERROR_CATALOGUE, toProblem, type ErrorCode } from '../../src/core/errors.js';

describe('error catalogue', () => {
  const doc = readFileSync(new URL('../../docs/ERRORS.md', import.meta.url), 'utf8');

  it.each(Object.keys(ERROR_CATALOGUE))('documents %s in docs/ERRORS.md with its status', (code) => {
    const status = ERROR_CATALOGUE[code as ErrorCode].status;
    expect(doc).toMatch(new RegExp(`\\|\\s*\`${code}\`\\s*\\|\\s*${status}\\s*\\|`));
  });

  it('documents no code that does not exist', () => {
    const documented = [...doc.matchAll(/^\|\s*`([a-z_]+)`\s*\|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(ERROR_CATALOGUE).sort());
  });

  it('builds RFC 9457 problem documents with a stable code', () => {
    const p = toProblem('tenant_suspended', 'try later', { requestId: 'r1' }, '/api/v1/x');
    expect(p).toEqual({
      type: 'urn:custos:problem:tenant_suspended',
      title: 'The tenant is suspended',
      status: 403,
      code: 'tenant_suspended',
      detail: 'try later',
      instance: '/api/v1/x',
      requestId: 'r1',
    });
  });

  it('does not let extensions override the standard members', () => {
    const p = toProblem('not_found', undefined, { status: 200, code: 'x', type: 'y' });
    expect(p.status).toBe(404);
    expect(p.code).toBe('not_found');
    expect(p.type).toBe('urn:custos:problem:not_found');
  });

  it('carries code and status on CustosError', () => {
    const e = new CustosError('tenant_exists', 'tenant acme already exists');
    expect(e.code).toBe('tenant_exists');
    expect(e.status).toBe(409);
    expect(e.message).toBe('tenant acme already exists');
    expect(new CustosError('forbidden').message).toBe(ERROR_CATALOGUE.forbidden.title);
  });
});
