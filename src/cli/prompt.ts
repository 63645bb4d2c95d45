import { createInterface } from 'node:readline';

/**
 * Answers for the interactive steps of `custos login`: from standard input
 * line by line when it is not a terminal (scripts: `--password-stdin`, then
 * any new password or code on the following lines), or typed at a prompt,
 * hidden for secrets.
 */
export class Prompter {
  #lines: string[] | undefined;

  async #stdinLines(): Promise<string[]> {
    if (this.#lines) return this.#lines;
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    this.#lines = Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
    return this.#lines;
  }

  async ask(question: string, opts: { secret?: boolean; fromStdin: boolean }): Promise<string> {
    if (opts.fromStdin || !process.stdin.isTTY) {
      const lines = await this.#stdinLines();
      const line = lines.shift();
      if (line === undefined || line === '') throw new Error(`${question.replace(/:\s*$/, '')}: no answer on standard input`);
      return line;
    }
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
    if (opts.secret) {
      // Echo nothing while a secret is typed.
      const output = rl as unknown as { _writeToOutput: (s: string) => void };
      output._writeToOutput = (s: string) => {
        if (s.startsWith(question)) process.stderr.write(question);
      };
    }
    try {
      return await new Promise<string>((resolve) => rl.question(question, resolve));
    } finally {
      if (opts.secret) process.stderr.write('\n');
      rl.close();
    }
  }
}
