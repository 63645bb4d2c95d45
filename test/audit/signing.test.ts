import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuditSigner, ensureAuditSigningKey, signingKeyFiles } from '../../src/audit/signing-key.js';
import { createLogger } from '../../src/core/logger.js';
import { openRuntime } from '../../src/runtime.js';
import { describeEachStorage, makeTestEnv, type TestEnv } from '../helpers/storage-kinds.js';

describe('activity-stream signing key', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'custos-sign-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is created once (Ed25519, PKCS#8 PEM, 0600, with its public key) and kept afterwards', async () => {
    const first = await ensureAuditSigningKey(dir);
    expect(first.created).toBe(true);
    const files = signingKeyFiles(dir);
    expect(readFileSync(files.key, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(readFileSync(files.pub, 'utf8')).toMatch(/^-----BEGIN PUBLIC KEY-----/);
    expect(statSync(files.key).mode & 0o777).toBe(0o600);
    const before = readFileSync(files.key, 'utf8');
    expect((await ensureAuditSigningKey(dir)).created).toBe(false);
    expect(readFileSync(files.key, 'utf8')).toBe(before);
  });

  it('signs checkpoints that verify, and any change to a member breaks the signature', async () => {
    const signer = await AuditSigner.load(dir);
    const c = signer.sign({ kind: 'checkpoint', stream: 'provider', seq: 1000, hash: 'ab'.repeat(32), time: '2026-01-01T00:00:00.000Z' });
    expect(c).toMatchObject({ v: 1, keyId: signer.keyId });
    expect(signer.verify(c)).toBe(true);
    for (const tampered of [{ seq: 1001 }, { hash: 'cd'.repeat(32) }, { stream: '01aaaaaaaaaaaaaaaaaaaaaaaa' }, { kind: 'anchor' as const }, { time: '2026-01-01T00:00:00.001Z' }, { signature: c.signature.replace(/^./, (ch) => (ch === 'A' ? 'B' : 'A')) }]) {
      expect(signer.verify({ ...c, ...tampered })).toBe(false);
    }
    const other = generateKeyPairSync('ed25519');
    const stranger = new AuditSigner(other.publicKey, other.privateKey);
    expect(stranger.verify(c)).toBe(false);
  });

  it('refuses a key readable by others, a missing key, and a public key of another pair', async () => {
    const files = signingKeyFiles(dir);
    chmodSync(files.key, 0o644);
    await expect(AuditSigner.load(dir)).rejects.toMatchObject({ code: 'invalid_configuration', message: expect.stringMatching(/chmod 600/) });
    chmodSync(files.key, 0o600);
    const other = generateKeyPairSync('ed25519');
    const pub = readFileSync(files.pub);
    writeFileSync(files.pub, other.publicKey.export({ type: 'spki', format: 'pem' }));
    await expect(AuditSigner.load(dir)).rejects.toMatchObject({ code: 'invalid_configuration', message: expect.stringMatching(/not the public half/) });
    writeFileSync(files.pub, pub);
    await expect(AuditSigner.load(path.join(dir, 'nowhere'))).rejects.toMatchObject({ code: 'invalid_configuration', message: expect.stringMatching(/run custos init/) });
  });
});

describeEachStorage('activity stream: deployment configuration', (kind) => {
  let env: TestEnv | undefined;
  afterEach(async () => {
    await env?.cleanup();
    env = undefined;
  });

  it('refuses a checkpoint sink inside the data directory', async () => {
    env = await makeTestEnv(kind);
    for (const dir of [env.dataDir, path.join(env.dataDir, 'sink')]) {
      await expect(openRuntime({ ...env.config, auditCheckpointDir: dir }, { logger: createLogger('silent') })).rejects.toMatchObject({
        code: 'invalid_configuration',
        message: expect.stringMatching(/outside the data directory/),
      });
    }
    const rt = await openRuntime({ ...env.config, auditCheckpointDir: `${env.dataDir}-sink` }, { logger: createLogger('silent') });
    await rt.close();
  });

  it('refuses to start without the signing key (run custos init)', async () => {
    env = await makeTestEnv(kind);
    rmSync(signingKeyFiles(env.dataDir).key);
    await expect(openRuntime(env.config, { logger: createLogger('silent') })).rejects.toMatchObject({ code: 'invalid_configuration', message: expect.stringMatching(/run custos init/) });
  });
});
