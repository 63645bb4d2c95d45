import type { FastifyReply } from 'fastify';
import { toProblem, type ErrorCode, type ProblemExtensions } from '../core/errors.js';
import { Type } from 'typebox';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** Sends an RFC 9457 problem document. */
export function sendProblem(reply: FastifyReply, code: ErrorCode, detail?: string, extensions?: ProblemExtensions): FastifyReply {
  const problem = toProblem(code, detail, extensions, reply.request.url.split('?')[0]);
  if (typeof extensions?.retryAfterSeconds === 'number') reply.header('retry-after', String(Math.max(1, Math.ceil(extensions.retryAfterSeconds))));
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(problem);
}

/** Schema of a problem document, referenced by every route's error responses. */
export const ProblemSchema = Type.Object(
  {
    type: Type.String({ description: 'URN naming the problem: urn:custos:problem:<code>' }),
    title: Type.String(),
    status: Type.Integer(),
    code: Type.String({ description: 'Stable error code from the catalogue (docs/ERRORS.md)' }),
    detail: Type.Optional(Type.String()),
    instance: Type.Optional(Type.String()),
    requestId: Type.Optional(Type.String()),
  },
  { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details' },
);
