import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Config, LoadedConfig } from '../core/config.js';
import { CustosError } from '../core/errors.js';
import { writeSecretFile } from '../core/files.js';
import { ensureAuditSigningKey } from '../audit/signing-key.js';
import { createMasterKeyFile } from '../crypto/master-key.js';

export interface InitReport {
  dataDir: string;
  created: string[];
  kept: string[];
}

/** Whether `custos init` has run for this configuration: the master key exists. */
export function isInitialized(config: Config): boolean {
  return existsSync(config.masterKeyFile);
}

/**
 * Creates what a deployment needs on disk, keeping whatever already exists:
 * the data directory (0700), a self-signed certificate for localhost unless
 * the operator named their own, and the provider master key (0600). The
 * control store is created by the runtime that opens next.
 */
export async function initDataDir(loaded: LoadedConfig): Promise<InitReport> {
  const { config, sources } = loaded;
  const report: InitReport = { dataDir: config.dataDir, created: [], kept: [] };
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });

  const ownCert = sources.tlsCert !== 'default' || sources.tlsKey !== 'default';
  if (ownCert) {
    for (const f of [config.tlsCert, config.tlsKey]) {
      if (!existsSync(f)) throw new CustosError('invalid_configuration', `TLS file ${f} does not exist`);
    }
    report.kept.push(config.tlsCert);
  } else if (existsSync(config.tlsCert) && existsSync(config.tlsKey)) {
    report.kept.push(config.tlsCert);
  } else {
    await mkdir(path.dirname(config.tlsCert), { recursive: true, mode: 0o700 });
    // Loaded on demand: the X.509 library is only needed the first time.
    const { selfSignedCertificate } = await import('../crypto/self-signed.js');
    const pems = await selfSignedCertificate();
    await writeSecretFile(config.tlsKey, pems.key);
    await writeSecretFile(config.tlsCert, pems.cert);
    report.created.push(config.tlsCert, config.tlsKey);
  }

  if (existsSync(config.masterKeyFile)) {
    report.kept.push(config.masterKeyFile);
  } else {
    await mkdir(path.dirname(config.masterKeyFile), { recursive: true, mode: 0o700 });
    await createMasterKeyFile(config.masterKeyFile);
    report.created.push(config.masterKeyFile);
  }

  const signing = await ensureAuditSigningKey(config.dataDir);
  (signing.created ? report.created : report.kept).push(signing.file);
  return report;
}
