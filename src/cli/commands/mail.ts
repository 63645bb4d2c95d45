import { Command } from 'commander';
import { operatorActor } from '../../core/principal.js';
import type { MailView } from '../../notify/mail-service.js';
import { withRuntime } from '../context.js';
import { printJson, println, printTable } from '../output.js';

/** What `custos mail list` shows of a message without `--bodies`: never its body. */
function metadata(m: MailView): Omit<MailView, 'text'> & { hasBody: boolean } {
  const { text, ...rest } = m;
  return { ...rest, hasBody: text !== null };
}

/**
 * `custos mail list`: a tenant's outbox — where mail stays in the embedded
 * default, and its delivery state with SMTP. Reading it is an operator action
 * on the tenant: recorded in the tenant's activity stream and the provider
 * stream before anything is shown (if it cannot be recorded, nothing is).
 * Bodies (codes, reset links, alert contents) only with `--bodies`, which the
 * event says.
 */
export function mailCommand(): Command {
  const mail = new Command('mail').description("a tenant's mail outbox");
  mail
    .command('list')
    .description("list a tenant's mail, newest first: metadata only (recorded in the tenant's activity stream)")
    .requiredOption('--tenant <name>', 'tenant name')
    .option('--kind <kind>', 'only this kind (e.g. auth.device-code, auth.password-reset, alert)')
    .option('--limit <n>', 'at most this many', '20')
    .option('--bodies', "also show the bodies of messages still in the outbox (codes, links); the tenant's activity stream says so")
    .option('--json', 'print JSON')
    .action(async (opts: { tenant: string; kind?: string; limit: string; bodies?: boolean; json?: boolean }, cmd: Command) => {
      const limit = Math.min(Math.max(Number.parseInt(opts.limit, 10) || 20, 1), 1000);
      const bodies = opts.bodies === true;
      const messages = await withRuntime(cmd, async (rt) => {
        const tenant = await rt.tenants.show(opts.tenant);
        const list = await rt.mail.list(tenant.id, { limit, ...(opts.kind !== undefined ? { kind: opts.kind } : {}) });
        // An operator reading a tenant's mail is an action like any other: recorded before it is shown (fail closed).
        const bodiesShown = bodies ? list.filter((m) => m.text !== null).length : 0;
        const details = { messages: list.length, bodies, bodiesShown, filter: { limit, ...(opts.kind !== undefined ? { kind: opts.kind } : {}) } };
        const recorded = { type: 'mail.outbox.read', outcome: 'success' as const, actor: operatorActor(), resource: { type: 'mail-outbox', id: tenant.id } };
        await rt.audit.recordProvider({ ...recorded, details: { ...details, tenantId: tenant.id } });
        await rt.audit.record(tenant.id, { ...recorded, details });
        return list;
      });
      if (opts.json) return printJson(bodies ? messages : messages.map(metadata));
      if (messages.length === 0) return println('No mail.');
      printTable(
        ['ID', 'CREATED', 'STATE', 'KIND', 'TO', 'SUBJECT'],
        messages.map((m) => [m.id, m.createdAt, m.state, m.kind, m.to, m.subject]),
      );
      if (!bodies) return;
      for (const m of messages) {
        if (m.text === null) continue;
        println('');
        println(`--- ${m.id} to ${m.to}: ${m.subject}`);
        println(m.text.trimEnd());
      }
    });
  return mail;
}
