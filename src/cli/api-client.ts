import { readFileSync } from 'node:fs';
import { Agent, request, type Dispatcher } from 'undici';
import { CustosError, type ErrorCode, ERROR_CATALOGUE } from '../core/errors.js';
import { loadProfile, saveProfile, type Profile } from './profile.js';

export interface ApiResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

/** An HTTPS client for a Custos server, trusting the profile's CA and presenting its client certificate. */
export function dispatcherFor(p: Pick<Profile, 'caFile' | 'insecure' | 'certFile' | 'keyFile'>): Agent {
  return new Agent({
    connect: {
      ca: p.caFile ? readFileSync(p.caFile) : undefined,
      rejectUnauthorized: !p.insecure,
      cert: p.certFile ? readFileSync(p.certFile) : undefined,
      key: p.keyFile ? readFileSync(p.keyFile) : undefined,
    },
  });
}

/** Turns a problem document into a CustosError with the server's code and detail. */
export async function problemFrom(res: ApiResponse): Promise<CustosError> {
  const text = await res.body.text();
  try {
    const p = JSON.parse(text) as { code?: string; detail?: string; title?: string; errors?: unknown };
    const code = (p.code && Object.hasOwn(ERROR_CATALOGUE, p.code) ? p.code : 'internal_error') as ErrorCode;
    return new CustosError(code, p.detail ?? p.title, p.errors ? { extensions: { errors: p.errors } } : undefined);
  } catch {
    return new CustosError('service_unavailable', `the server answered HTTP ${res.status}`);
  }
}

/**
 * The signed-in client of the tenant-user commands. API users get a fresh
 * one-hour token when theirs is missing or expired (by password, or by client
 * certificate); console users use their session and CSRF token.
 */
export class ApiClient {
  readonly profile: Profile;
  readonly #agent: Agent;

  private constructor(profile: Profile) {
    this.profile = profile;
    this.#agent = dispatcherFor(profile);
  }

  static async fromProfile(): Promise<ApiClient> {
    return new ApiClient(await loadProfile());
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #token(): Promise<string> {
    const s = this.profile.secrets;
    if (s.token && s.tokenExpiresAt && Date.parse(s.tokenExpiresAt) - Date.now() > 60_000) return s.token;
    const res = await request(`${this.profile.url}/api/v1/auth/token`, {
      method: 'POST',
      dispatcher: this.#agent,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tenant: this.profile.tenant, username: this.profile.username, ...(s.password ? { password: s.password } : {}) }),
    });
    if (res.statusCode !== 200) throw await problemFrom({ status: res.statusCode, headers: res.headers, body: res.body });
    const body = (await res.body.json()) as { status: string; accessToken?: string; expiresAt?: string };
    if (body.status !== 'ok' || !body.accessToken) throw new CustosError('authentication_required', 'the API user must change its password first: run custos login again');
    s.token = body.accessToken;
    s.tokenExpiresAt = body.expiresAt;
    await saveProfile(this.profile);
    return body.accessToken;
  }

  /** Sends a request as the signed-in user; answers with the raw response (the caller reads or streams the body). */
  async send(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<ApiResponse> {
    const headers: Record<string, string> = {};
    if (this.profile.kind === 'api') headers.authorization = `Bearer ${await this.#token()}`;
    else {
      if (!this.profile.secrets.sessionCookie) throw new CustosError('authentication_required', 'not logged in: run custos login');
      headers.cookie = this.profile.secrets.sessionCookie;
      if (method !== 'GET') headers['x-csrf-token'] = this.profile.secrets.csrfToken ?? '';
    }
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await request(`${this.profile.url}/api/v1${path}`, { method, headers, dispatcher: this.#agent, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.statusCode, headers: res.headers, body: res.body };
  }

  /** Sends a JSON request and returns the parsed answer, or throws the server's problem as a CustosError. */
  async json<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    if (res.status >= 400) throw await problemFrom(res);
    if (res.status === 204) {
      await res.body.dump();
      return undefined as T;
    }
    return (await res.body.json()) as T;
  }

  /** A list id from a name or an id. */
  async listId(nameOrId: string): Promise<string> {
    const { lists } = await this.json<{ lists: Array<{ id: string; name: string }> }>('GET', '/lists');
    const hit = lists.find((l) => l.id === nameOrId || l.name === nameOrId);
    if (!hit) throw new CustosError('not_found', `no list ${nameOrId}`);
    return hit.id;
  }
}
