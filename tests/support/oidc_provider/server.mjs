// A real OpenID provider for keyturn's console tests: panva/oidc-provider (OpenID Certified), configured
// from a JSON file given as the only argument:
//
//   {"issuer": "http://127.0.0.1:PORT", "port": PORT,
//    "clients": [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]}],
//    "users": {"alice": {"password": "...", "email": "...", "email_verified": true,
//                        "groups": ["sre"], "name": "Alice"}}}
//
// The login page is a plain HTML form (login + password) checked against `users`; consent is implied for
// the configured (first-party) clients. `max_age` and `prompt=login` force a new login as the spec says, and
// every ID token carries `auth_time`, `amr` (["pwd"]) and `acr`. Prints "ready <issuer>" when listening.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    require_auth_time: true,
    ...c,
  })),
  jwks: { keys: [{ ...signingKey, kid: 'test-rsa', use: 'sig', alg: 'RS256' }] },
  cookies: { keys: ['keyturn-test-oidc-provider-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // Claims in the ID token itself (keyturn reads them there), not only at the userinfo endpoint.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: user.email,
          email_verified: user.email_verified,
          name: user.name,
          groups: user.groups,
        };
      },
    };
  },
  // First-party clients: the grant is implied, no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, AccessToken: 600, AuthorizationCode: 60, IdToken: 600 },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>error</title><h1>${escape(out.error)}</h1><p>${escape(out.error_description || '')}</p>`;
  },
});
provider.proxy = false;

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(uid, reasons, error) {
  return `<!doctype html><html><head><title>Test identity provider: sign in</title></head><body>
<h1>Test identity provider</h1>
<p id="reasons">${escape(reasons.join(' '))}</p>
${error ? `<p id="error" role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
<label>Login <input name="login" id="login" autocomplete="username" required></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interactions(req, res) {
  const match = /^\/interaction\/([^/?]+)(\/login)?/.exec(req.url);
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== match[1]) throw new Error('interaction mismatch');
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(loginPage(details.uid, details.prompt.reasons || [], null));
    return;
  }
  const form = await readForm(req);
  const login = form.get('login') || '';
  const user = users[login];
  if (!user || user.password !== form.get('password')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(loginPage(details.uid, details.prompt.reasons || [], 'wrong login or password'));
    return;
  }
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: login, amr: ['pwd'], acr: 'urn:keyturn:test:pwd' } },
    { mergeWithLastSubmission: false },
  );
}

const callback = provider.callback();
const server = createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interactions(req, res).catch((err) => {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err.message}`);
    });
    return;
  }
  callback(req, res);
});
server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
