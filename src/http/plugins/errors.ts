import type { FastifyError, FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { isCustosError, type ErrorCode } from '../../core/errors.js';
import { sendProblem } from '../problem.js';

/** Fastify's own failure codes that are the client's fault, mapped to catalogue codes. */
const FASTIFY_CLIENT_ERRORS: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'bad_request',
  FST_ERR_CTP_INVALID_JSON_BODY: 'bad_request',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_TYPE: 'bad_request',
  FST_ERR_VALIDATION: 'validation_failed',
};

/**
 * One error handler for the whole app: catalogue errors become their problem
 * documents, request-shape failures become 4xx, anything else is logged and
 * answered with a bare 500 — no stack, SQL or message reaches the client.
 */
export const errorsPlugin = fp(
  (app: FastifyInstance) => {
    app.setErrorHandler((err: FastifyError, request, reply) => {
      const requestId = { requestId: request.id };
      if (isCustosError(err)) {
        if (err.status >= 500) request.log.error({ err }, 'request failed');
        return sendProblem(reply, err.code, err.detail, { ...err.extensions, ...requestId });
      }
      if (err.validation) {
        const errors = err.validation.map((v) => ({
          location: err.validationContext ?? 'request',
          path: v.instancePath || '/',
          message: v.message ?? 'invalid',
        }));
        return sendProblem(reply, 'validation_failed', `${err.validationContext ?? 'request'} failed validation`, { errors, ...requestId });
      }
      const mapped = err.code ? FASTIFY_CLIENT_ERRORS[err.code] : undefined;
      if (mapped) return sendProblem(reply, mapped, undefined, requestId);
      if (err instanceof SyntaxError || (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500)) {
        return sendProblem(reply, 'bad_request', undefined, requestId);
      }
      request.log.error({ err }, 'unhandled error');
      return sendProblem(reply, 'internal_error', undefined, requestId);
    });
    app.setNotFoundHandler((request, reply) => sendProblem(reply, 'not_found', undefined, { requestId: request.id }));
  },
  { name: 'custos-errors' },
);
