import { createHash } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { canonicalJson } from '../audit/canonical-json.js';
import type { Clock } from '../core/clock.js';
import { CustosError } from '../core/errors.js';
import { authOf, tenantOf } from './plugins/tenant-binding.js';

/** How long a completed request can be replayed by its `Idempotency-Key`. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/** The header (draft-ietf-httpapi-idempotency-key-header): 1–255 visible ASCII characters chosen by the client. */
export const IDEMPOTENCY_HEADER = 'idempotency-key';
export const IDEMPOTENCY_KEY_PATTERN = '^[\\x21-\\x7e]{1,255}$';

/** Answers that replay a stored one carry this header. */
export const REPLAYED_HEADER = 'idempotent-replayed';

const PREFIX = 'idempotency/';

interface Stored {
  fingerprint: string;
  status: number;
  body: unknown;
}

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/**
 * Runs a creating POST at most once per `Idempotency-Key`: the first
 * successful answer is kept in the tenant's store for 24 hours, under the
 * caller's principal, the route and the SHA-256 of the key, with a
 * fingerprint of the request (RFC 8785 JSON of its parameters and body). A
 * retry with the same key and request gets that answer again (with
 * `Idempotent-Replayed: true`); the same key with a different request is
 * refused (`idempotency_key_reused`). Failures are not kept, so a corrected
 * retry may reuse the key. Without the header, `run` simply runs.
 *
 * Two requests racing with one key may both run: callers must be creations
 * that cannot happen twice anyway (a unique name), which turns the loser
 * into a `conflict` rather than a duplicate.
 */
export async function idempotent(
  request: FastifyRequest,
  reply: FastifyReply,
  clock: Clock,
  run: () => Promise<{ status: number; body: unknown }>,
): Promise<unknown> {
  const key = request.headers[IDEMPOTENCY_HEADER];
  if (typeof key !== 'string') {
    const res = await run();
    return reply.code(res.status).send(res.body);
  }
  const auth = authOf(request);
  const store = tenantOf(request).store;
  const route = `${request.method} ${request.routeOptions.url ?? ''}`;
  const recordKey = `${PREFIX}${sha256(`${auth.userId}\u0000${route}\u0000${key}`)}`;
  const fingerprint = sha256(canonicalJson({ params: request.params ?? null, body: request.body ?? null }));

  const now = clock.now();
  const found = await store.transaction(async (db) => {
    const row = await db.selectFrom('tenant_settings').select(['value', 'updated_at']).where('key', '=', recordKey).executeTakeFirst();
    return row && row.updated_at > now - IDEMPOTENCY_TTL_MS ? (JSON.parse(row.value) as Stored) : undefined;
  });
  if (found) {
    if (found.fingerprint !== fingerprint) throw new CustosError('idempotency_key_reused');
    return reply.code(found.status).header(REPLAYED_HEADER, 'true').send(found.body);
  }

  const res = await run();
  if (res.status >= 200 && res.status < 300) {
    const value = JSON.stringify({ fingerprint, status: res.status, body: res.body } satisfies Stored);
    const at = clock.now();
    try {
      await store.transaction(async (db) => {
        await db.deleteFrom('tenant_settings').where('key', 'like', `${PREFIX}%`).where('updated_at', '<=', at - IDEMPOTENCY_TTL_MS).execute();
        await db
          .insertInto('tenant_settings')
          .values({ key: recordKey, value, updated_at: at })
          .onConflict((oc) => oc.column('key').doUpdateSet({ value, updated_at: at }))
          .execute();
      });
    } catch (err) {
      // The creation happened and is what the client must hear about; a retry will meet the unique name instead of the replay.
      request.log.warn({ err }, 'could not keep the idempotency record');
    }
  }
  return reply.code(res.status).send(res.body);
}
