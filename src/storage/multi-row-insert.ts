import { CompiledQuery, type Kysely } from 'kysely';
import type { StorageAdapter } from './adapter.js';
import type { ControlDB, TenantDB } from './schema.js';

/**
 * An INSERT of many rows into one table, its SQL built once per size. A batch
 * is split greedily over `sizes` (largest first, ending at 1), so a few
 * statements write thousands of rows and few distinct statements are ever
 * prepared. Not through Kysely's builder, which makes nodes of every value:
 * for a 200-row insert of records, a tenth of an import's CPU.
 */
export class MultiRowInsert {
  readonly #table: string;
  readonly #columns: readonly string[];
  readonly #sizes: readonly number[];
  readonly #adapter: Pick<StorageAdapter, 'param'>;
  readonly #sql = new Map<number, string>();

  /** `table` and `columns` are trusted identifiers (constants of the code), never input. */
  constructor(table: string, columns: readonly string[], sizes: readonly number[], adapter: Pick<StorageAdapter, 'param'>) {
    if (sizes.at(-1) !== 1 || sizes.some((s, i) => i > 0 && s >= sizes[i - 1]!)) throw new TypeError('sizes must decrease and end at 1');
    this.#table = table;
    this.#columns = columns;
    this.#sizes = sizes;
    this.#adapter = adapter;
  }

  /** Inserts the rows whose values `params` holds, one per column and row, row after row. */
  async run(db: Kysely<TenantDB> | Kysely<ControlDB>, params: readonly unknown[]): Promise<void> {
    const width = this.#columns.length;
    const rows = params.length / width;
    let done = 0;
    for (const size of this.#sizes) {
      while (rows - done >= size) {
        await db.executeQuery(CompiledQuery.raw(this.#text(size), params.slice(done * width, (done + size) * width)));
        done += size;
      }
    }
  }

  #text(rows: number): string {
    let text = this.#sql.get(rows);
    if (text === undefined) {
      let n = 0;
      const tuple = () => `(${this.#columns.map(() => this.#adapter.param(++n)).join(', ')})`;
      text = `INSERT INTO ${this.#table} (${this.#columns.join(', ')}) VALUES ${Array.from({ length: rows }, tuple).join(', ')}`;
      this.#sql.set(rows, text);
    }
    return text;
  }
}
