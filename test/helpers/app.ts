import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { expect } from 'vitest';
import { buildApp } from '../../src/http/app.js';
import type { Runtime } from '../../src/runtime.js';

export async function makeApp(rt: Runtime, extend?: (app: FastifyInstance) => void): Promise<FastifyInstance> {
  const app = await buildApp({ runtime: rt });
  extend?.(app);
  await app.ready();
  return app;
}

/** Asserts an RFC 9457 problem answer with the given status and code; returns the parsed document. */
export function expectProblem(res: LightMyRequestResponse, status: number, code: string): Record<string, unknown> {
  expect(res.statusCode, res.body).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = res.json<Record<string, unknown>>();
  expect(body).toMatchObject({ status, code, type: `urn:custos:problem:${code}` });
  expect(typeof body.title).toBe('string');
  return body;
}
