import { Command } from 'commander';
import { withRuntime } from '../context.js';
import { printJson, println, printTable } from '../output.js';

/** `custos mail list`: a tenant's outbox — where mail stays in the embedded default, and its delivery state with SMTP. */
export function mailCommand(): Command {
  const mail = new Command('mail').description("a tenant's mail outbox");
  mail
    .command('list')
    .description("list a tenant's mail, newest first (bodies are shown while a message sits in the outbox)")
    .requiredOption('--tenant <name>', 'tenant name')
    .option('--kind <kind>', 'only this kind (e.g. auth.device-code, auth.password-reset, alert)')
    .option('--limit <n>', 'at most this many', '20')
    .option('--json', 'print JSON')
    .action(async (opts: { tenant: string; kind?: string; limit: string; json?: boolean }, cmd: Command) => {
      const limit = Math.min(Math.max(Number.parseInt(opts.limit, 10) || 20, 1), 1000);
      const messages = await withRuntime(cmd, async (rt) => rt.mail.list((await rt.tenants.show(opts.tenant)).id, { limit, kind: opts.kind }));
      if (opts.json) return printJson(messages);
      if (messages.length === 0) return println('No mail.');
      printTable(
        ['CREATED', 'STATE', 'KIND', 'TO', 'SUBJECT'],
        messages.map((m) => [m.createdAt, m.state, m.kind, m.to, m.subject]),
      );
      for (const m of messages.filter((x) => x.text !== null)) {
        println('');
        println(`--- ${m.id} to ${m.to}: ${m.subject}`);
        println(m.text!.trimEnd());
      }
    });
  return mail;
}
