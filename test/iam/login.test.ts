import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { DEFAULT_SECURITY_SETTINGS } from '../../src/iam/security-settings.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { authFromCookie, cookieValue, createUser, deviceCodeFrom, lastMail, signIn, strongPassword, tenantWithAdmin, totpNow, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

const MIN = 60_000;

describeEachStorage('sign-in and sessions', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  let t: { tenantId: string; name: string; admin: SignedIn; adminEmail: string };

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'signin');
  });
  // Tests move the clock by hours and days: every test starts with a fresh administrator session.
  beforeEach(async () => {
    if ((await app.inject({ url: '/api/v1/me', headers: { cookie: t.admin.cookie } })).statusCode !== 200) {
      t.admin = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'admin', password: t.admin.password, deviceCookie: t.admin.deviceCookie, email: t.adminEmail });
    }
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  const login = (username: string, password: string, extra: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username, password }, headers: extra });
  const putSettings = async (patch: (s: typeof DEFAULT_SECURITY_SETTINGS) => void) => {
    const current = structuredClone(await rt.securitySettings.get(t.tenantId));
    patch(current);
    await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, current));
  };
  /** A fresh console user, signed in once (device trusted, password changed). */
  const freshUser = async (username: string, roles: string[] = ['viewer']) => {
    const u = await createUser(rt, t, t.admin.cookie, { username, roles });
    const s = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username, password: u.temporaryPassword, email: u.email });
    return { ...u, ...s };
  };

  describe('temporary passwords and first sign-in', () => {
    it('ASVS 6.4.1: initial passwords are random, meet the policy, expire after 72 hours and must be changed at first sign-in', async () => {
      const u = await createUser(rt, t, t.admin.cookie, { username: 'newbie', roles: ['viewer'] });
      expect(u.temporaryPassword).toMatch(/^\S{24}$/);
      const other = await createUser(rt, t, t.admin.cookie, { username: 'newbie2', roles: ['viewer'] });
      expect(other.temporaryPassword).not.toBe(u.temporaryPassword);
      // First sign-in: device code, then the password change is demanded.
      let res = await login('newbie', u.temporaryPassword);
      expect(res.json()).toMatchObject({ status: 'challenge', challenge: 'device_verification_required' });
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken: res.json().flowToken, code: deviceCodeFrom((await lastMail(rt, t.tenantId, 'auth.device-code', u.email)).text) } });
      expect(res.json()).toMatchObject({ status: 'challenge', challenge: 'password_change_required' });
      const flowToken = res.json().flowToken;
      // The temporary password cannot become the long-term one.
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: t.name, flowToken, currentPassword: u.temporaryPassword, newPassword: u.temporaryPassword } });
      expectProblem(res, 400, 'password_rejected');
      const next = strongPassword();
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: t.name, flowToken, currentPassword: u.temporaryPassword, newPassword: next } });
      expect(res.json().status).toBe('ok');
      // The temporary password no longer works.
      expectProblem(await login('newbie', u.temporaryPassword), 401, 'invalid_credentials');
      // newbie2 never signed in: 72 hours later its temporary password is dead.
      clock.advance(72 * 3600 * 1000 + 1);
      expectProblem(await login('newbie2', other.temporaryPassword), 401, 'invalid_credentials');
      const ev = (await rt.audit.query(t.tenantId, { types: ['auth.login.failure'], limit: 1 })).events[0]!;
      expect(ev.details).toMatchObject({ reason: 'temporary_password_expired' });
    });

    it('the first administrator of a tenant must change the temporary password too', async () => {
      const auth = await authFromCookie(rt, t.tenantId, t.admin.cookie);
      expect(auth.username).toBe('admin');
      const row = await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('users').select(['must_change_password', 'password_expires_at']).where('username', '=', 'admin').executeTakeFirstOrThrow());
      expect(row).toEqual({ must_change_password: 0, password_expires_at: null });
    });
  });

  describe('new-device verification', () => {
    it('asks for a mailed 6-digit code on an unknown device, trusts the device afterwards', async () => {
      const u = await freshUser('traveller');
      // With the device cookie: no code.
      expect((await login('traveller', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
      // Without it: a code, mailed to the user.
      const res = await login('traveller', u.password);
      expect(res.json()).toMatchObject({ status: 'challenge', challenge: 'device_verification_required' });
      const mail = await lastMail(rt, t.tenantId, 'auth.device-code', u.email);
      expect(mail.text).toMatch(/Verification code: \d{6}/);
      // Another user's device cookie does not count.
      const other = await freshUser('stranger');
      expect((await login('traveller', u.password, { cookie: other.deviceCookie })).json().challenge).toBe('device_verification_required');
    });

    it('ASVS 6.5.1 / 6.5.5: the device code is single use, valid 10 minutes, 5 tries', async () => {
      const u = await freshUser('codeuser');
      const start = await login('codeuser', u.password);
      const flowToken = start.json().flowToken;
      const code = deviceCodeFrom((await lastMail(rt, t.tenantId, 'auth.device-code', u.email)).text);
      const wrong = code === '000000' ? '111111' : '000000';
      for (let i = 0; i < 4; i++) expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken, code: wrong } }), 401, 'invalid_code');
      // Fifth wrong try ends the sign-in: even the right code fails afterwards.
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken, code: wrong } }), 401, 'invalid_code');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken, code } }), 401, 'invalid_code');

      // Expiry after 10 minutes.
      const again = await login('codeuser', u.password);
      const code2 = deviceCodeFrom((await lastMail(rt, t.tenantId, 'auth.device-code', u.email)).text);
      clock.advance(10 * MIN + 1);
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken: again.json().flowToken, code: code2 } }), 401, 'invalid_code');

      // Single use.
      const third = await login('codeuser', u.password);
      const code3 = deviceCodeFrom((await lastMail(rt, t.tenantId, 'auth.device-code', u.email)).text);
      const ok = await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken: third.json().flowToken, code: code3 } });
      expect(ok.json().status).toBe('ok');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken: third.json().flowToken, code: code3 } }), 401, 'invalid_code');
    });
  });

  describe('passwords', () => {
    it('ASVS 6.2.1: refuses passwords below the minimum length (12 by default, never configurable below 6)', async () => {
      const u = await freshUser('shorty');
      const change = (newPassword: string) => app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword } });
      const res = await change('Tr0ub4dor&3');
      expectProblem(res, 400, 'password_rejected');
      expect(res.json().reasons).toContain('must be at least 12 characters');
      await expect(putSettings((s) => (s.password.minLength = 5))).rejects.toMatchObject({ code: 'validation_failed' });
    });

    it('ASVS 6.2.3: changing the password needs the current one', async () => {
      const u = await freshUser('changer');
      const next = strongPassword();
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: 'not-my-password-at-all', newPassword: next } }), 401, 'invalid_credentials');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { newPassword: next } }), 400, 'validation_failed');
      const ok = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: next } });
      expect(ok.statusCode, ok.body).toBe(200);
      expect((await login('changer', next, { cookie: u.deviceCookie })).json().status).toBe('ok');
    });

    it('ASVS 6.2.4: refuses common passwords (and the username, reversed or not)', async () => {
      const u = await freshUser('commonuser');
      for (const pw of ['1qaz2wsx3edc', '123456qwerty', 'QWERTY123456', 'finalfantasy']) {
        const res = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: pw } });
        expectProblem(res, 400, 'password_rejected');
      }
      // The username rule, on a user whose name is long enough to be a password.
      const named = await freshUser('averylongusername');
      for (const pw of ['averylongusername', 'emanresugnolyreva', 'AVERYLONGUSERNAME']) {
        const res = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: named.headers, payload: { currentPassword: named.password, newPassword: pw } });
        expect(res.json().reasons).toContain('must not be the username or the username reversed');
      }
      await putSettings((s) => (s.password.minLength = 6));
      try {
        const res = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: 'iloveyou' } });
        expectProblem(res, 400, 'password_rejected');
        expect(res.json().reasons).toContain('is too common');
      } finally {
        await putSettings((s) => (s.password.minLength = 12));
      }
    });

    it('ASVS 6.2.8: verifies the password exactly as received: no truncation, no case change, Unicode kept', async () => {
      const u = await freshUser('exact');
      const pw = `Ünïcødé pass phrase 🔐 ${'x'.repeat(150)} END`;
      expect((await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: pw } })).statusCode).toBe(200);
      expect((await login('exact', pw, { cookie: u.deviceCookie })).json().status).toBe('ok');
      for (const near of [pw.slice(0, 72), pw.slice(0, -1), pw.toUpperCase(), pw.toLowerCase(), pw.normalize('NFD'), ` ${pw}`, `${pw} `]) {
        expectProblem(await login('exact', near, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      }
    });

    it('ASVS 6.2.9: permits passwords of 64 characters and more (up to the policy maximum of 256)', async () => {
      const u = await freshUser('longpw');
      const p64 = `${'a1B!'.repeat(16)}`;
      expect((await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: p64 } })).statusCode).toBe(200);
      const p256 = `Z${'q7#'.repeat(85)}`;
      expect([...p256]).toHaveLength(256);
      expect((await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: p64, newPassword: p256 } })).statusCode).toBe(200);
      expect((await login('longpw', p256, { cookie: u.deviceCookie })).json().status).toBe('ok');
      const tooLong = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: p256, newPassword: `${p256}x` } });
      expectProblem(tooLong, 400, 'password_rejected');
    });

    it('applies the optional Responsys rules and refuses the last 5 passwords', async () => {
      const u = await freshUser('ruled');
      await putSettings((s) => Object.assign(s.password, { requireLowercase: true, requireUppercase: true, requireDigit: true, requireSpecial: true, firstAndLastNonNumeric: true }));
      try {
        const change = (cur: string, next: string) => app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: cur, newPassword: next } });
        const res = await change(u.password, '1abcdefghijklmno1');
        expectProblem(res, 400, 'password_rejected');
        expect(res.json().reasons).toEqual(expect.arrayContaining(['must contain an upper-case letter', 'must contain one of !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~', 'must not start or end with a digit']));
        let current = u.password;
        const used: string[] = [current];
        for (let i = 0; i < 5; i++) {
          const next = `Rotation-${i}-Pass!x`;
          expect((await change(current, next)).statusCode).toBe(200);
          used.push(next);
          current = next;
        }
        // Each of the last 5 previous passwords (and the current one) is refused.
        for (const old of used.slice(-6, -1)) expectProblem(await change(current, old), 400, 'password_rejected');
      } finally {
        await putSettings((s) => Object.assign(s.password, { requireLowercase: false, requireUppercase: false, requireDigit: false, requireSpecial: false, firstAndLastNonNumeric: false }));
      }
    });
  });

  describe('failures, lockout and enumeration', () => {
    it('ASVS 6.3.8: unknown user, wrong password, suspended and locked accounts answer the same, in about the same time', async () => {
      const u = await freshUser('same-answer');
      const suspended = await freshUser('suspended-one');
      const auth = await authFromCookie(rt, t.tenantId, t.admin.cookie);
      await rt.users.suspend(auth, t.tenantId, suspended.userId);
      const bodies: string[] = [];
      const time = async (username: string, password: string) => {
        const t0 = performance.now();
        const res = await login(username, password);
        const ms = performance.now() - t0;
        expect(res.statusCode).toBe(401);
        const { requestId: _r, ...rest } = res.json();
        bodies.push(JSON.stringify(rest));
        return ms;
      };
      const samples: Record<string, number[]> = { unknown: [], wrong: [], suspended: [] };
      // Seven rounds: the median of each path stays steady on a busy machine (four were seen to tip over).
      for (let i = 0; i < 7; i++) {
        samples.unknown!.push(await time('nobody-by-that-name', 'whatever-password'));
        samples.wrong!.push(await time('same-answer', 'wrong-password-here'));
        samples.suspended!.push(await time('suspended-one', suspended.password));
      }
      expect(new Set(bodies).size).toBe(1);
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      const m = Object.values(samples).map(median);
      // Every path runs one argon2id verification (~tens of ms): no path is several times faster.
      expect(Math.max(...m) / Math.min(...m)).toBeLessThan(2.5);
      void u;
    });

    it('ASVS 6.3.1: locks the account after 5 consecutive failures for 60 minutes, mails the user, and records it', async () => {
      const u = await freshUser('lockme');
      for (let i = 0; i < 4; i++) expectProblem(await login('lockme', 'wrong-password-here'), 401, 'invalid_credentials');
      // A success in between resets the counter.
      expect((await login('lockme', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
      for (let i = 0; i < 5; i++) expectProblem(await login('lockme', 'wrong-password-here'), 401, 'invalid_credentials');
      // Locked: even the right password fails, with the same answer.
      expectProblem(await login('lockme', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      expect((await lastMail(rt, t.tenantId, 'auth.lockout', u.email)).subject).toMatch(/locked/);
      const lockouts = (await rt.audit.query(t.tenantId, { types: ['auth.lockout'], limit: 10 })).events.filter((e) => e.resource?.name === 'lockme');
      expect(lockouts).toHaveLength(1);
      clock.advance(59 * MIN);
      expectProblem(await login('lockme', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      clock.advance(2 * MIN);
      expect((await login('lockme', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
    });

    it('supports a custom threshold and duration, and administrator-only unlock', async () => {
      const u = await freshUser('adminlock');
      await putSettings((s) => (s.lockout = { threshold: 3, mode: 'admin', durationMinutes: 60 }));
      try {
        for (let i = 0; i < 3; i++) await login('adminlock', 'wrong-password-here');
        clock.advance(7 * 24 * 60 * MIN);
        expectProblem(await login('adminlock', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
        const admin = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'admin', password: t.admin.password, deviceCookie: t.admin.deviceCookie, email: t.adminEmail });
        const auth = await authFromCookie(rt, t.tenantId, admin.cookie);
        expect((await rt.users.get(auth, t.tenantId, u.userId)).lockedUntil).toBe('until-unlocked');
        await rt.users.unlock(auth, t.tenantId, u.userId);
        expect((await login('adminlock', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
        await putSettings((s) => (s.lockout = { threshold: 2, mode: 'duration', durationMinutes: 5 }));
        for (let i = 0; i < 2; i++) await login('adminlock', 'wrong-password-here');
        expectProblem(await login('adminlock', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
        clock.advance(5 * MIN + 1);
        expect((await login('adminlock', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
      } finally {
        await putSettings((s) => (s.lockout = { ...DEFAULT_SECURITY_SETTINGS.lockout }));
      }
    });

    it('keeps API users out of the console and console users out of API tokens', async () => {
      const api = await createUser(rt, t, t.admin.cookie, { username: 'robot', kind: 'api', roles: ['viewer'] });
      expectProblem(await login('robot', api.temporaryPassword), 401, 'invalid_credentials');
      const u = await freshUser('human');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'human', password: u.password } }), 401, 'invalid_credentials');
      // The API user's first token request asks for the password change, then issues a 1-hour token.
      const first = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot', password: api.temporaryPassword } });
      expect(first.json()).toMatchObject({ status: 'challenge', challenge: 'password_change_required' });
      const next = strongPassword();
      const changed = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: t.name, flowToken: first.json().flowToken, currentPassword: api.temporaryPassword, newPassword: next } });
      expect(changed.statusCode).toBe(200);
      // The API user's token comes in the body, never as a session cookie.
      expect(changed.json().accessToken).toMatch(/^[0-9a-z]{26}\./);
      expect(changed.cookies.find((c) => c.name === 'custos_session')).toBeUndefined();
      const tok = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot', password: next } });
      expect(tok.json()).toMatchObject({ status: 'ok', tokenType: 'Bearer', expiresIn: 3600 });
      const me = await app.inject({ url: '/api/v1/me', headers: { authorization: `Bearer ${tok.json().accessToken}` } });
      expect(me.json()).toMatchObject({ username: 'robot', kind: 'api', via: 'token' });
      // A bearer token is not a console session and a session cookie is not a token.
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: `custos_session=${tok.json().accessToken}` } }), 401, 'authentication_required');
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { authorization: `Bearer ${u.cookie.split('=')[1]}` } }), 401, 'authentication_required');
      clock.advance(3600 * 1000 + 1);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { authorization: `Bearer ${tok.json().accessToken}` } }), 401, 'authentication_required');
    });
  });

  describe('password reset', () => {
    it('always answers 202 and mails a single-use link valid 2 hours', async () => {
      const u = await freshUser('forgetful');
      const ask = (username: string) => app.inject({ method: 'POST', url: '/api/v1/auth/password/forgot', payload: { tenant: t.name, username } });
      const unknown = await ask('no-such-user');
      const known = await ask('forgetful');
      expect([unknown.statusCode, known.statusCode]).toEqual([202, 202]);
      expect(unknown.body).toBe(known.body);
      const link = (await lastMail(rt, t.tenantId, 'auth.password-reset', u.email)).text;
      const token = decodeURIComponent(/token=([^\s&]+)/.exec(link)![1]!);
      const next = strongPassword();
      const reset = (tok: string, pw: string) => app.inject({ method: 'POST', url: '/api/v1/auth/password/reset', payload: { tenant: t.name, token: tok, newPassword: pw } });
      expect((await reset(token, next)).statusCode).toBe(204);
      expectProblem(await reset(token, strongPassword()), 401, 'invalid_code');
      // The reset ended the user's sessions.
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      expect((await login('forgetful', next, { cookie: u.deviceCookie })).json().status).toBe('ok');
      // A link older than 2 hours is dead.
      await ask('forgetful');
      const late = decodeURIComponent(/token=([^\s&]+)/.exec((await lastMail(rt, t.tenantId, 'auth.password-reset', u.email)).text)![1]!);
      clock.advance(2 * 3600 * 1000 + 1);
      expectProblem(await reset(late, strongPassword()), 401, 'invalid_code');
    });

    it('lets an Account Administrator trigger a reset, and a Viewer not', async () => {
      const u = await freshUser('reset-by-admin');
      const admin = await authFromCookie(rt, t.tenantId, t.admin.cookie);
      await rt.users.triggerPasswordReset(admin, { id: t.tenantId, name: t.name }, u.userId);
      expect((await lastMail(rt, t.tenantId, 'auth.password-reset', u.email)).text).toMatch(/reset-password\?tenant=signin&token=/);
      const viewer = await authFromCookie(rt, t.tenantId, u.cookie);
      await expect(rt.users.triggerPasswordReset(viewer, { id: t.tenantId, name: t.name }, u.userId)).rejects.toMatchObject({ code: 'forbidden' });
    });
  });

  describe('MFA', () => {
    it('ASVS 6.4.3: a password reset does not bypass MFA', async () => {
      const u = await freshUser('mfa-reset');
      const begin = await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp', headers: u.headers, payload: { password: u.password } });
      expect(begin.statusCode, begin.body).toBe(200);
      const secret = begin.json().secret as string;
      const confirm = await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp/confirm', headers: u.headers, payload: { code: totpNow(secret, clock.now()) } });
      expect(confirm.json().recoveryCodes).toHaveLength(10);
      clock.advance(31_000);
      await app.inject({ method: 'POST', url: '/api/v1/auth/password/forgot', payload: { tenant: t.name, username: 'mfa-reset' } });
      const token = decodeURIComponent(/token=([^\s&]+)/.exec((await lastMail(rt, t.tenantId, 'auth.password-reset', u.email)).text)![1]!);
      const next = strongPassword();
      expect((await app.inject({ method: 'POST', url: '/api/v1/auth/password/reset', payload: { tenant: t.name, token, newPassword: next } })).statusCode).toBe(204);
      const res = await login('mfa-reset', next, { cookie: u.deviceCookie });
      expect(res.json()).toMatchObject({ status: 'challenge', challenge: 'mfa_required' });
      expect(res.json().mfaEnrollment).toBeUndefined();
      expect(cookieValue(res, 'custos_session')).toBeUndefined();
    });

    it('ASVS 6.5.1: TOTP codes and recovery codes work once', async () => {
      const u = await freshUser('mfa-once');
      const secret = (await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp', headers: u.headers, payload: { password: u.password } })).json().secret as string;
      const codes = (await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp/confirm', headers: u.headers, payload: { code: totpNow(secret, clock.now()) } })).json().recoveryCodes as string[];
      clock.advance(30_000);
      const challenge = async () => (await login('mfa-once', u.password, { cookie: u.deviceCookie })).json().flowToken as string;
      const verify = (flowToken: string, body: Record<string, string>) => app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken, ...body } });
      const code = totpNow(secret, clock.now());
      expect((await verify(await challenge(), { code })).json().status).toBe('ok');
      expectProblem(await verify(await challenge(), { code }), 401, 'invalid_code');
      expect((await verify(await challenge(), { recoveryCode: codes[0]! })).json().status).toBe('ok');
      expectProblem(await verify(await challenge(), { recoveryCode: codes[0]! }), 401, 'invalid_code');
      expect((await verify(await challenge(), { recoveryCode: codes[1]!.toUpperCase() })).json().status).toBe('ok');
      const me = await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } });
      expect(me.json().mfa).toEqual({ enrolled: true, recoveryCodesLeft: 8 });
    });

    it('ASVS 6.5.5: a TOTP code lives one 30-second step (one step of clock skew either way)', async () => {
      const u = await freshUser('mfa-time');
      const secret = (await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp', headers: u.headers, payload: { password: u.password } })).json().secret as string;
      await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp/confirm', headers: u.headers, payload: { code: totpNow(secret, clock.now()) } });
      clock.advance(120_000);
      const flow = (await login('mfa-time', u.password, { cookie: u.deviceCookie })).json().flowToken as string;
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: flow, code: totpNow(secret, clock.now() - 90_000) } }), 401, 'invalid_code');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: flow, code: totpNow(secret, clock.now() + 90_000) } }), 401, 'invalid_code');
      expect((await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: flow, code: totpNow(secret, clock.now() - 30_000) } })).json().status).toBe('ok');
    });

    it('requires MFA by policy for chosen roles, enrolling at sign-in, and wrong codes count toward lockout', async () => {
      const u = await freshUser('must-mfa', ['data-director']);
      await putSettings((s) => (s.mfa = { required: 'roles', roles: ['data-director'] }));
      try {
        const res = await login('must-mfa', u.password, { cookie: u.deviceCookie });
        expect(res.json()).toMatchObject({ status: 'challenge', challenge: 'mfa_required' });
        const { secret, otpauthUri } = res.json().mfaEnrollment;
        expect(otpauthUri).toMatch(/^otpauth:\/\/totp\/Custos:signin%3Amust-mfa\?/);
        for (let i = 0; i < 4; i++) await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: res.json().flowToken, code: '000000' } });
        const ok = await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: res.json().flowToken, code: totpNow(secret, clock.now()) } });
        expect(ok.json().status).toBe('ok');
        expect(ok.json().recoveryCodes).toHaveLength(10);
        // A viewer is not asked.
        const v = await freshUser('no-mfa-viewer');
        expect((await login('no-mfa-viewer', v.password, { cookie: v.deviceCookie })).json().status).toBe('ok');
        // Five wrong codes in a row lock the account.
        clock.advance(30_000);
        for (let i = 0; i < 5; i++) {
          const f = await login('must-mfa', u.password, { cookie: u.deviceCookie });
          if (f.statusCode !== 200) break;
          await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: t.name, flowToken: f.json().flowToken, code: '000000' } });
        }
        expectProblem(await login('must-mfa', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      } finally {
        await putSettings((s) => (s.mfa = { required: 'none', roles: [] }));
      }
    });
  });

  describe('sessions', () => {
    it('sets the session cookie Secure, HttpOnly, SameSite=Strict and keeps the secret out of the body', async () => {
      const u = await freshUser('cookie-user');
      const res = await login('cookie-user', u.password, { cookie: u.deviceCookie });
      const c = res.cookies.find((x) => x.name === 'custos_session')!;
      expect(c).toMatchObject({ secure: true, httpOnly: true, sameSite: 'Strict', path: '/' });
      expect(res.body).not.toContain(c.value);
      const stored = await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('sessions').select('id_hash').execute());
      expect(stored.some((s) => s.id_hash.toString('latin1').includes(c.value))).toBe(false);
    });

    it('ASVS 7.2.4: issues a new session token at every sign-in and ends the one the browser held', async () => {
      const u = await freshUser('rotator');
      const res = await login('rotator', u.password, { cookie: `${u.deviceCookie}; ${u.cookie}` });
      const fresh = cookieValue(res, 'custos_session')!;
      expect(`custos_session=${fresh}`).not.toBe(u.cookie);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: `custos_session=${fresh}` } })).statusCode).toBe(200);
    });

    it('ASVS 7.3.1: ends a session idle longer than the timeout (30 minutes by default, 15 or 60 configurable)', async () => {
      const u = await freshUser('idler');
      clock.advance(29 * MIN);
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } })).statusCode).toBe(200);
      clock.advance(29 * MIN);
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } })).statusCode).toBe(200);
      clock.advance(31 * MIN);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      await putSettings((s) => (s.session.idleTimeoutMinutes = 15));
      try {
        const v = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'idler', password: u.password, deviceCookie: u.deviceCookie });
        clock.advance(16 * MIN);
        expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: v.cookie } }), 401, 'authentication_required');
        await expect(putSettings((s) => (s.session.idleTimeoutMinutes = 45 as 30))).rejects.toMatchObject({ code: 'validation_failed' });
      } finally {
        await putSettings((s) => (s.session.idleTimeoutMinutes = 30));
      }
    });

    it('ASVS 7.3.2: ends every session 12 hours after sign-in, however active', async () => {
      const u = await freshUser('marathon');
      // Active every 20 minutes (inside the 30-minute idle timeout) for 11 h 40 min…
      for (let i = 0; i < 35; i++) {
        clock.advance(20 * MIN);
        expect((await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } })).statusCode).toBe(200);
      }
      // …and still out at 12 hours.
      clock.advance(21 * MIN);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
    });

    it('ASVS 7.4.2: suspending or deleting a user ends its sessions and tokens at once', async () => {
      const u = await freshUser('to-suspend');
      const api = await createUser(rt, t, t.admin.cookie, { username: 'robot-suspend', kind: 'api', roles: ['viewer'] });
      const flow = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot-suspend', password: api.temporaryPassword } });
      const pw = strongPassword();
      await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: t.name, flowToken: flow.json().flowToken, currentPassword: api.temporaryPassword, newPassword: pw } });
      const token = (await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username: 'robot-suspend', password: pw } })).json().accessToken as string;
      const admin = await authFromCookie(rt, t.tenantId, t.admin.cookie);
      await rt.users.suspend(admin, t.tenantId, u.userId);
      await rt.users.suspend(admin, t.tenantId, api.id);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { authorization: `Bearer ${token}` } }), 401, 'authentication_required');
      expectProblem(await login('to-suspend', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      await rt.users.activate(admin, t.tenantId, u.userId);
      const again = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'to-suspend', password: u.password, deviceCookie: u.deviceCookie });
      await rt.users.delete(admin, t.tenantId, u.userId);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: again.cookie } }), 401, 'authentication_required');
    });

    it('ASVS 7.4.3: offers to end the other sessions after a password or MFA change', async () => {
      const u = await freshUser('multi-device');
      const second = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'multi-device', password: u.password, deviceCookie: u.deviceCookie });
      const next = strongPassword();
      const res = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: next, endOtherSessions: true } });
      expect(res.json()).toEqual({ endedSessions: 1 });
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: second.cookie } }), 401, 'authentication_required');
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } })).statusCode).toBe(200);
      // Without the option, other sessions stay.
      const third = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'multi-device', password: next, deviceCookie: u.deviceCookie });
      const secret = (await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp', headers: u.headers, payload: { password: next } })).json().secret as string;
      const conf = await app.inject({ method: 'POST', url: '/api/v1/me/mfa/totp/confirm', headers: u.headers, payload: { code: totpNow(secret, clock.now()), endOtherSessions: true } });
      expect(conf.json().endedSessions).toBe(1);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: third.cookie } }), 401, 'authentication_required');
    });

    it('ASVS 7.5.2: lists my sessions and ends others after re-entering my password', async () => {
      const u = await freshUser('session-viewer');
      const other = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'session-viewer', password: u.password, deviceCookie: u.deviceCookie });
      const list = (await app.inject({ url: '/api/v1/me/sessions', headers: { cookie: u.cookie } })).json().sessions as Array<{ id: string; current: boolean }>;
      expect(list).toHaveLength(2);
      expect(list.filter((s) => s.current)).toHaveLength(1);
      const target = list.find((s) => !s.current)!;
      const del = (payload: object) => app.inject({ method: 'DELETE', url: '/api/v1/me/sessions', headers: u.headers, payload });
      expectProblem(await del({ password: 'wrong-password-here', sessionId: target.id }), 401, 'invalid_credentials');
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: other.cookie } })).statusCode).toBe(200);
      expect((await del({ password: u.password, sessionId: target.id })).json()).toEqual({ ended: 1 });
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: other.cookie } }), 401, 'authentication_required');
      expectProblem(await del({ password: u.password, sessionId: target.id }), 404, 'not_found');
      // Signing out ends the current session.
      expect((await app.inject({ method: 'POST', url: '/api/v1/auth/logout', headers: u.headers })).statusCode).toBe(204);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
    });

    it('refuses cookie-authenticated changes without the CSRF token', async () => {
      const u = await freshUser('csrf-user');
      const payload = { currentPassword: u.password, newPassword: strongPassword() };
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: { cookie: u.cookie }, payload }), 403, 'csrf_invalid');
      expectProblem(await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: { cookie: u.cookie, 'x-csrf-token': t.admin.csrf }, payload }), 403, 'csrf_invalid');
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } })).statusCode).toBe(200); // reads need none
    });

    it("a session of one tenant is worthless at another tenant's routes", async () => {
      const other = await tenantWithAdmin(app, rt, 'other-co');
      const me = await app.inject({ url: '/api/v1/me', headers: { cookie: other.admin.cookie } });
      expect(me.json().tenant).toBe('other-co');
      // Forging the tenant part of the cookie gets nowhere: the secret belongs to one store.
      const forged = `custos_session=${t.tenantId}.${other.admin.cookie.split('.')[1]}`;
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: forged } }), 401, 'authentication_required');
    });
  });
});
