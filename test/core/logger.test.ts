import type { DestinationStream } from 'pino';
import { describe, expect, it } from 'vitest';
import { CENSOR, createLogger, redactSecrets } from '../../src/core/logger.js';

function capture(level = 'info') {
  const lines: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const sink: DestinationStream = {
    write: (s: string) => {
      raw.push(s);
      lines.push(JSON.parse(s) as Record<string, unknown>);
    },
  };
  return { log: createLogger(level, sink), lines, raw };
}

const SECRET = 'hunter2-must-never-be-logged';

describe('logger redaction', () => {
  it('replaces secret-named values at the top level and at any depth, in objects and arrays, whatever their case', () => {
    const { log, lines, raw } = capture();
    log.info(
      {
        password: SECRET,
        databaseUrl: `postgres://u:${SECRET}@db/x`,
        user: { name: 'ana', newPassword: SECRET, nested: { deeper: { Token: SECRET, privateKey: SECRET } } },
        items: [{ secret: SECRET, keep: 1 }, 'plain'],
        headers: { Authorization: `Bearer ${SECRET}`, cookie: SECRET, 'x-csrf-token': SECRET, 'set-cookie': [SECRET], accept: 'json' },
      },
      'hello',
    );
    expect(raw.join('')).not.toContain(SECRET);
    expect(lines[0]).toMatchObject({
      msg: 'hello',
      password: CENSOR,
      databaseUrl: CENSOR,
      user: { name: 'ana', newPassword: CENSOR, nested: { deeper: { Token: CENSOR, privateKey: CENSOR } } },
      items: [{ secret: CENSOR, keep: 1 }, 'plain'],
      headers: { Authorization: CENSOR, cookie: CENSOR, 'x-csrf-token': CENSOR, 'set-cookie': CENSOR, accept: 'json' },
    });
  });

  it("never modifies the caller's objects, and returns them as they are when nothing is secret", () => {
    const input = { a: { password: SECRET, list: [{ token: SECRET }] }, b: { c: 1 } };
    const copy = structuredClone(input);
    const out = redactSecrets(input) as typeof input;
    expect(input).toEqual(copy);
    expect(out.a.password).toBe(CENSOR);
    expect(out.a.list[0]!.token).toBe(CENSOR);
    expect(out.b).toBe(input.b); // unchanged branches are shared, not copied
    const clean = { x: 1, y: { z: [1, 2] } };
    expect(redactSecrets(clean)).toBe(clean);
  });

  it('redacts the own properties of logged errors, under `err` and under any other key, and keeps message and stack', () => {
    const { log, lines, raw } = capture();
    const err = Object.assign(new Error('connect failed'), { code: 'ECONNREFUSED', password: SECRET, options: { token: SECRET } });
    log.error({ err }, 'boom');
    log.warn({ cause: err, context: { inner: err } }, 'again');
    log.error(err);
    expect(raw.join('')).not.toContain(SECRET);
    expect(lines[0]!.err).toMatchObject({ type: 'Error', message: 'connect failed', code: 'ECONNREFUSED', password: CENSOR, options: { token: CENSOR } });
    expect(String((lines[0]!.err as { stack: string }).stack)).toContain('connect failed');
    expect(lines[1]).toMatchObject({ cause: { message: 'connect failed', password: CENSOR }, context: { inner: { password: CENSOR } } });
    expect(lines[2]!.err).toMatchObject({ message: 'connect failed', password: CENSOR });
  });

  it("redacts child loggers' bindings", () => {
    const { log, lines, raw } = capture();
    const child = log.child({ databaseUrl: `postgres://u:${SECRET}@db/x`, tenant: 't1' });
    child.info('bound');
    child.child({ request: { token: SECRET, id: 'r1' } }).info('grandchild');
    expect(raw.join('')).not.toContain(SECRET);
    expect(lines[0]).toMatchObject({ databaseUrl: CENSOR, tenant: 't1', msg: 'bound' });
    expect(lines[1]).toMatchObject({ databaseUrl: CENSOR, tenant: 't1', request: { token: CENSOR, id: 'r1' }, msg: 'grandchild' });
  });

  it('logs chosen request fields only (never headers or the query string) and the status of responses', () => {
    const { log, lines, raw } = capture();
    const req = { id: 'r1', method: 'POST', url: '/api/v1/auth/login?password=x', ip: '127.0.0.1', headers: { authorization: `Bearer ${SECRET}`, 'user-agent': 'ua/1' }, body: { password: SECRET } };
    log.info({ req, res: { statusCode: 401, headers: { 'set-cookie': SECRET } }, responseTime: 1.5 }, 'request completed');
    expect(raw.join('')).not.toContain(SECRET);
    expect(lines[0]).toMatchObject({ req: { id: 'r1', method: 'POST', url: '/api/v1/auth/login', ip: '127.0.0.1', userAgent: 'ua/1' }, res: { statusCode: 401 }, responseTime: 1.5 });
    expect(Object.keys(lines[0]!.req as object).sort()).toEqual(['id', 'ip', 'method', 'url', 'userAgent']);
    expect(Object.keys(lines[0]!.res as object)).toEqual(['statusCode']);
  });

  it('gives up on structures deeper than it looks, and on cycles, without throwing', () => {
    const { log, raw } = capture();
    let deep: Record<string, unknown> = { password: SECRET };
    for (let i = 0; i < 20; i++) deep = { next: deep };
    const cyclic: Record<string, unknown> = { name: 'loop', token: SECRET };
    cyclic.self = cyclic;
    log.info({ deep, cyclic }, 'odd shapes');
    expect(raw.join('')).not.toContain(SECRET);
  });
});
