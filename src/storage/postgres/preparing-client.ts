import { createHash } from 'node:crypto';
import pg from 'pg';

/** Named statements one connection keeps at most, unless configured (`databasePreparedStatements`); past this, statements run unnamed. */
export const DEFAULT_NAMED_STATEMENTS = 256;

/** Statements worth keeping prepared: plannable DML and queries, of a sane size. */
const PLANNABLE = /^\s*(select|insert|update|delete|with)\b/i;
const MAX_TEXT = 64 * 1024;

/**
 * SQLSTATEs after which a named statement is dropped and the query runs once more unnamed:
 * `0A000` "cached plan must not change result type" (a table's columns changed under a `select *`,
 * e.g. a newer node migrated), `26000` "prepared statement does not exist" (a pooler in front of
 * PostgreSQL reset the session).
 */
const STALE_STATEMENT = new Set(['0A000', '26000']);

const IN_FAILED_TRANSACTION = '25P02';

type Callback = (err: Error | null, result?: pg.QueryResult) => void;

/**
 * A pg client that runs Kysely's parameterised queries as named prepared
 * statements: PostgreSQL parses and plans each distinct statement once per
 * connection instead of on every execution. Kysely compiles the same SQL text
 * for the same query shape, so the text (hashed) names the statement. Measured
 * with pgbench on the machine in docs/PERFORMANCE.md: primary-key selects
 * 12,900/s unnamed against 20,200/s prepared.
 *
 * Only `query(text, values)` calls are affected — the form Kysely's driver uses;
 * query objects (cursors, configs) pass through unchanged. Each connection
 * names at most `maxNamed` statements (see {@link preparingClient}); a statement the server no
 * longer accepts (see {@link STALE_STATEMENT}) is retried once unnamed and not
 * named again on that connection (inside a transaction the first failure aborts
 * the transaction and reaches the caller; the next use runs unnamed). Prepared statements are not transactional:
 * a statement parsed in a transaction that rolls back stays prepared.
 */
export class PreparingClient extends pg.Client {
  /** Statements this class names per connection; subclasses made by {@link preparingClient} set their own. */
  static maxNamed = DEFAULT_NAMED_STATEMENTS;
  readonly #maxNamed = (this.constructor as typeof PreparingClient).maxNamed;
  readonly #names = new Map<string, string>();
  readonly #refused = new Set<string>();

  /** The statement name for `text` on this connection, or undefined to run it unnamed. */
  #nameFor(text: string): string | undefined {
    if (text.length > MAX_TEXT || !PLANNABLE.test(text) || this.#refused.has(text)) return undefined;
    const known = this.#names.get(text);
    if (known !== undefined) return known;
    if (this.#names.size >= this.#maxNamed) return undefined;
    const name = `k${createHash('sha256').update(text).digest('base64url').slice(0, 22)}`;
    this.#names.set(text, name);
    return name;
  }

  // The overloads of pg.Client#query are many; only (string, array, callback?) is rewritten, everything else passes through.
  override query(...args: unknown[]): any {
    const [text, values, callback] = args;
    if (typeof text !== 'string' || !(values === undefined || Array.isArray(values)) || (callback !== undefined && typeof callback !== 'function')) {
      return (super.query as (...a: unknown[]) => unknown)(...args);
    }
    const name = this.#nameFor(text);
    if (name === undefined) return (super.query as (...a: unknown[]) => unknown)(...args);
    const run = async (): Promise<pg.QueryResult> => {
      try {
        return await super.query({ name, text, values: values as unknown[] | undefined });
      } catch (err) {
        if (!STALE_STATEMENT.has((err as { code?: string }).code ?? '')) throw err;
        this.#names.delete(text);
        this.#refused.add(text);
        // In a transaction the failure aborted it, and the retry can only say so: report the cause instead.
        return super.query(text, values as unknown[] | undefined).catch((retryErr: unknown) => {
          throw (retryErr as { code?: string }).code === IN_FAILED_TRANSACTION ? err : retryErr;
        });
      }
    };
    const promise = run();
    if (typeof callback === 'function') {
      promise.then(
        (r) => (callback as Callback)(null, r),
        (e: unknown) => (callback as Callback)(e as Error),
      );
      return undefined;
    }
    return promise;
  }
}

/** The pg client class for a pool: one naming at most `maxNamed` statements per connection, or plain pg.Client for 0. */
export function preparingClient(maxNamed: number): typeof pg.Client {
  if (maxNamed <= 0) return pg.Client;
  return class extends PreparingClient {
    static override maxNamed = maxNamed;
  };
}
