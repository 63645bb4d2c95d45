import { Command, Option } from 'commander';
import type { AuditOutcome, RetentionView, VerifyReport } from '../../audit/audit-types.js';
import { CustosError } from '../../core/errors.js';
import { operatorActor } from '../../core/principal.js';
import type { Runtime } from '../../runtime.js';
import { withRuntime } from '../context.js';
import { printJson, println, printTable } from '../output.js';

interface StreamOpts {
  tenant?: string;
  provider?: boolean;
  json?: boolean;
}

/** `--tenant NAME` or `--provider`, never both. */
function streamOptions(cmd: Command, required: boolean): Command {
  return cmd
    .addOption(new Option('--tenant <name>', required ? 'the tenant whose stream to use' : 'only this tenant (default: every tenant and the provider)').conflicts('provider'))
    .addOption(new Option('--provider', "the provider's own stream (operator actions)").conflicts('tenant'));
}

/** The stream named by the options: a tenant id, or null for the provider stream. */
async function streamOf(rt: Runtime, opts: StreamOpts): Promise<{ id: string | null; label: string }> {
  if (opts.provider) return { id: null, label: 'the provider' };
  if (opts.tenant === undefined) throw new CustosError('validation_failed', 'name a stream: --tenant NAME or --provider');
  const t = await rt.tenants.show(opts.tenant);
  return { id: t.id, label: `tenant ${t.name} (${t.id})` };
}

function positiveInt(value: string, what: string): number {
  if (!/^\d{1,6}$/.test(value)) throw new CustosError('validation_failed', `${what} must be a whole number`);
  return Number(value);
}

function printVerify(label: string, r: VerifyReport, checkpointsDir: string | undefined): void {
  const span = r.firstSeq === undefined ? 'no events' : `events ${r.firstSeq} to ${r.lastSeq}`;
  println(`Verifying the activity stream of ${label}: ${span}${r.anchor ? `, after the purge anchor at event ${r.anchor.seq}` : ''}`);
  println('Results:');
  println(`${r.validEvents}/${r.events} events valid`);
  println(`${r.checkpoints.store} stored checkpoint(s)${checkpointsDir !== undefined ? `, ${r.checkpoints.external ?? 0} external checkpoint(s) in ${checkpointsDir}` : ''}`);
  for (const p of r.problems) println(p.message);
  if (r.moreProblems > 0) println(`… and ${r.moreProblems} more problem(s)`);
  for (const n of r.notes) println(`note: ${n}`);
  println(r.valid ? `The activity stream is valid (${r.elapsedMs} ms).` : `The activity stream is NOT valid: ${r.problems.length + r.moreProblems} problem(s).`);
}

function printRetention(label: string, v: RetentionView): void {
  printTable(
    ['field', 'value'],
    [
      ['stream', label],
      ...(v.edition ? [['edition', v.edition]] : []),
      ['default days', String(v.defaultDays)],
      ['override days', v.overrideDays === undefined ? '(none)' : String(v.overrideDays)],
      ['effective days', String(v.effectiveDays)],
      ['maximum days', String(v.maxDays)],
    ],
  );
}

/** Resolves when standard output drains, closes or fails, removing the listeners it added. */
function stdoutReady(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      process.stdout.off('drain', done);
      process.stdout.off('close', done);
      process.stdout.off('error', done);
      resolve();
    };
    process.stdout.once('drain', done);
    process.stdout.once('close', done);
    process.stdout.once('error', done);
  });
}

/**
 * Streams chunks to standard output with back-pressure. A reader that goes
 * away (`| head`) ends the output quietly; any other output error fails.
 */
async function pipeToStdout(chunks: AsyncIterable<string>): Promise<void> {
  let failure: NodeJS.ErrnoException | undefined;
  // Stays attached: an EPIPE can also arrive after the last write.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    failure ??= err;
  });
  for await (const chunk of chunks) {
    if (failure) break;
    if (!process.stdout.write(chunk)) await stdoutReady();
    if (failure) break;
  }
  if (failure && failure.code !== 'EPIPE') throw failure;
}

/** `custos audit …`: the activity streams, for provider operators. */
export function auditCommand(): Command {
  const audit = new Command('audit').description("activity streams (tamper-evident audit trails): verify, export, retention, purge");

  streamOptions(audit.command('verify').description('walk the hash chain and check every event, link, checkpoint and anchor; exit 1 on any problem'), true)
    .option('--checkpoints <dir>', 'external checkpoint directory (auditCheckpointDir): needed to detect a truncated stream')
    .option('--json', 'print JSON')
    .action(async (opts: StreamOpts & { checkpoints?: string }, cmd: Command) => {
      const { report, label } = await withRuntime(cmd, async (rt) => {
        const s = await streamOf(rt, opts);
        return { label: s.label, report: await rt.audit.verify(s.id, opts.checkpoints === undefined ? {} : { checkpointsDir: opts.checkpoints }) };
      });
      if (opts.json) printJson(report);
      else printVerify(label, report, opts.checkpoints);
      if (!report.valid) throw new CustosError('audit_chain_invalid', `the activity stream of ${label} failed verification`);
    });

  streamOptions(audit.command('export').description('stream events to standard output as JSON Lines or CSV, oldest first (recorded in the stream)'), true)
    .addOption(new Option('--format <format>', 'output format').choices(['jsonl', 'csv']).makeOptionMandatory())
    .option('--since <time>', 'only events at or after this RFC 3339 time')
    .option('--until <time>', 'only events before this RFC 3339 time')
    .option('--type <pattern>', 'only these event types, comma-separated; * matches anything (auth.*)')
    .addOption(new Option('--outcome <outcome>', 'only this outcome').choices(['success', 'failure', 'denied']))
    .action(async (opts: StreamOpts & { format: 'jsonl' | 'csv'; since?: string; until?: string; type?: string; outcome?: AuditOutcome }, cmd: Command) => {
      await withRuntime(cmd, async (rt) => {
        const s = await streamOf(rt, opts);
        const filter = {
          ...(opts.since !== undefined ? { since: opts.since } : {}),
          ...(opts.until !== undefined ? { until: opts.until } : {}),
          ...(opts.type !== undefined ? { types: opts.type.split(',').map((t) => t.trim()).filter((t) => t !== '') } : {}),
          ...(opts.outcome !== undefined ? { outcome: opts.outcome } : {}),
        };
        // An operator reading a stream is an action like any other: recorded first (fail closed).
        const actor = operatorActor();
        const recorded = { type: 'audit.export', outcome: 'success' as const, actor, resource: { type: 'activity-stream', id: s.id ?? 'provider' }, details: { format: opts.format, filter } };
        await rt.audit.recordProvider(recorded);
        if (s.id !== null) await rt.audit.record(s.id, recorded);
        await pipeToStdout(rt.audit.export(s.id, filter, opts.format));
      });
    });

  audit
    .command('purge')
    .description('delete events older than retention and sign a purge anchor (every tenant and the provider unless one is named)')
    .addOption(new Option('--tenant <name>', 'only this tenant').conflicts('provider'))
    .addOption(new Option('--provider', 'only the provider stream').conflicts('tenant'))
    .option('--dry-run', 'count what would be purged and change nothing')
    .option('--json', 'print JSON')
    .action(async (opts: StreamOpts & { dryRun?: boolean }, cmd: Command) => {
      const results = await withRuntime(cmd, async (rt) => {
        const streams: { id: string | null; label: string }[] = [];
        if (opts.tenant !== undefined || opts.provider) streams.push(await streamOf(rt, opts));
        else {
          for (const t of await rt.tenants.list()) streams.push({ id: t.id, label: `tenant ${t.name} (${t.id})` });
          streams.push({ id: null, label: 'the provider' });
        }
        const out: { stream: string; label: string; purged: number; through?: number; retentionDays: number }[] = [];
        for (const s of streams) {
          const r = await rt.audit.purge(s.id, { dryRun: opts.dryRun ?? false, actor: operatorActor() });
          out.push({ stream: s.id ?? 'provider', label: s.label, ...r, retentionDays: (await rt.audit.retention(s.id)).effectiveDays });
        }
        return out;
      });
      if (opts.json) return printJson({ dryRun: opts.dryRun ?? false, streams: results });
      for (const r of results) {
        println(`${r.label}: ${opts.dryRun ? 'would purge' : 'purged'} ${r.purged} event(s) older than ${r.retentionDays} days${r.through !== undefined ? ` (through event ${r.through})` : ''}`);
      }
    });

  streamOptions(audit.command('retention').description("show a stream's retention, or raise a tenant's (up to 365 days)"), true)
    .option('--days <n>', "keep events this many days (from the edition's default up to 365)")
    .option('--reset', "go back to the edition's default")
    .option('--json', 'print JSON')
    .action(async (opts: StreamOpts & { days?: string; reset?: boolean }, cmd: Command) => {
      if (opts.days !== undefined && opts.reset) throw new CustosError('validation_failed', 'give --days or --reset, not both');
      const { view, label } = await withRuntime(cmd, async (rt) => {
        const s = await streamOf(rt, opts);
        if (opts.days === undefined && !opts.reset) return { label: s.label, view: await rt.audit.retention(s.id) };
        if (s.id === null) throw new CustosError('validation_failed', 'the provider stream keeps 365 days; it has no override');
        const days = opts.reset ? null : positiveInt(opts.days!, '--days');
        return { label: s.label, view: await rt.audit.setRetention(s.id, days, operatorActor()) };
      });
      if (opts.json) printJson(view);
      else printRetention(label, view);
    });

  audit
    .command('checkpoint')
    .description('sign a checkpoint of the stream head now (every stream unless one is named), and copy it to the sink')
    .addOption(new Option('--tenant <name>', 'only this tenant').conflicts('provider'))
    .addOption(new Option('--provider', 'only the provider stream').conflicts('tenant'))
    .option('--json', 'print JSON')
    .action(async (opts: StreamOpts, cmd: Command) => {
      const made = await withRuntime(cmd, async (rt) => {
        const streams = opts.tenant !== undefined || opts.provider ? [await streamOf(rt, opts)] : [...(await rt.tenants.list()).map((t) => ({ id: t.id, label: `tenant ${t.name} (${t.id})` })), { id: null, label: 'the provider' }];
        const out = [];
        for (const s of streams) out.push({ stream: s.id ?? 'provider', label: s.label, checkpoint: (await rt.audit.checkpoint(s.id)) ?? null });
        return out;
      });
      if (opts.json) return printJson(made);
      for (const m of made) println(`${m.label}: ${m.checkpoint ? `checkpoint at event ${m.checkpoint.seq}` : 'nothing new since the last checkpoint'}`);
    });

  streamOptions(audit.command('hash').description("the HMAC a sensitive value takes in a stream (to search for it); the value itself is never stored"), true)
    .argument('<value>', 'the value, e.g. an email address')
    .action(async (value: string, opts: StreamOpts, cmd: Command) => {
      const h = await withRuntime(cmd, async (rt) => rt.audit.hashForAudit((await streamOf(rt, opts)).id, value));
      println(h);
    });

  return audit;
}
