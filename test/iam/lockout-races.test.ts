import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import type * as PasswordHash from '../../src/crypto/password-hash.js';
import { AccountService } from '../../src/iam/account-service.js';
import { checkPassword } from '../../src/iam/password-policy.js';
import { DEFAULT_SECURITY_SETTINGS } from '../../src/iam/security-settings.js';
import { expectProblem, makeApp } from '../helpers/app.js';
import { apiUser, authFromCookie, createUser, deviceCodeFrom, lastMail, signIn, strongPassword, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

/**
 * A gate on password verification: the request verifying `password` stops
 * after argon2 has answered, until the test releases it. This pins the
 * interleaving a burst of concurrent guesses produces by chance (the right
 * password read the user before the lock and finishes after it).
 */
const gate = vi.hoisted(() => ({ held: null as null | { password: string; reached: () => void; release: Promise<void> } }));

vi.mock('../../src/crypto/password-hash.js', async (importOriginal) => {
  const real = await importOriginal<typeof PasswordHash>();
  return {
    ...real,
    async verifyPassword(phc: string, password: string): Promise<boolean> {
      const result = await real.verifyPassword(phc, password);
      const held = gate.held;
      if (held && password === held.password) {
        held.reached();
        await held.release;
      }
      return result;
    },
  };
});

/** Holds the next verifications of `password`; `reached` resolves when one is held. */
function hold(password: string): { reached: Promise<void>; release: () => void } {
  let reached!: () => void;
  let release!: () => void;
  const reachedP = new Promise<void>((r) => (reached = r));
  const releaseP = new Promise<void>((r) => (release = r));
  gate.held = { password, reached, release: releaseP };
  return {
    reached: reachedP,
    release: () => {
      gate.held = null;
      release();
    },
  };
}

const MIN = 60_000;

describeEachStorage('lockout under concurrency, after expiry and on re-authentication', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  const clock = new ManualClock(Date.now());
  let t: { tenantId: string; name: string; admin: SignedIn; adminEmail: string };

  const putSettings = async (patch: (s: typeof DEFAULT_SECURITY_SETTINGS) => void) => {
    const current = structuredClone(await rt.securitySettings.get(t.tenantId));
    patch(current);
    await rt.storage.tenant(t.tenantId).transaction((db) => rt.securitySettings.put(db, t.tenantId, current));
  };

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt);
    t = await tenantWithAdmin(app, rt, 'races');
    // Every test here fails many sign-ins from one address: the per-address throttle would answer 429 first.
    await putSettings((s) => (s.loginThrottle = { maxFailures: 0, windowMinutes: 15 }));
  });
  // Tests move the clock by hours: every test starts with a fresh administrator session.
  beforeEach(async () => {
    if ((await app.inject({ url: '/api/v1/me', headers: { cookie: t.admin.cookie } })).statusCode !== 200) {
      t.admin = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'admin', password: t.admin.password, deviceCookie: t.admin.deviceCookie, email: t.adminEmail });
    }
  });
  afterAll(async () => {
    gate.held = null;
    await app.close();
    await rt.close();
  });

  const token = (username: string, password: string) => app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: t.name, username, password } });
  const login = (username: string, password: string, extra: Record<string, string> = {}) =>
    app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: t.name, username, password }, headers: extra });
  const userRow = (id: string) => rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('users').select(['failed_attempts', 'locked_until']).where('id', '=', id).executeTakeFirstOrThrow());
  const sessionCount = async (id: string) => (await rt.storage.tenant(t.tenantId).transaction((db) => db.selectFrom('sessions').select('public_id').where('user_id', '=', id).execute())).length;
  const lockouts = async (username: string) => (await rt.audit.query(t.tenantId, { types: ['auth.lockout'], limit: 100 })).events.filter((e) => e.resource?.name === username);
  const unlock = async (id: string) => rt.users.unlock(await authFromCookie(rt, t.tenantId, t.admin.cookie), t.tenantId, id);
  /** A console user, signed in once (device trusted, temporary password changed). */
  const freshUser = async (username: string) => {
    const u = await createUser(rt, t, t.admin.cookie, { username, roles: ['viewer'] });
    return { ...u, ...(await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username, password: u.temporaryPassword, email: u.email })) };
  };

  describe('A: a correct password succeeds only if the account is unlocked when the sign-in commits', () => {
    it('ASVS 6.3.1: 19 wrong and 1 correct concurrent token requests (threshold 5): no token after the lock, and the lock stays', async () => {
      const api = await apiUser(app, rt, t, t.admin.cookie, 'burst-bot', ['viewer']);
      const sessionsBefore = await sessionCount(api.id);
      // The correct password reads the user (unlocked) and is verified; it commits only after the 19 wrong ones.
      const held = hold(api.password);
      const right = token('burst-bot', api.password);
      await held.reached;
      const wrong = await Promise.all(Array.from({ length: 19 }, (_, i) => token('burst-bot', `wrong-password-${i}-of-a-burst`)));
      held.release();
      for (const w of wrong) expectProblem(w, 401, 'invalid_credentials');
      // The same answer as every other failure: nothing tells the guesser the password was right.
      const refused = expectProblem(await right, 401, 'invalid_credentials');
      expect(refused).not.toHaveProperty('accessToken');
      expect(await sessionCount(api.id)).toBe(sessionsBefore);
      const row = await userRow(api.id);
      expect(row.failed_attempts).toBe(5);
      expect(Number(row.locked_until)).toBeGreaterThan(clock.now() + 59 * MIN);
      expect(await lockouts('burst-bot')).toHaveLength(1);
      const failures = (await rt.audit.query(t.tenantId, { types: ['auth.token.failure'], limit: 100 })).events.filter((e) => e.resource?.name === 'burst-bot');
      expect(failures.filter((e) => e.details?.reason === 'locked')).toHaveLength(15);
      // Still locked afterwards, to the correct password too.
      expectProblem(await token('burst-bot', api.password), 401, 'invalid_credentials');
    });

    it('ASVS 6.3.1: a correct password after fewer than 5 failures still signs in and resets the count', async () => {
      const api = await apiUser(app, rt, t, t.admin.cookie, 'steady-bot', ['viewer']);
      for (let i = 0; i < 4; i++) expectProblem(await token('steady-bot', 'wrong-password-here'), 401, 'invalid_credentials');
      expect((await userRow(api.id)).failed_attempts).toBe(4);
      expect((await token('steady-bot', api.password)).json()).toMatchObject({ status: 'ok' });
      expect(await userRow(api.id)).toEqual({ failed_attempts: 0, locked_until: null });
      // The count started over: four more failures do not lock.
      for (let i = 0; i < 4; i++) expectProblem(await token('steady-bot', 'wrong-password-here'), 401, 'invalid_credentials');
      expect((await token('steady-bot', api.password)).json()).toMatchObject({ status: 'ok' });
    });
  });

  describe('B: after a timed lock ends, failures count from 1 again', () => {
    it('ASVS 6.3.1: one wrong password after the lock expired does not lock again; five do', async () => {
      const u = await freshUser('expiry');
      for (let i = 0; i < 5; i++) expectProblem(await login('expiry', 'wrong-password-here'), 401, 'invalid_credentials');
      expect(Number((await userRow(u.userId)).locked_until)).toBeGreaterThan(clock.now());
      clock.advance(61 * MIN);
      expectProblem(await login('expiry', 'wrong-password-here'), 401, 'invalid_credentials');
      const after = await userRow(u.userId);
      expect(after.failed_attempts).toBe(1);
      expect(after.locked_until === null || Number(after.locked_until) <= clock.now()).toBe(true);
      expect((await login('expiry', u.password, { cookie: u.deviceCookie })).json().status).toBe('ok');
      expect(await userRow(u.userId)).toEqual({ failed_attempts: 0, locked_until: null });

      // Five consecutive failures after a lock ended lock again (and only the fifth).
      for (let i = 0; i < 5; i++) expectProblem(await login('expiry', 'wrong-password-here'), 401, 'invalid_credentials');
      clock.advance(61 * MIN);
      for (let i = 0; i < 4; i++) expectProblem(await login('expiry', 'wrong-password-here'), 401, 'invalid_credentials');
      expect((await userRow(u.userId)).failed_attempts).toBe(4);
      expect(await lockouts('expiry')).toHaveLength(2);
      expectProblem(await login('expiry', 'wrong-password-here'), 401, 'invalid_credentials');
      expect(await lockouts('expiry')).toHaveLength(3);
      expectProblem(await login('expiry', u.password, { cookie: u.deviceCookie }), 401, 'invalid_credentials');
    });
  });

  describe('C: a wrong current password on signed-in endpoints counts toward the lockout', () => {
    it('ASVS 6.3.1: 5 wrong current passwords to POST /me/password with a bearer token lock the account and end the token', async () => {
      const api = await apiUser(app, rt, t, t.admin.cookie, 'oracle-bot', ['viewer']);
      const change = (currentPassword: string) => app.inject({ method: 'POST', url: '/api/v1/me/password', headers: api.headers, payload: { currentPassword, newPassword: strongPassword() } });
      for (let i = 0; i < 4; i++) expectProblem(await change(`wrong-current-${i}`), 401, 'invalid_credentials');
      expect((await userRow(api.id)).failed_attempts).toBe(4);
      expect((await app.inject({ url: '/api/v1/me', headers: api.headers })).statusCode).toBe(200);
      expectProblem(await change('wrong-current-4'), 401, 'invalid_credentials');

      const row = await userRow(api.id);
      expect(row.failed_attempts).toBe(5);
      expect(Number(row.locked_until)).toBeGreaterThan(clock.now() + 59 * MIN);
      expect(await lockouts('oracle-bot')).toHaveLength(1);
      expect((await lastMail(rt, t.tenantId, 'auth.lockout', 'oracle-bot@races.example')).subject).toMatch(/locked/);
      // The lock ends the token (a stolen one included), as suspension does.
      expectProblem(await app.inject({ url: '/api/v1/me', headers: api.headers }), 401, 'authentication_required');
      expect(await sessionCount(api.id)).toBe(0);
      // The correct password fails until an administrator unlocks.
      expectProblem(await token('oracle-bot', api.password), 401, 'invalid_credentials');
      await unlock(api.id);
      expect((await token('oracle-bot', api.password)).json()).toMatchObject({ status: 'ok' });
    });

    it('ASVS 6.3.1: ending sessions with a wrong password counts too, and a locked account cannot re-authenticate', async () => {
      const u = await freshUser('oracle-human');
      const del = (password: string) => app.inject({ method: 'DELETE', url: '/api/v1/me/sessions', headers: u.headers, payload: { password } });
      for (let i = 0; i < 5; i++) expectProblem(await del(`wrong-password-${i}`), 401, 'invalid_credentials');
      expect((await userRow(u.userId)).failed_attempts).toBe(5);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      await unlock(u.userId);

      // Locked by failed sign-ins (the session stays): the current password is refused until the lock ends.
      const again = await signIn(app, rt, { tenant: t.name, tenantId: t.tenantId, username: 'oracle-human', password: u.password, deviceCookie: u.deviceCookie });
      for (let i = 0; i < 5; i++) expectProblem(await login('oracle-human', 'wrong-password-here'), 401, 'invalid_credentials');
      expect((await app.inject({ url: '/api/v1/me', headers: { cookie: again.cookie } })).statusCode).toBe(200);
      const change = app.inject({ method: 'POST', url: '/api/v1/me/password', headers: again.headers, payload: { currentPassword: u.password, newPassword: strongPassword() } });
      expectProblem(await change, 401, 'invalid_credentials');
      expect((await userRow(u.userId)).failed_attempts).toBe(5);
      await unlock(u.userId);
    });

    it('ASVS 6.3.1: wrong passwords for MFA enrollment, MFA removal and new recovery codes count toward the lockout', async () => {
      const u = await freshUser('oracle-mfa');
      const auth = await authFromCookie(rt, t.tenantId, u.cookie);
      // The service as the runtime wires it (with the sign-in service that keeps the lockout count).
      const account = new AccountService({ storage: rt.storage, audit: rt.audit, mfa: rt.mfa, sessions: rt.sessions, login: rt.login });
      await expect(account.beginTotp(auth, t.name, 'wrong-password-0')).rejects.toMatchObject({ code: 'invalid_credentials' });
      await expect(account.disableMfa(auth, 'wrong-password-1', false)).rejects.toMatchObject({ code: 'invalid_credentials' });
      await expect(account.regenerateRecoveryCodes(auth, 'wrong-password-2')).rejects.toMatchObject({ code: 'invalid_credentials' });
      expect((await userRow(u.userId)).failed_attempts).toBe(3);
      // A correct password does not reset the count (only a completed sign-in does).
      expect((await account.beginTotp(auth, t.name, u.password)).secret).toMatch(/^[A-Z2-7]+$/);
      await expect(account.beginTotp(auth, t.name, 'wrong-password-3')).rejects.toMatchObject({ code: 'invalid_credentials' });
      await expect(account.beginTotp(auth, t.name, 'wrong-password-4')).rejects.toMatchObject({ code: 'invalid_credentials' });
      expect((await userRow(u.userId)).failed_attempts).toBe(5);
      expectProblem(await app.inject({ url: '/api/v1/me', headers: { cookie: u.cookie } }), 401, 'authentication_required');
      await expect(account.beginTotp(auth, t.name, u.password)).rejects.toMatchObject({ code: 'invalid_credentials' });
      await unlock(u.userId);
    });
  });

  describe('D: the device-verification code is single use and allows 5 tries, under concurrency too', () => {
    const verify = (flowToken: string, code: string) => app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: t.name, flowToken, code } });
    const newDeviceFlow = async (username: string, password: string, email: string) => {
      const start = await login(username, password);
      expect(start.json()).toMatchObject({ status: 'challenge', challenge: 'device_verification_required' });
      return { flowToken: start.json().flowToken as string, code: deviceCodeFrom((await lastMail(rt, t.tenantId, 'auth.device-code', email)).text) };
    };

    it('ASVS 6.5.1: two concurrent submissions of the right code: exactly one signs in', async () => {
      const u = await freshUser('twice');
      const before = await sessionCount(u.userId);
      for (let round = 0; round < 3; round++) {
        const { flowToken, code } = await newDeviceFlow('twice', u.password, u.email);
        const answers = await Promise.all([verify(flowToken, code), verify(flowToken, code)]);
        expect(answers.filter((a) => a.statusCode === 200 && a.json().status === 'ok')).toHaveLength(1);
        for (const a of answers.filter((x) => x.statusCode !== 200)) expectProblem(a, 401, 'invalid_code');
        expect(await sessionCount(u.userId)).toBe(before + round + 1);
      }
    });

    it('ASVS 6.5.5: 20 concurrent wrong codes count at most 5 tries, and the right code is refused afterwards', async () => {
      const u = await freshUser('guesser');
      const { flowToken, code } = await newDeviceFlow('guesser', u.password, u.email);
      const wrongCodes = Array.from({ length: 20 }, (_, i) => String((Number(code) + 1 + i) % 1_000_000).padStart(6, '0'));
      const answers = await Promise.all(wrongCodes.map((c) => verify(flowToken, c)));
      for (const a of answers) expectProblem(a, 401, 'invalid_code');
      const counted = (await rt.audit.query(t.tenantId, { types: ['auth.device.verify'], limit: 100 })).events.filter((e) => e.resource?.name === 'guesser' && e.outcome === 'failure');
      expect(counted.length).toBeLessThanOrEqual(5);
      expect(new Set(counted.map((e) => e.details?.attempts)).size).toBe(counted.length);
      expectProblem(await verify(flowToken, code), 401, 'invalid_code');
    });
  });

  describe('E: passwords are well-formed Unicode', () => {
    it('ASVS 6.2.8: a password with an unpaired surrogate is refused when set, with a clear message', async () => {
      const u = await freshUser('surrogate-set');
      for (const bad of ['Correct-Horse-\uD800-Battery-1!', 'Correct-Horse-\uDBFF-Battery-1!', 'Correct-Horse-Battery-Staple-\uDC00']) {
        const res = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: bad } });
        const problem = expectProblem(res, 400, 'validation_failed');
        expect(problem.detail).toMatch(/well-formed Unicode/);
      }
      expect(() => checkPassword('\uD800'.repeat(12), DEFAULT_SECURITY_SETTINGS.password, 'someone')).toThrow(/well-formed Unicode/);
      // A surrogate pair (one code point outside the BMP) is well formed and fine.
      const emoji = 'Correct-Horse-\u{1F40E}-Battery-1!';
      expect(checkPassword(emoji, DEFAULT_SECURITY_SETTINGS.password, 'someone')).toBe(emoji);
      const ok = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: emoji } });
      expect(ok.statusCode, ok.body).toBe(200);
      expect((await login('surrogate-set', emoji, { cookie: u.deviceCookie })).json().status).toBe('ok');
    });

    it('ASVS 6.2.8: at sign-in, an unpaired surrogate fails like a wrong password (it does not match U+FFFD)', async () => {
      const u = await freshUser('surrogate-login');
      // U+FFFD is what an unpaired surrogate becomes in UTF-8: a password holding it must not be matched by one.
      const replacement = 'Correct-Horse-\uFFFD-Battery-2!';
      const set = await app.inject({ method: 'POST', url: '/api/v1/me/password', headers: u.headers, payload: { currentPassword: u.password, newPassword: replacement } });
      expect(set.statusCode, set.body).toBe(200);
      expectProblem(await login('surrogate-login', 'Correct-Horse-\uD800-Battery-2!', { cookie: u.deviceCookie }), 401, 'invalid_credentials');
      expect((await userRow(u.userId)).failed_attempts).toBe(1);
      const recheck = await app.inject({ method: 'DELETE', url: '/api/v1/me/sessions', headers: u.headers, payload: { password: 'Correct-Horse-\uDFFF-Battery-2!' } });
      expectProblem(recheck, 401, 'invalid_credentials');
      expect((await login('surrogate-login', replacement, { cookie: u.deviceCookie })).json().status).toBe('ok');
    });
  });
});
