import { readFile, writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { CustosError } from '../../core/errors.js';
import type { KeyRingView } from '../../crypto/key-service.js';
import { operatorActor } from '../../core/principal.js';
import { DEFAULT_REENCRYPT_BATCH } from '../../crypto/reencrypt.js';
import { keyOperations } from '../../ops/key-operations.js';
import type { Runtime } from '../../runtime.js';
import { withRuntime } from '../context.js';
import { printJson, println, printTable } from '../output.js';
import { progressBar } from '../progress.js';

function printRing(view: KeyRingView, tenant: string): void {
  println(`Tenant ${tenant}: ${view.mode}-managed key ring, ${view.state}, current version ${view.currentVersion ?? '-'}`);
  if (view.nextRotationAt) println(`Rotates every ${view.rotationPeriodDays} days; last ${view.lastRotatedAt}, next ${view.nextRotationAt}`);
  if (view.deletionDueAt) println(`Scheduled for deletion at ${view.deletionDueAt}`);
  printTable(
    ['VERSION', 'ORIGIN', 'STATE', 'CREATED', 'RETIRED'],
    view.versions.map((v) => [String(v.version), v.origin, v.state, v.createdAt, v.retiredAt ?? '']),
  );
}

function positiveInt(value: string): number {
  if (!/^\d+$/.test(value)) throw new CustosError('validation_failed', `${value} is not a positive integer`);
  return Number(value);
}

async function tenantId(rt: Runtime, name: string): Promise<string> {
  return (await rt.tenants.show(name)).id;
}

/** `custos keys …`: the key hierarchy, for provider operators. Never prints key material. */
export function keysCommand(): Command {
  const keys = new Command('keys').description('tenant key rings, rotation, re-encryption, customer-managed keys, the master key');
  const tenantOpt = (c: Command) => c.requiredOption('--tenant <name>', 'tenant name').option('--json', 'print JSON');

  tenantOpt(keys.command('list').description("show a tenant's key ring: versions, states, dates (never key material)")).action(async (opts: { tenant: string; json?: boolean }, cmd: Command) => {
    const view = await withRuntime(cmd, async (rt) => rt.keys.describe(await tenantId(rt, opts.tenant)));
    if (opts.json) printJson(view);
    else printRing(view, opts.tenant);
  });

  tenantOpt(keys.command('rotate').description('add a key version and rewrap every data key under it (no data is decrypted)')).action(async (opts: { tenant: string; json?: boolean }, cmd: Command) => {
    const r = await withRuntime(cmd, async (rt) => keyOperations.rotate(rt, await tenantId(rt, opts.tenant), operatorActor()));
    if (opts.json) printJson(r);
    else println(`Rotated: version ${r.version} is current; ${r.rewrapped} data key(s) rewrapped.`);
  });

  tenantOpt(
    keys
      .command('reencrypt')
      .description('re-encrypt all of a tenant\'s encrypted data under fresh data keys (resumable: run again after an interruption)')
      .option('--batch-size <n>', 'rows per transaction', String(DEFAULT_REENCRYPT_BATCH)),
  ).action(async (opts: { tenant: string; json?: boolean; batchSize: string }, cmd: Command) => {
    const batchSize = positiveInt(opts.batchSize);
    const bar = progressBar('re-encrypting');
    const report = await withRuntime(cmd, async (rt) =>
      keyOperations.reencrypt(rt, await tenantId(rt, opts.tenant), operatorActor(), { batchSize, onProgress: (p) => bar.update(p.processed, p.total) }),
    ).finally(() => bar.stop());
    if (opts.json) printJson(report);
    else println(`Re-encryption ${report.resumed ? 'resumed and ' : ''}finished: ${report.processed} value(s) visited, ${report.changed} re-encrypted.`);
  });

  keys
    .command('rotation')
    .description('set how often a provider-managed key rotates automatically')
    .requiredOption('--tenant <name>', 'tenant name')
    .requiredOption('--days <n>', 'rotation period in days (1-3650; default 365)')
    .action(async (opts: { tenant: string; days: string }, cmd: Command) => {
      await withRuntime(cmd, async (rt) => keyOperations.setRotationPeriod(rt, await tenantId(rt, opts.tenant), positiveInt(opts.days), operatorActor()));
      println(`Key of ${opts.tenant} rotates every ${opts.days} days.`);
    });

  keys
    .command('rotate-master')
    .description('rotate the provider master key: re-seal every tenant key ring under a new one (restart other nodes afterwards)')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const r = await withRuntime(cmd, (rt) => keyOperations.rotateMaster(rt, operatorActor()));
      if (opts.json) printJson(r);
      else println(`Master key rotated (${r.from} -> ${r.to}); ${r.rewrapped} key version(s) re-sealed.`);
    });

  tenantOpt(
    keys
      .command('import-params')
      .description('get the RSA-3072 public key to wrap customer key material with (RSA-OAEP, SHA-256); valid 24 hours')
      .option('--out <file>', 'also write the public key (PEM) to this file'),
  ).action(async (opts: { tenant: string; json?: boolean; out?: string }, cmd: Command) => {
    const params = await withRuntime(cmd, async (rt) => {
      const id = await tenantId(rt, opts.tenant);
      const p = await rt.keys.importParameters(id);
      // The same event as the API's, by an operator: in the tenant's stream and the provider stream, before the key is shown.
      const event = { type: 'keys.import.params', outcome: 'success' as const, actor: operatorActor(), resource: { type: 'key-ring', id } };
      await rt.audit.record(id, { ...event, details: { expiresAt: p.expiresAt } });
      await rt.audit.recordProvider({ ...event, details: { expiresAt: p.expiresAt, tenantId: id } });
      return p;
    });
    if (opts.out) await writeFile(opts.out, params.publicKeyPem);
    if (opts.json) return printJson(params);
    println(`Wrap 32 bytes of key material with RSAES-OAEP (SHA-256) under this key before ${params.expiresAt}:`);
    println(params.publicKeyPem.trimEnd());
  });

  tenantOpt(keys.command('import').description('import wrapped customer key material; the ring becomes customer-managed').requiredOption('--file <file>', 'the wrapped key material (binary)')).action(
    async (opts: { tenant: string; json?: boolean; file: string }, cmd: Command) => {
      const wrapped = await readFile(opts.file);
      const r = await withRuntime(cmd, async (rt) => keyOperations.importKeyMaterial(rt, await tenantId(rt, opts.tenant), wrapped, operatorActor()));
      if (opts.json) printJson(r);
      else println(`Imported as version ${r.version}; ${r.rewrapped} data key(s) rewrapped. The key is customer-managed.`);
    },
  );

  for (const [name, description] of [
    ['disable', 'disable a customer-managed key: all reads and writes of encrypted data fail until enabled'],
    ['enable', 'enable a disabled customer-managed key'],
    ['cancel-deletion', 'cancel a scheduled key deletion (the key comes back disabled)'],
  ] as const) {
    keys
      .command(name)
      .description(description)
      .requiredOption('--tenant <name>', 'tenant name')
      .action(async (opts: { tenant: string }, cmd: Command) => {
        await withRuntime(cmd, async (rt) => {
          const id = await tenantId(rt, opts.tenant);
          if (name === 'disable') await keyOperations.disable(rt, id, operatorActor());
          else if (name === 'enable') await keyOperations.enable(rt, id, operatorActor());
          else await keyOperations.cancelDeletion(rt, id, operatorActor());
        });
        println(`Key of ${opts.tenant}: ${name === 'enable' ? 'enabled' : name === 'disable' ? 'disabled' : 'deletion cancelled, key disabled'}.`);
      });
  }

  keys
    .command('schedule-deletion')
    .description('schedule destruction of a customer-managed key in 7-30 days (crypto-shredding); unusable from now on')
    .requiredOption('--tenant <name>', 'tenant name')
    .requiredOption('--days <n>', 'days until destruction (7-30)')
    .action(async (opts: { tenant: string; days: string }, cmd: Command) => {
      await withRuntime(cmd, async (rt) => keyOperations.scheduleDeletion(rt, await tenantId(rt, opts.tenant), positiveInt(opts.days), operatorActor()));
      println(`Key of ${opts.tenant} will be destroyed in ${opts.days} days unless the deletion is cancelled.`);
    });

  return keys;
}
