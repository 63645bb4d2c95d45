import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { createLogger } from '../../src/core/logger.js';
import { MAIL_RETRY_DELAYS_MS, MailService } from '../../src/notify/mail-service.js';
import { startSmtpServer } from '../helpers/smtp.js';
import { describeEachStorage, makeRuntime, type TestRuntime, TEST_OPERATOR } from '../helpers/storage-kinds.js';

describeEachStorage('mail', (kind) => {
  let rt: TestRuntime;
  let tenant: string;
  const clock = new ManualClock(Date.UTC(2026, 10, 1));

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    tenant = (await rt.tenants.create({ name: 'mailco', edition: 'standard', adminEmail: 'a@mailco.example' }, TEST_OPERATOR)).id;
  });
  afterAll(async () => rt.close());

  describe('embedded outbox (no SMTP)', () => {
    it('keeps messages in the outbox, readable with their body', async () => {
      await rt.storage.tenant(tenant).transaction((db) => rt.mail.enqueue(db, tenant, { kind: 'auth.device-code', to: 'jane@mailco.example', subject: 'Your code', text: 'Code: 123456' }));
      const list = await rt.mail.list(tenant);
      expect(list[0]).toMatchObject({ kind: 'auth.device-code', to: 'jane@mailco.example', subject: 'Your code', text: 'Code: 123456', state: 'stored' });
      expect((await rt.mail.deliverDue(tenant)).sent).toBe(0);
    });

    it('writes nothing when the transaction that queued the mail rolls back', async () => {
      const before = (await rt.mail.list(tenant)).length;
      await expect(
        rt.storage.tenant(tenant).transaction(async (db) => {
          await rt.mail.enqueue(db, tenant, { kind: 'auth.password-reset', to: 'x@mailco.example', subject: 'Reset', text: 'link' });
          throw new Error('change failed');
        }),
      ).rejects.toThrow('change failed');
      expect((await rt.mail.list(tenant)).length).toBe(before);
    });
  });

  describe('SMTP', () => {
    it('sends over SMTP with credentials, then erases the body', async () => {
      const smtp = await startSmtpServer({ user: 'custos', pass: 's3cret' });
      const mail = new MailService({ storage: rt.storage, clock, logger: createLogger('silent'), smtpUrl: smtp.url, mailFrom: 'Custos <no-reply@custos.example>' });
      try {
        const id = await rt.storage.tenant(tenant).transaction((db) => mail.enqueue(db, tenant, { kind: 'alert', to: 'ops@mailco.example', subject: 'Alert: lockouts', text: '3 lockouts in 10 minutes' }));
        expect(await mail.deliverDue(tenant)).toEqual({ sent: 1, failed: 0, retrying: 0 });
        expect(smtp.received).toEqual([{ from: 'no-reply@custos.example', to: ['ops@mailco.example'], subject: 'Alert: lockouts', text: '3 lockouts in 10 minutes\n', user: 'custos' }]);
        const row = (await mail.list(tenant)).find((m) => m.id === id)!;
        expect(row).toMatchObject({ state: 'sent', text: null, attempts: 1 });
        // Nothing is sent twice.
        expect((await mail.deliverDue(tenant)).sent).toBe(0);
      } finally {
        mail.close();
        await smtp.close();
      }
    });

    it('retries with backoff when the server refuses, and fails after the last retry', async () => {
      const smtp = await startSmtpServer();
      const mail = new MailService({ storage: rt.storage, clock, logger: createLogger('silent'), smtpUrl: smtp.url, mailFrom: 'custos@custos.example' });
      try {
        smtp.failNext(2);
        const id = await rt.storage.tenant(tenant).transaction((db) => mail.enqueue(db, tenant, { kind: 'alert', to: 'ops@mailco.example', subject: 'Retry me', text: 'body' }));
        expect((await mail.deliverDue(tenant)).retrying).toBe(1);
        // Not due again before its backoff.
        expect((await mail.deliverDue(tenant)).retrying).toBe(0);
        clock.advance(MAIL_RETRY_DELAYS_MS[0]);
        expect((await mail.deliverDue(tenant)).retrying).toBe(1);
        clock.advance(MAIL_RETRY_DELAYS_MS[1]);
        expect((await mail.deliverDue(tenant)).sent).toBe(1);
        expect(smtp.received.map((m) => m.subject)).toEqual(['Retry me']);
        expect((await mail.list(tenant)).find((m) => m.id === id)).toMatchObject({ state: 'sent', attempts: 3 });

        smtp.failNext(100);
        const doomed = await rt.storage.tenant(tenant).transaction((db) => mail.enqueue(db, tenant, { kind: 'alert', to: 'ops@mailco.example', subject: 'Never', text: 'x' }));
        for (const delay of [0, ...MAIL_RETRY_DELAYS_MS]) {
          clock.advance(delay);
          await mail.deliverDue(tenant);
        }
        const row = (await mail.list(tenant)).find((m) => m.id === doomed)!;
        expect(row.state).toBe('failed');
        expect(row.attempts).toBe(MAIL_RETRY_DELAYS_MS.length + 1);
        expect(row.lastError).toMatch(/451/);
      } finally {
        mail.close();
        await smtp.close();
      }
    });

    it('keeps retrying when the server is unreachable', async () => {
      const mail = new MailService({ storage: rt.storage, clock, logger: createLogger('silent'), smtpUrl: 'smtp://127.0.0.1:1', mailFrom: 'custos@custos.example' });
      try {
        await rt.storage.tenant(tenant).transaction((db) => mail.enqueue(db, tenant, { kind: 'alert', to: 'ops@mailco.example', subject: 'Unreachable', text: 'x' }));
        expect(await mail.deliverDue(tenant)).toEqual({ sent: 0, failed: 0, retrying: 1 });
        expect((await mail.list(tenant)).find((m) => m.subject === 'Unreachable')?.lastError).toMatch(/ECONNREFUSED|connect/i);
      } finally {
        mail.close();
      }
    });
  });
});
