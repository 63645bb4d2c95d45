import { Command, Option } from 'commander';
import { CustosError } from '../../core/errors.js';
import { operatorActor } from '../../core/principal.js';
import { EDITIONS } from '../../core/validation.js';
import type { CreatedTenant, TenantView } from '../../ops/tenant-service.js';
import { withRuntime } from '../context.js';
import { printJson, println, printTable } from '../output.js';

function describeStore(t: TenantView): string {
  return t.store.kind === 'sqlite' ? t.store.file : `schema ${t.store.schema}, role ${t.store.role}`;
}

function printTenant(t: TenantView): void {
  printTable(
    ['field', 'value'],
    [
      ['id', t.id],
      ['name', t.name],
      ['edition', t.edition],
      ['status', t.status],
      ['admin email', t.adminEmail],
      ['created', t.createdAt],
      ['updated', t.updatedAt],
      ['store', describeStore(t)],
    ],
  );
}

export function printCreatedTenant(t: CreatedTenant): void {
  println(`Created tenant ${t.name} (${t.edition}), id ${t.id}.`);
  println(`Account Administrator: ${t.admin.username} <${t.admin.email}>`);
  println(`Temporary password: ${t.admin.temporaryPassword}`);
  println(`It is shown only now, must be changed at first sign-in, and expires ${t.admin.temporaryPasswordExpiresAt}.`);
}

/** `custos tenant …`: service-instance lifecycle, for provider operators. */
export function tenantCommand(): Command {
  const tenant = new Command('tenant').description('create and manage tenants (service instances)');

  tenant
    .command('create')
    .description('create a tenant, its store and its first Account Administrator')
    .argument('<name>', 'DNS-label-like name: 3-63 lower-case letters, digits, hyphens')
    .addOption(new Option('--edition <edition>', 'plan of the tenant').choices(EDITIONS).makeOptionMandatory())
    .requiredOption('--admin-email <email>', 'email address of the first Account Administrator')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { edition: string; adminEmail: string; json?: boolean }, cmd: Command) => {
      const created = await withRuntime(cmd, (rt) => rt.tenants.create({ name, edition: opts.edition, adminEmail: opts.adminEmail }, operatorActor()));
      if (opts.json) printJson(created);
      else printCreatedTenant(created);
    });

  tenant
    .command('list')
    .description('list tenants')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const tenants = await withRuntime(cmd, (rt) => rt.tenants.list());
      if (opts.json) return printJson(tenants);
      if (tenants.length === 0) return println('No tenants.');
      printTable(
        ['NAME', 'EDITION', 'STATUS', 'CREATED', 'ID'],
        tenants.map((t) => [t.name, t.edition, t.status, t.createdAt, t.id]),
      );
    });

  tenant
    .command('show')
    .description('show one tenant')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const t = await withRuntime(cmd, (rt) => rt.tenants.show(name));
      if (opts.json) printJson(t);
      else printTenant(t);
    });

  tenant
    .command('suspend')
    .description("suspend a tenant: its users and API clients are refused until it resumes")
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const t = await withRuntime(cmd, (rt) => rt.tenants.suspend(name, operatorActor()));
      if (opts.json) printJson(t);
      else println(`Tenant ${t.name} is suspended.`);
    });

  tenant
    .command('resume')
    .description('resume a suspended tenant')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { json?: boolean }, cmd: Command) => {
      const t = await withRuntime(cmd, (rt) => rt.tenants.resume(name, operatorActor()));
      if (opts.json) printJson(t);
      else println(`Tenant ${t.name} is active.`);
    });

  tenant
    .command('delete')
    .description('delete a tenant and destroy all of its data')
    .argument('<name>')
    .option('--yes', 'confirm: the data cannot be recovered')
    .option('--dry-run', 'show what would be deleted and change nothing')
    .option('--json', 'print JSON')
    .action(async (name: string, opts: { yes?: boolean; dryRun?: boolean; json?: boolean }, cmd: Command) => {
      if (opts.dryRun) {
        const t = await withRuntime(cmd, (rt) => rt.tenants.show(name));
        if (opts.json) return printJson({ dryRun: true, wouldDelete: t });
        return println(`Would delete tenant ${t.name} (${t.id}) and its store ${describeStore(t)}.`);
      }
      if (!opts.yes) throw new CustosError('validation_failed', 'deleting a tenant destroys its data for good; add --yes to confirm');
      const deleted = await withRuntime(cmd, (rt) => rt.tenants.delete(name, operatorActor()));
      if (opts.json) printJson({ deleted });
      else println(`Deleted tenant ${deleted.name} (${deleted.id}).`);
    });

  return tenant;
}
