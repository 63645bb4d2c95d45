/** Writes a value as pretty JSON on standard output. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function println(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** Renders rows as an aligned text table. */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  println(line(headers));
  for (const r of rows) println(line(r));
}

/** Prints `value` as JSON with `--json`, else the human text. */
export function output(json: boolean | undefined, value: unknown, text: () => string): void {
  if (json) printJson(value);
  else println(text());
}
