#!/usr/bin/env node
import { CommanderError, type Command } from 'commander';
import { isCustosError, type CustosError } from '../core/errors.js';
import { buildProgram } from './program.js';

/** Exit codes: 0 ok, 1 failure, 2 usage (bad arguments or input). */
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

function exitCodeOf(err: CustosError): number {
  return err.status === 400 || err.code === 'tenant_exists' ? EXIT_USAGE : EXIT_FAILURE;
}

function applyExitOverride(cmd: Command): void {
  cmd.exitOverride();
  for (const sub of cmd.commands) applyExitOverride(sub);
}

async function main(argv: string[]): Promise<number> {
  // Everything Custos writes (stores, keys, certificates) is for its owner only.
  process.umask(0o077);
  // `custos … | head` closes the pipe early: that is the reader's choice, not a failure.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  const program = buildProgram();
  applyExitOverride(program);
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has already printed its one line (or the help/version text).
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return err.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    if (isCustosError(err)) {
      process.stderr.write(`custos: ${err.detail ?? err.message} (${err.code})\n`);
      return exitCodeOf(err);
    }
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED' || code === '28P01' || code === '3D000') {
      process.stderr.write(`custos: cannot reach the database: ${(err as Error).message} (storage_unavailable)\n`);
      return EXIT_FAILURE;
    }
    process.stderr.write(`custos: unexpected failure: ${(err as Error).message ?? String(err)} (internal_error)\n`);
    return EXIT_FAILURE;
  }
}

process.exitCode = await main(process.argv);
