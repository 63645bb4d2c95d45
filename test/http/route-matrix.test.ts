import { readFileSync } from 'node:fs';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ManualClock } from '../../src/core/clock.js';
import { newId } from '../../src/core/ids.js';
import type { TenantBindingRule } from '../../src/http/plugins/tenant-binding.js';
import { BUILTIN_ROLES, isPermission, type BuiltinRoleKey, type Permission } from '../../src/iam/permissions.js';
import { DEFAULT_SECURITY_SETTINGS } from '../../src/iam/security-settings.js';
import { makeApp } from '../helpers/app.js';
import { authFromCookie, lastMail, signIn, strongPassword, temporaryPasswordFrom, tenantWithAdmin, type SignedIn } from '../helpers/iam.js';
import { describeEachStorage, makeRuntime, type TestRuntime } from '../helpers/storage-kinds.js';

/**
 * The authorization matrix: every tenant route of the app, for every built-in
 * role, through a session cookie and an API bearer token, with the caller's
 * own objects and with another tenant's, against what the permission
 * catalogue predicts. Routes come from the OpenAPI document; what each route
 * requires comes from the route configuration the binding hook enforces
 * (captured per request), so a route cannot be left out or mis-declared.
 */

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

interface RouteInfo {
  method: Method;
  /** OpenAPI form: `/api/v1/users/{id}`. */
  path: string;
  /** Fastify form: `/api/v1/users/:id`. */
  url: string;
  params: string[];
  bodySchema: JsonSchema | undefined;
  documentedPermission: string | undefined;
  config?: { tenant?: TenantBindingRule; permission?: Permission | null; credentials?: 'session' | 'token' | 'both' };
}

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  minItems?: number;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  $ref?: string;
}

interface Principal {
  label: string;
  role: BuiltinRoleKey;
  via: 'session' | 'token';
  userId: string;
  password: string;
  headers: Record<string, string>;
}

const ROLES = Object.keys(BUILTIN_ROLES) as BuiltinRoleKey[];
let unique = 0;

/**
 * Request bodies that pass each route's schema and are harmless when the call
 * is allowed (unknown ids, wrong codes, no-op settings), so that the answer
 * shows authorization rather than validation. Routes not listed get a body
 * generated from their schema; the unauthenticated probe proves it valid.
 */
const SAMPLES: Record<string, (p: Principal | null) => unknown> = {
  'POST /api/v1/users': () => ({ username: `matrix-${++unique}`, email: `matrix-${unique}@matrix-a.example` }),
  'PATCH /api/v1/users/{id}': () => ({ fullName: 'Renamed' }),
  'PUT /api/v1/users/{id}/roles': () => ({ roles: [] }),
  'PUT /api/v1/users/{id}/orgs': () => ({ orgIds: [] }),
  'POST /api/v1/users/{id}/credentials': () => ({ kind: 'fingerprint', name: 'matrix', fingerprint: 'ab'.repeat(32) }),
  'POST /api/v1/roles': () => ({ name: `Matrix role ${++unique}`, permissions: ['lists.read'] }),
  'PATCH /api/v1/roles/{id}': () => ({ description: 'changed' }),
  'POST /api/v1/orgs': () => ({ name: `Matrix org ${++unique}` }),
  'PATCH /api/v1/orgs/{id}': () => ({ name: 'Renamed org' }),
  'PUT /api/v1/settings/security': () => DEFAULT_SECURITY_SETTINGS,
  'POST /api/v1/keys/import': () => ({ wrappedKeyMaterial: Buffer.alloc(384).toString('base64') }),
  'POST /api/v1/keys/schedule-deletion': () => ({ days: 7 }),
  'POST /api/v1/alerts/rules': () => ({ name: `Matrix rule ${++unique}`, eventTypes: ['matrix.never'], emails: ['alerts@matrix-a.example'] }),
  'PUT /api/v1/alerts/rules/{id}': () => ({ name: `Matrix rule ${++unique}`, eventTypes: ['matrix.never'], emails: ['alerts@matrix-a.example'] }),
  'POST /api/v1/alerts/webhooks': () => ({ url: 'https://hooks.matrix-a.example/in' }),
  'DELETE /api/v1/me/sessions': (p) => ({ password: p?.password ?? 'not-signed-in', sessionId: newId() }),
  'POST /api/v1/me/password': (p) => ({ currentPassword: p?.password ?? 'not-signed-in', newPassword: 'short' }),
  'POST /api/v1/me/mfa/totp': (p) => ({ password: p?.password ?? 'not-signed-in' }),
  'POST /api/v1/me/mfa/totp/confirm': () => ({ code: '000000' }),
  'POST /api/v1/me/mfa/recovery-codes': (p) => ({ password: p?.password ?? 'not-signed-in' }),
  'DELETE /api/v1/me/mfa': (p) => ({ password: p?.password ?? 'not-signed-in' }),
};

/** Routes that end the caller's own credential: exercised last. */
const SELF_ENDING = new Set(['POST /api/v1/auth/logout']);

const CANDIDATE_STRINGS = ['01m83t02vn5gp4qgm7gdvv4mnn', 'matrix', 'a', 'matrix@matrix-a.example', 'https://hooks.matrix-a.example/in', '2026-01-01T00:00:00Z', 'lists.read', 'x'.repeat(64)];

/** A minimal instance of a JSON schema (required members only), for routes without a hand-written sample. */
function sampleOf(schema: JsonSchema | undefined, components: Record<string, JsonSchema>): unknown {
  if (!schema) return undefined;
  if (schema.$ref) return sampleOf(components[schema.$ref.split('/').pop()!], components);
  if (schema.default !== undefined) return schema.default;
  if (schema.const !== undefined) return schema.const;
  if (schema.enum) return schema.enum[0];
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (alternatives) return sampleOf(alternatives[0], components);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {};
      for (const k of schema.required ?? []) out[k] = sampleOf(schema.properties?.[k], components);
      return out;
    }
    case 'array':
      return Array.from({ length: schema.minItems ?? 0 }, () => sampleOf(schema.items, components));
    case 'integer':
    case 'number':
      return schema.minimum ?? 1;
    case 'boolean':
      return false;
    case 'null':
      return null;
    case 'string': {
      const fits = (s: string) => (schema.pattern === undefined || new RegExp(schema.pattern, 'u').test(s)) && s.length >= (schema.minLength ?? 0) && s.length <= (schema.maxLength ?? Infinity);
      return CANDIDATE_STRINGS.find(fits) ?? 'x'.repeat(Math.max(1, schema.minLength ?? 1));
    }
    default:
      return {};
  }
}

function problemCode(res: LightMyRequestResponse): string | undefined {
  try {
    return (res.json<{ code?: string }>()).code;
  } catch {
    return undefined;
  }
}

describeEachStorage('route matrix', (kind) => {
  let rt: TestRuntime;
  let app: FastifyInstance;
  let routes: RouteInfo[];
  let components: Record<string, JsonSchema>;
  const clock = new ManualClock(Date.now());
  const captured = new Map<string, RouteInfo['config']>();
  const principals: Principal[] = [];
  let a: { tenantId: string; name: string; admin: SignedIn };
  let b: { tenantId: string; name: string; admin: SignedIn };
  /** Objects by the collection their routes start with. */
  const aIds: Record<string, string> = {};
  const bIds: Record<string, string> = {};
  /** Text of tenant B's objects that must never appear in an answer to tenant A. */
  const bSecrets: string[] = [];

  beforeAll(async () => {
    rt = await makeRuntime(kind, { clock });
    app = await makeApp(rt, (root) => {
      // What the binding hook enforces for each route, as the route declared it.
      root.addHook('onRequest', async (request) => {
        const url = request.routeOptions.url;
        if (url) captured.set(`${request.method} ${url}`, request.routeOptions.config);
      });
    });
    const doc = (await app.inject('/api/openapi.json')).json<{ paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: JsonSchema }> }; 'x-custos-permission'?: string }>>; components: { schemas: Record<string, JsonSchema> } }>();
    components = doc.components.schemas;
    routes = Object.entries(doc.paths)
      .filter(([path]) => path.startsWith('/api/v1/'))
      .flatMap(([path, ops]) =>
        Object.entries(ops).map(([method, op]) => ({
          method: method.toUpperCase() as Method,
          path,
          url: path.replace(/\{([^}]+)\}/g, ':$1'),
          params: [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]!),
          bodySchema: op.requestBody?.content['application/json']?.schema,
          documentedPermission: op['x-custos-permission'],
        })),
      );

    a = await tenantWithAdmin(app, rt, 'matrix-a');
    b = await tenantWithAdmin(app, rt, 'matrix-b');

    // One console user and one API user per built-in role, in tenant A.
    const adminAuth = await authFromCookie(rt, a.tenantId, a.admin.cookie);
    for (const role of ROLES) {
      for (const via of ['session', 'token'] as const) {
        const username = `${via === 'session' ? 'c' : 'a'}-${role}`;
        const email = `${username}@matrix-a.example`;
        const user = await rt.users.create(adminAuth, { id: a.tenantId, name: a.name }, { username, email, roles: [role], kind: via === 'session' ? 'console' : 'api' });
        const temporary = temporaryPasswordFrom((await lastMail(rt, a.tenantId, 'iam.user.welcome', email)).text);
        if (via === 'session') {
          const s = await signIn(app, rt, { tenant: a.name, tenantId: a.tenantId, username, password: temporary, email });
          principals.push({ label: `${role} (session)`, role, via, userId: user.id, password: s.password, headers: s.headers });
        } else {
          const challenge = (await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: a.name, username, password: temporary } })).json();
          expect(challenge).toMatchObject({ status: 'challenge', challenge: 'password_change_required' });
          const password = strongPassword();
          const changed = await app.inject({ method: 'POST', url: '/api/v1/auth/password/change', payload: { tenant: a.name, flowToken: challenge.flowToken, currentPassword: temporary, newPassword: password } });
          expect(changed.statusCode, changed.body).toBe(200);
          const token = (await app.inject({ method: 'POST', url: '/api/v1/auth/token', payload: { tenant: a.name, username, password } })).json();
          expect(token.status).toBe('ok');
          principals.push({ label: `${role} (token)`, role, via, userId: user.id, password, headers: { authorization: `Bearer ${token.accessToken}` } });
        }
      }
    }

    // Objects of tenant A (read by own-tenant GETs) and of tenant B (the other tenant's ids).
    const make = async (t: { tenantId: string; name: string; admin: SignedIn }, ids: Record<string, string>, prefix: string) => {
      const auth = await authFromCookie(rt, t.tenantId, t.admin.cookie);
      const email = `${prefix}-secret-user@${t.name}.example`;
      ids.users = (await rt.users.create(auth, { id: t.tenantId, name: t.name }, { username: `${prefix}-secret-user`, email, fullName: `${prefix.toUpperCase()} Secret Person`, roles: ['viewer'] })).id;
      ids.roles = (await rt.roles.create(auth, t.tenantId, { name: `${prefix.toUpperCase()} Secret Role`, permissions: ['lists.read'] })).id;
      ids.orgs = (await rt.orgs.create(auth, t.tenantId, { name: `${prefix.toUpperCase()} Secret Org` })).id;
      ids['alerts/webhooks'] = (await rt.alertAdmin.createWebhook(auth, t.tenantId, { url: `https://hooks.${t.name}.example/${prefix}-secret-hook`, description: `${prefix.toUpperCase()} Secret Hook` })).id;
      ids['alerts/rules'] = (await rt.alertAdmin.createRule(auth, t.tenantId, { name: `${prefix.toUpperCase()} Secret Rule`, eventTypes: ['keys.*'], emails: [`${prefix}-alerts@${t.name}.example`], webhookIds: [ids['alerts/webhooks']] })).id;
    };
    await make(a, aIds, 'a');
    await make(b, bIds, 'b');
    bSecrets.push('b-secret', 'B Secret', 'matrix-b', b.tenantId, b.admin.userId);

    // Probe every route once without a credential: captures its configuration (and proves the sample body valid).
    for (const r of routes) {
      const isPublic = r.path.startsWith('/api/v1/auth/') && r.path !== '/api/v1/auth/logout';
      const res = await send(r, null, 'own', isPublic);
      if (!captured.has(`${r.method} ${r.url}`)) throw new Error(`no configuration captured for ${r.method} ${r.path} (answer ${res.statusCode})`);
      r.config = captured.get(`${r.method} ${r.url}`);
    }
  });
  afterAll(async () => {
    await app.close();
    await rt.close();
  });

  /** The id an URL parameter takes: the tenant's object of that collection, or a fresh id (nothing has it). */
  function paramValue(r: RouteInfo, name: string, ids: Record<string, string>, real: boolean): string {
    if (!real || name !== 'id') return newId();
    const collection = Object.keys(ids).find((c) => r.path.startsWith(`/api/v1/${c}/{id}`));
    return collection ? ids[collection]! : newId();
  }

  async function send(r: RouteInfo, p: Principal | null, target: 'own' | 'other', bare = false, headers?: Record<string, string>): Promise<LightMyRequestResponse> {
    // Own tenant: real objects for reads, fresh ids for changes (allowed changes then answer 404 and change nothing).
    const ids = target === 'own' ? aIds : bIds;
    const real = target === 'other' || r.method === 'GET';
    let url = r.url;
    for (const name of r.params) url = url.replace(`:${name}`, paramValue(r, name, ids, real));
    const key = `${r.method} ${r.path}`;
    const body = bare ? undefined : r.bodySchema === undefined ? undefined : SAMPLES[key] ? SAMPLES[key](p) : sampleOf(r.bodySchema, components);
    return app.inject({ method: r.method, url, headers: headers ?? p?.headers ?? {}, ...(body === undefined ? {} : { payload: body as Record<string, unknown> }) });
  }

  const credentialRoutes = () => routes.filter((r) => r.config?.tenant?.from === 'credential');

  it('finds every tenant route, each bound by credential with a catalogue permission (or none), or public under /auth', () => {
    expect(routes.length).toBeGreaterThanOrEqual(60);
    for (const r of routes) {
      const label = `${r.method} ${r.path}`;
      expect(r.config?.tenant, label).toBeDefined();
      if (r.config!.tenant!.from !== 'credential') {
        expect(r.path, `${label} runs before authentication: only sign-in routes may`).toMatch(/^\/api\/v1\/auth\//);
        continue;
      }
      const perm = r.config!.permission;
      expect(perm === null || isPermission(perm), `${label} declares permission ${String(perm)}`).toBe(true);
      if (r.documentedPermission !== undefined) expect(r.documentedPermission, `${label}: OpenAPI x-custos-permission`).toBe(perm);
    }
  });

  it('answers 401 authentication_required on every credential route without a credential', async () => {
    const wrong: string[] = [];
    for (const r of credentialRoutes()) {
      const res = await send(r, null, 'own');
      if (res.statusCode !== 401 || problemCode(res) !== 'authentication_required') wrong.push(`${r.method} ${r.path}: ${res.statusCode} ${res.body.slice(0, 200)}`);
    }
    expect(wrong).toEqual([]);
  });

  it('ASVS 8.4.1: a credential of tenant A relabelled with tenant B is no credential anywhere', async () => {
    const session = a.admin.cookie.slice(a.admin.cookie.indexOf('.') + 1);
    const token = principals.find((p) => p.via === 'token' && p.role === 'account-administrator')!.headers.authorization!.replace(/^Bearer [^.]+\./, '');
    const wrong: string[] = [];
    for (const r of credentialRoutes()) {
      for (const headers of [{ cookie: `custos_session=${b.tenantId}.${session}`, 'x-csrf-token': `${b.tenantId}.${a.admin.csrf.split('.')[1]}` }, { authorization: `Bearer ${b.tenantId}.${token}` }] as Array<Record<string, string>>) {
        const res = await send(r, null, 'other', false, headers);
        if (res.statusCode !== 401 || problemCode(res) !== 'authentication_required') wrong.push(`${r.method} ${r.path}: ${res.statusCode}`);
        if (bSecrets.some((s) => res.body.includes(s) && s !== b.tenantId)) wrong.push(`${r.method} ${r.path}: leaked tenant B data`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it.each(ROLES.flatMap((role) => (['session', 'token'] as const).map((via) => [role, via] as const)))(
    "ASVS 8.4.1: %s via %s gets what the catalogue predicts on every route, with its own tenant's ids and with another tenant's",
    async (role, via) => {
      const p = principals.find((x) => x.role === role && x.via === via)!;
      const granted = new Set<string>(BUILTIN_ROLES[role].permissions);
      const wrong: string[] = [];
      for (const r of credentialRoutes()) {
        const key = `${r.method} ${r.path}`;
        if (SELF_ENDING.has(key)) continue;
        const accepts = r.config!.credentials ?? 'both';
        const perm = r.config!.permission ?? null;
        for (const target of r.params.length > 0 ? (['own', 'other'] as const) : (['own'] as const)) {
          const res = await send(r, p, target);
          const code = problemCode(res);
          const what = `${key} [${target}]: ${res.statusCode} ${code ?? ''}`;
          if (accepts !== 'both' && accepts !== via) {
            if (res.statusCode !== 401 || code !== 'authentication_required') wrong.push(`${what}, expected 401 (route takes ${accepts} only)`);
          } else if (perm !== null && !granted.has(perm)) {
            if (res.statusCode !== 403 || code !== 'forbidden') wrong.push(`${what}, expected 403 forbidden (needs ${perm})`);
          } else if (res.statusCode >= 500 || res.statusCode === 403 || (res.statusCode === 401 && code === 'authentication_required')) {
            wrong.push(`${what}, expected to be let through (${perm ?? 'any principal'})`);
          } else if (target === 'other' && res.statusCode !== 404) {
            wrong.push(`${what}, expected 404 for tenant B's ids`);
          }
          // Never tenant B's data: not its names, addresses or URLs, and (outside the ids we sent) not its ids.
          const leaks = target === 'other' ? bSecrets : [...bSecrets, ...Object.values(bIds)];
          const leaked = leaks.filter((s) => res.body.includes(s));
          if (leaked.length > 0) wrong.push(`${what}: answer holds tenant B data (${leaked.join(', ')})`);
        }
      }
      expect(wrong).toEqual([]);
    },
  );

  it("ASVS 8.4.1: leaves tenant B's objects and activity stream untouched", async () => {
    const auth = await authFromCookie(rt, b.tenantId, b.admin.cookie);
    expect(await rt.users.get(auth, b.tenantId, bIds.users!)).toMatchObject({ username: 'b-secret-user', fullName: 'B Secret Person', roles: ['viewer'], status: 'active' });
    expect(await rt.roles.get(auth, b.tenantId, bIds.roles!)).toMatchObject({ name: 'B Secret Role', description: '' });
    expect(await rt.orgs.get(auth, b.tenantId, bIds.orgs!)).toMatchObject({ name: 'B Secret Org' });
    expect(await rt.alertAdmin.getRule(auth, b.tenantId, bIds['alerts/rules']!)).toMatchObject({ name: 'B Secret Rule' });
    expect((await rt.alertAdmin.listWebhooks(auth, b.tenantId)).map((w) => w.id)).toEqual([bIds['alerts/webhooks']]);
    const events = (await rt.audit.query(b.tenantId, { limit: 1000 })).events;
    const aPrincipals = new Set([a.admin.userId, ...principals.map((p) => p.userId)]);
    expect(events.filter((e) => aPrincipals.has(e.principal.id))).toEqual([]);
  });

  it('ends the session on logout for console users; a bearer token is not a session', async () => {
    const logout = routes.find((r) => `${r.method} ${r.path}` === 'POST /api/v1/auth/logout')!;
    for (const p of principals) {
      const res = await send(logout, p, 'own');
      if (p.via === 'session') {
        expect(res.statusCode, `${p.label}: ${res.body}`).toBe(204);
        expect((await app.inject({ url: '/api/v1/me', headers: p.headers })).statusCode).toBe(401);
      } else {
        expect(res.statusCode, p.label).toBe(401);
      }
    }
  });

  it('matches docs/PERMISSIONS.md: every tenant route with the permission it requires', () => {
    const doc = readFileSync(new URL('../../docs/PERMISSIONS.md', import.meta.url), 'utf8');
    const documented = new Map([...doc.matchAll(/^\|\s*`(GET|POST|PUT|PATCH|DELETE)`\s*\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|/gm)].map((m) => [`${m[1]} ${m[2]}`, m[3]!.replace(/`/g, '')]));
    const expected = new Map(
      routes.map((r) => [
        `${r.method} ${r.path.replace(/^\/api\/v1/, '')}`,
        r.config!.tenant!.from !== 'credential' ? 'none (before sign-in)' : r.config!.permission === null || r.config!.permission === undefined ? 'any signed-in principal' : r.config!.permission,
      ]),
    );
    const missing = [...expected].filter(([k, v]) => documented.get(k) !== v).map(([k, v]) => `| \`${k.split(' ')[0]}\` | \`${k.split(' ')[1]}\` | ${v.includes(' ') ? v : `\`${v}\``} |`);
    const stale = [...documented.keys()].filter((k) => !expected.has(k));
    expect({ missingOrWrong: missing, stale }).toEqual({ missingOrWrong: [], stale: [] });
  });
});
