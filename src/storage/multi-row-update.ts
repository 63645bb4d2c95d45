import { CompiledQuery, type Kysely } from 'kysely';
import type { StorageAdapter } from './adapter.js';
import type { ControlDB, TenantDB } from './schema.js';

/** The shape of a {@link MultiRowUpdate}: trusted identifiers (constants of the code), never input. */
export interface MultiRowUpdateShape {
  table: string;
  /** The column every updated row shares a value of (one parameter per statement), e.g. a list's key. */
  scope: string;
  /** The column naming each row within the scope (with `scope`, unique). */
  key: string;
  /** The columns set, in the order of each row's values. */
  columns: readonly string[];
  /** The SQL type of `key` and of each column, for PostgreSQL's casts (its VALUES parameters would be text). */
  types: Readonly<Record<string, string>>;
}

/**
 * An UPDATE of many rows of one table, each to values of its own. On
 * PostgreSQL, one statement per chunk of rows:
 *
 *     WITH v (key, c1, …) AS (VALUES (…), (…), …)
 *     UPDATE table SET c1 = v.c1, … FROM v WHERE table.scope = $n AND table.key = v.key
 *
 * its SQL built once per chunk size, like `MultiRowInsert`: one round trip
 * for hundreds of rows instead of one each. On SQLite, one prepared
 * `UPDATE … WHERE scope = ? AND key = ?` per row: a statement there costs no
 * round trip, and SQLite runs `UPDATE … FROM` through an intermediate table
 * (5,000 updates of a 200,000-row records table: 53–68 µs per row one by one,
 * 69–95 µs 200 at a time). The keys of one `run` must be distinct (in one
 * statement a row named twice would get one of its two value sets, not the
 * last).
 */
export class MultiRowUpdate {
  readonly #shape: MultiRowUpdateShape;
  readonly #sizes: readonly number[];
  readonly #adapter: Pick<StorageAdapter, 'param' | 'kind'>;
  readonly #sql = new Map<number, string>();

  constructor(shape: MultiRowUpdateShape, sizes: readonly number[], adapter: Pick<StorageAdapter, 'param' | 'kind'>) {
    if (sizes.at(-1) !== 1 || sizes.some((s, i) => i > 0 && s >= sizes[i - 1]!)) throw new TypeError('sizes must decrease and end at 1');
    for (const c of [shape.key, ...shape.columns]) if (!shape.types[c]) throw new TypeError(`no SQL type for column ${c}`);
    this.#shape = shape;
    this.#sizes = sizes;
    this.#adapter = adapter;
  }

  /**
   * Sets the rows of `scope` that `rows` name: each row is its key followed by
   * one value per column. Throws if a key is given twice. Resolves with the
   * number of rows updated.
   */
  async run(db: Kysely<TenantDB> | Kysely<ControlDB>, scope: unknown, rows: readonly (readonly unknown[])[]): Promise<number> {
    const width = this.#shape.columns.length + 1;
    const keys = new Set<unknown>();
    for (const r of rows) {
      if (r.length !== width) throw new TypeError(`a row holds ${width} values (key and columns), not ${r.length}`);
      keys.add(r[0]);
    }
    if (keys.size !== rows.length) throw new TypeError('a multi-row update names a row twice');
    let updated = 0;
    if (this.#adapter.kind === 'sqlite') {
      const text = this.#singleRowText();
      for (const r of rows) updated += Number((await db.executeQuery(CompiledQuery.raw(text, [...r.slice(1), scope, r[0]]))).numAffectedRows ?? 0);
      return updated;
    }
    let done = 0;
    for (const size of this.#sizes) {
      while (rows.length - done >= size) {
        const params: unknown[] = [];
        for (let i = done; i < done + size; i++) for (const v of rows[i]!) params.push(v);
        params.push(scope);
        const r = await db.executeQuery(CompiledQuery.raw(this.#text(size), params));
        updated += Number(r.numAffectedRows ?? 0);
        done += size;
      }
    }
    return updated;
  }

  #singleRowText(): string {
    let text = this.#sql.get(0);
    if (text === undefined) {
      const { table, scope, key, columns } = this.#shape;
      let n = 0;
      text = `UPDATE ${table} SET ${columns.map((c) => `${c} = ${this.#adapter.param(++n)}`).join(', ')} WHERE ${scope} = ${this.#adapter.param(++n)} AND ${key} = ${this.#adapter.param(++n)}`;
      this.#sql.set(0, text);
    }
    return text;
  }

  /** The PostgreSQL statement for `rows` rows. */
  #text(rows: number): string {
    let text = this.#sql.get(rows);
    if (text === undefined) {
      const { table, scope, key, columns, types } = this.#shape;
      const names = [key, ...columns];
      let n = 0;
      // PostgreSQL types a VALUES column from its parameters, which arrive untyped (text): cast each one.
      const value = (c: string) => `${this.#adapter.param(++n)}::${types[c]}`;
      const tuple = () => `(${names.map(value).join(', ')})`;
      const values = Array.from({ length: rows }, tuple).join(', ');
      text =
        `WITH v (${names.join(', ')}) AS (VALUES ${values}) ` +
        `UPDATE ${table} SET ${columns.map((c) => `${c} = v.${c}`).join(', ')} FROM v WHERE ${table}.${scope} = ${this.#adapter.param(++n)} AND ${table}.${key} = v.${key}`;
      this.#sql.set(rows, text);
    }
    return text;
  }
}
