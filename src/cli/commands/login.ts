import { Command } from 'commander';
import { request } from 'undici';
import { CustosError } from '../../core/errors.js';
import { dispatcherFor, problemFrom } from '../api-client.js';
import { output } from '../output.js';
import { deleteProfile, saveProfile, type Profile } from '../profile.js';
import { Prompter } from '../prompt.js';

interface LoginOptions {
  url: string;
  tenant: string;
  user: string;
  passwordStdin?: boolean;
  console?: boolean;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
  json?: boolean;
}

type Step = { status: 'ok'; accessToken?: string; expiresAt?: string; csrfToken?: string } | { status: 'challenge'; challenge: string; flowToken: string; mfaEnrollment?: { secret: string; otpauthUri: string } };

/** `custos login` / `custos logout`: tenant-user credentials for the commands that talk to the API. */
export function loginCommands(): Command[] {
  const login = new Command('login')
    .description("sign in to a Custos server as a tenant's user; credentials are kept encrypted in your profile until custos logout")
    .requiredOption('--url <url>', 'server URL, e.g. https://127.0.0.1:8443')
    .requiredOption('--tenant <name>', 'tenant name')
    .requiredOption('--user <username>', 'username (an API user unless --console)')
    .option('--password-stdin', 'read the password from standard input (then a new password or a code on the next lines, when asked)')
    .option('--console', 'a console user (session; device code, password change and MFA are asked for)')
    .option('--cert <file>', "an API user's client certificate (PEM); no password needed")
    .option('--key <file>', 'private key of --cert')
    .option('--ca <file>', "CA certificate to trust for the server (e.g. the data directory's tls/cert.pem)")
    .option('--insecure', 'do not verify the server certificate (testing only)')
    .option('--json', 'print JSON')
    .action(async (opts: LoginOptions) => {
      const url = opts.url.replace(/\/+$/, '');
      if (!/^https:\/\//.test(url)) throw new CustosError('validation_failed', 'the URL must start with https://');
      if (Boolean(opts.cert) !== Boolean(opts.key)) throw new CustosError('validation_failed', '--cert and --key go together');
      const profile: Profile = { url, tenant: opts.tenant, username: opts.user, kind: opts.console ? 'console' : 'api', caFile: opts.ca, insecure: opts.insecure, certFile: opts.cert, keyFile: opts.key, secrets: {} };
      const agent = dispatcherFor(profile);
      const prompt = new Prompter();
      const ask = (q: string, secret = true) => prompt.ask(q, { secret, fromStdin: opts.passwordStdin ?? false });
      const post = async (path: string, body: object): Promise<{ step: Step; cookies: string[] }> => {
        const res = await request(`${url}/api/v1${path}`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json', ...(profile.secrets.sessionCookie ? { cookie: profile.secrets.sessionCookie } : {}) }, body: JSON.stringify({ tenant: opts.tenant, ...body }) });
        if (res.statusCode !== 200) throw await problemFrom({ status: res.statusCode, headers: res.headers, body: res.body });
        const set = res.headers['set-cookie'];
        return { step: (await res.body.json()) as Step, cookies: (Array.isArray(set) ? set : set ? [set] : []).map((c) => c.split(';')[0]!) };
      };
      try {
        let password: string | undefined;
        let result: { step: Step; cookies: string[] };
        if (opts.cert) {
          result = await post('/auth/token', { username: opts.user });
        } else {
          password = await ask('Password: ');
          result = await post(opts.console ? '/auth/login' : '/auth/token', { username: opts.user, password });
        }
        const cookies = new Map<string, string>();
        const keep = (list: string[]) => list.forEach((c) => cookies.set(c.slice(0, c.indexOf('=')), c));
        keep(result.cookies);
        for (let i = 0; result.step.status === 'challenge' && i < 5; i++) {
          const { challenge, flowToken } = result.step;
          if (challenge === 'device_verification_required') {
            result = await post('/auth/device/verify', { flowToken, code: await ask('Verification code (sent by mail): ', false) });
          } else if (challenge === 'password_change_required') {
            const next = await ask('New password: ');
            result = await post('/auth/password/change', { flowToken, currentPassword: password, newPassword: next });
            password = next;
          } else {
            if (result.step.mfaEnrollment) process.stderr.write(`Add this key to your authenticator app: ${result.step.mfaEnrollment.otpauthUri}\n`);
            result = await post('/auth/mfa/verify', { flowToken, code: await ask('Authenticator code: ', false) });
          }
          keep(result.cookies);
        }
        const step = result.step;
        if (step.status !== 'ok') throw new CustosError('authentication_required', 'sign-in did not complete');
        if (profile.kind === 'api') {
          profile.secrets = { password, token: step.accessToken, tokenExpiresAt: step.expiresAt };
        } else {
          profile.secrets = { sessionCookie: [...cookies.values()].join('; '), csrfToken: step.csrfToken };
        }
        await saveProfile(profile);
        output(opts.json, { url, tenant: opts.tenant, username: opts.user, kind: profile.kind }, () => `Logged in to ${opts.tenant} at ${url} as ${opts.user} (${profile.kind === 'api' ? 'API user' : 'console user'}).`);
      } finally {
        await agent.close();
      }
    });

  const logout = new Command('logout')
    .description('forget the credentials custos login stored')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const had = await deleteProfile();
      output(opts.json, { loggedOut: had }, () => (had ? 'Logged out; stored credentials deleted.' : 'Not logged in.'));
    });
  return [login, logout];
}
