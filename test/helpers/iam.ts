import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { Secret, TOTP } from 'otpauth';
import { expect } from 'vitest';
import type { Runtime } from '../../src/runtime.js';
import { TEST_OPERATOR } from './storage-kinds.js';

/** A password every default policy accepts, unique per call. */
let counter = 0;
export function strongPassword(): string {
  counter++;
  return `Correct-Horse-${counter}-Battery-${process.pid}!`;
}

export interface SignedIn {
  /** `Cookie` header value for the session. */
  cookie: string;
  csrf: string;
  /** `Cookie` header with the trusted-device cookie, to skip device verification next time. */
  deviceCookie: string;
  userId: string;
  password: string;
  /** Headers for a cookie-authenticated change. */
  headers: Record<string, string>;
}

export function cookieValue(res: LightMyRequestResponse, name: string): string | undefined {
  const c = res.cookies.find((x) => x.name === name);
  return c?.value;
}

/** The newest mail of `kind` to `to` in a tenant's outbox. */
export async function lastMail(rt: Runtime, tenantId: string, kind: string, to?: string): Promise<{ subject: string; text: string }> {
  const list = await rt.mail.list(tenantId, { kind, limit: 50 });
  const m = list.find((x) => to === undefined || x.to === to);
  if (!m || m.text === null) throw new Error(`no ${kind} mail${to ? ` to ${to}` : ''}`);
  return { subject: m.subject, text: m.text };
}

export function deviceCodeFrom(text: string): string {
  return /Verification code: (\d{6})/.exec(text)![1]!;
}

export function temporaryPasswordFrom(text: string): string {
  return /Temporary password: (\S+)/.exec(text)![1]!;
}

export function totpNow(secret: string, timestamp: number): string {
  return new TOTP({ secret: Secret.fromBase32(secret), digits: 6, period: 30, algorithm: 'SHA1' }).generate({ timestamp });
}

/**
 * Drives a complete console sign-in: password, the mailed device code, the
 * first-login password change (to `newPassword`), and MFA (with `mfaSecret`
 * or enrolling, returning the seed). Asserts each step.
 */
export async function signIn(
  app: FastifyInstance,
  rt: Runtime,
  opts: { tenant: string; tenantId: string; username: string; password: string; email?: string; newPassword?: string; deviceCookie?: string; mfaSecret?: string },
): Promise<SignedIn & { mfaSecret?: string; recoveryCodes?: string[] }> {
  let res = await app.inject({ method: 'POST', url: '/api/v1/auth/login', payload: { tenant: opts.tenant, username: opts.username, password: opts.password }, headers: opts.deviceCookie ? { cookie: opts.deviceCookie } : {} });
  expect(res.statusCode, res.body).toBe(200);
  let body = res.json();
  let password = opts.password;
  let deviceCookie = opts.deviceCookie ?? '';
  let mfaSecret = opts.mfaSecret;
  for (let step = 0; body.status === 'challenge' && step < 5; step++) {
    if (body.challenge === 'device_verification_required') {
      const mail = await lastMail(rt, opts.tenantId, 'auth.device-code', opts.email);
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/device/verify', payload: { tenant: opts.tenant, flowToken: body.flowToken, code: deviceCodeFrom(mail.text) } });
      const dev = cookieValue(res, 'custos_device');
      if (dev) deviceCookie = `custos_device=${dev}`;
    } else if (body.challenge === 'password_change_required') {
      const next = opts.newPassword ?? strongPassword();
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: opts.tenant, flowToken: body.flowToken, currentPassword: password, newPassword: next } });
      password = next;
    } else if (body.challenge === 'mfa_required') {
      if (body.mfaEnrollment) mfaSecret = body.mfaEnrollment.secret;
      if (!mfaSecret) throw new Error('MFA required but no secret known');
      res = await app.inject({ method: 'POST', url: '/api/v1/auth/mfa/verify', payload: { tenant: opts.tenant, flowToken: body.flowToken, code: totpNow(mfaSecret, rt.clock.now()) } });
    }
    expect(res.statusCode, res.body).toBe(200);
    body = res.json();
  }
  expect(body.status).toBe('ok');
  const session = cookieValue(res, 'custos_session')!;
  const cookie = `custos_session=${session}`;
  return {
    cookie,
    csrf: body.csrfToken,
    deviceCookie,
    userId: body.user.id,
    password,
    headers: { cookie, 'x-csrf-token': body.csrfToken },
    mfaSecret,
    recoveryCodes: body.recoveryCodes,
  };
}

/** A tenant and its first administrator, signed in (temporary password already changed). */
export async function tenantWithAdmin(app: FastifyInstance, rt: Runtime, name: string): Promise<{ tenantId: string; name: string; admin: SignedIn; adminEmail: string }> {
  const adminEmail = `admin@${name}.example`;
  const t = await rt.tenants.create({ name, edition: 'enterprise', adminEmail }, TEST_OPERATOR);
  const admin = await signIn(app, rt, { tenant: name, tenantId: t.id, username: 'admin', password: t.admin.temporaryPassword, email: adminEmail });
  return { tenantId: t.id, name, admin, adminEmail };
}

/** The AuthContext behind a session cookie (to call services directly in tests). */
export async function authFromCookie(rt: Runtime, tenantId: string, cookie: string) {
  const secret = cookie.slice(cookie.indexOf('=') + 1);
  const dot = secret.indexOf('.');
  return rt.sessions.authenticate(tenantId, secret.slice(dot + 1), 'session', {});
}

/** Creates a user as the given administrator and returns its id and the temporary password from the welcome mail. */
export async function createUser(
  rt: Runtime,
  tenant: { tenantId: string; name: string },
  adminCookie: string,
  input: { username: string; email?: string; kind?: 'console' | 'api'; roles?: string[]; orgIds?: string[] },
): Promise<{ id: string; email: string; temporaryPassword: string }> {
  const auth = await authFromCookie(rt, tenant.tenantId, adminCookie);
  const email = input.email ?? `${input.username}@${tenant.name}.example`;
  const user = await rt.users.create(auth, { id: tenant.tenantId, name: tenant.name }, { ...input, email });
  const mail = await lastMail(rt, tenant.tenantId, 'iam.user.welcome', email);
  return { id: user.id, email, temporaryPassword: temporaryPasswordFrom(mail.text) };
}

/** An API user with the given roles and a bearer token (its first-login password change done). */
export async function apiUser(app: FastifyInstance, rt: Runtime, tenant: { tenantId: string; name: string }, adminCookie: string, username: string, roles: string[]): Promise<{ id: string; token: string; headers: Record<string, string>; password: string }> {
  const u = await createUser(rt, tenant, adminCookie, { username, kind: 'api', roles });
  const first = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: tenant.name, username, password: u.temporaryPassword } });
  expect(first.json().challenge).toBe('password_change_required');
  const password = strongPassword();
  const changed = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: tenant.name, flowToken: first.json().flowToken, currentPassword: u.temporaryPassword, newPassword: password } });
  expect(changed.statusCode, changed.body).toBe(200);
  const tok = await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: tenant.name, username, password } });
  const token = tok.json().accessToken as string;
  return { id: u.id, token, headers: { authorization: `Bearer ${token}` }, password };
}

/** A console user with the given roles, signed in. */
export async function consoleUser(app: FastifyInstance, rt: Runtime, tenant: { tenantId: string; name: string }, adminCookie: string, username: string, roles: string[]): Promise<SignedIn> {
  const u = await createUser(rt, tenant, adminCookie, { username, roles });
  return signIn(app, rt, { tenant: tenant.name, tenantId: tenant.tenantId, username, password: u.temporaryPassword, email: u.email });
}
