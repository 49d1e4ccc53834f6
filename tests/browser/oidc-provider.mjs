// A throwaway identity provider for Conclave's tests: an OpenID Connect provider
// (oidc-provider) at the root and a fake GitHub OAuth app under /github, one server.
//
//   node tests/browser/oidc-provider.mjs [--port N] [--redirect-uri URI]...
//
//   --port N           port on 127.0.0.1 (default 0: any free port)
//   --redirect-uri URI extra redirect URI to register (repeatable); not usually
//                      needed, since any loopback http(s) URI is accepted anyway
//
// Once listening it prints ONE line to stdout and nothing else ever goes there:
//   {"issuer":"http://127.0.0.1:PORT","github":"http://127.0.0.1:PORT/github"}
// It runs until stdin reaches end of file (so the parent must hand it a pipe and
// keep it open), SIGTERM or SIGINT. Logs go to stderr.
//
// Client for both: client_id "conclave", client_secret "conclave-secret", PKCE (S256)
// required. Every login page is a plain HTML form POST with inputs "login" and
// "password" (any password works) and a submit button; its action is a path with no
// query string. What the login name gives:
//   alice@example.com            verified email alice@example.com, name "Alice"
//   unverified:bob@example.com   email bob@example.com, not verified, name "Bob"
// OIDC: sub = "sub-" + the typed login; the ID token carries email, email_verified,
// name (and nonce when one was sent). GitHub: id = a stable hash of the typed login,
// login = the part before "@"; /github/api/user and /github/api/user/emails answer.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import Provider, { interactionPolicy } from 'oidc-provider';

// oidc-provider writes notices with console.info; stdout carries only the ready line.
console.log = console.info = console.error;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
  },
});

const CLIENT_ID = 'conclave';
const CLIENT_SECRET = 'conclave-secret';
const random = (bytes = 24) => randomBytes(bytes).toString('base64url');
const s256 = (verifier) => createHash('sha256').update(verifier).digest('base64url');

// What a typed login name stands for, at both providers.
function person(typed) {
  const unverified = typed.startsWith('unverified:');
  const email = unverified ? typed.slice('unverified:'.length) : typed;
  const local = email.split('@')[0];
  return {
    email,
    verified: !unverified,
    local,
    name: local.charAt(0).toUpperCase() + local.slice(1),
    githubId: createHash('sha256').update(typed).digest().readUInt32BE(0) % 2_000_000_000 + 1,
  };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(res, title, action, error) {
  send(res, 200, 'text/html; charset=utf-8', `<!doctype html>
<html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body>
<h1>${escape(title)}</h1>
${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="${escape(action)}">
<label>Login <input name="login" type="text" autofocus required></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button>
</form>
</body></html>
`);
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body);
}
const json = (res, status, value) => send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));

async function form(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// ---- OpenID Connect ------------------------------------------------------------------

function makeProvider(issuer) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      // Overridden below by redirectUriAllowed; these are listed only to be valid metadata.
      redirect_uris: ['http://127.0.0.1/login/oidc/callback', ...args['redirect-uri']],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      // client_secret_post is accepted too: oidc-provider lets a client registered for
      // either secret method authenticate with the other one.
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' }] },
    cookies: { keys: [random()] }, // not `secure`, so they work over plain http
    ttl: { AccessToken: 3600, AuthorizationCode: 600, Grant: 86400, IdToken: 3600, Interaction: 3600, Session: 86400 },
    pkce: { required: () => true }, // S256 is the only method oidc-provider 9 offers
    scopes: ['openid', 'email', 'profile'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    // Put the scope's claims into the ID token even though an access token is issued.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}`, policy: alwaysLogin() },
    // No consent screen: the first time the client is seen in a session, grant it
    // everything it may ask for.
    async loadExistingGrant(ctx) {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId && await oidc.provider.Grant.find(grantId);
      if (!grant) {
        grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
        grant.addOIDCScope('openid email profile');
        await grant.save();
      }
      return grant;
    },
    // The account id is the sub, "sub-" + the typed login.
    async findAccount(ctx, sub) {
      if (!sub.startsWith('sub-')) return undefined;
      const who = person(sub.slice('sub-'.length));
      return {
        accountId: sub,
        claims: async () => ({ sub, email: who.email, email_verified: who.verified, name: who.name }),
      };
    },
  });

  // oidc-provider compares redirect_uri with the registered list exactly (no pattern
  // support), but the tests' Conclave listens on a port picked at run time. Client
  // objects are instances of provider.Client, whose prototype method
  // redirectUriAllowed(uri) is the single check used by the authorization endpoint
  // (lib/actions/authorization/response_parameters.js, checkRedirectUri), so widen it
  // to any loopback http(s) URI without a fragment. The token endpoint then only checks
  // that redirect_uri equals the one the code was issued for.
  const registered = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(uri) {
    return registered.call(this, uri) || isLoopback(uri);
  };

  provider.on('server_error', (ctx, err) => console.error('oidc server_error:', err));
  return provider;
}

// Every authorization request shows the login form, even with a live session, so
// one cookie jar or browser context can sign in as a different person each time.
function alwaysLogin() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check('always', 'the test provider always asks',
    (ctx) => !ctx.oidc.result?.login));
  return policy;
}

function isLoopback(uri) {
  const url = URL.parse(uri);
  return url !== null && ['http:', 'https:'].includes(url.protocol) && !url.hash
    && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
}

// Our own interaction pages, replacing devInteractions: only a login prompt, never consent.
async function interaction(provider, req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  if (req.method === 'GET' && !action) {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch\n');
    return loginPage(res, 'Sign in to the test identity provider', `/interaction/${uid}/login`);
  }
  if (req.method === 'POST' && action === 'login') {
    const login = (await form(req)).get('login')?.trim();
    if (!login) {
      return loginPage(res, 'Sign in to the test identity provider', `/interaction/${uid}/login`, 'Enter a login.');
    }
    // Each sign-in starts a new session. Left alone, signing in as someone else over a
    // live session makes oidc-provider log the old one out through a form that only
    // JavaScript submits, which an HTTP client can't follow.
    const details = await provider.interactionDetails(req, res);
    if (details.session) {
      await (await provider.Session.findByUid(details.session.uid))?.destroy();
      details.session = undefined;
      await details.save(details.exp - Math.floor(Date.now() / 1000));
    }
    return provider.interactionFinished(req, res, { login: { accountId: `sub-${login}` } },
      { mergeWithLastSubmission: false });
  }
  return send(res, 404, 'text/plain', 'not found\n');
}

// ---- fake GitHub -----------------------------------------------------------------------

const pending = new Map(); // authorize request id -> { redirectUri, state, challenge }
const codes = new Map(); // code -> { login, redirectUri, challenge, expires }
const tokens = new Map(); // access token -> typed login

async function github(req, res, url) {
  const path = url.pathname.slice('/github'.length);

  if (req.method === 'GET' && path === '/login/oauth/authorize') {
    const q = url.searchParams;
    if (q.get('client_id') !== CLIENT_ID) return send(res, 404, 'text/plain', 'unknown client_id\n');
    const redirectUri = q.get('redirect_uri');
    if (!redirectUri || !isLoopback(redirectUri)) return send(res, 400, 'text/plain', 'bad redirect_uri\n');
    if (!q.get('code_challenge') || q.get('code_challenge_method') !== 'S256') {
      return send(res, 400, 'text/plain', 'PKCE with code_challenge_method=S256 is required\n');
    }
    const id = random();
    pending.set(id, { redirectUri, state: q.get('state'), challenge: q.get('code_challenge') });
    return loginPage(res, 'Sign in to GitHub (fake)', `/github/session/${id}`);
  }

  if (req.method === 'POST' && path.startsWith('/session/')) {
    const id = path.slice('/session/'.length);
    const request = pending.get(id);
    if (!request) return send(res, 400, 'text/plain', 'unknown or used sign-in request\n');
    const login = (await form(req)).get('login')?.trim();
    if (!login) return loginPage(res, 'Sign in to GitHub (fake)', `/github/session/${id}`, 'Enter a login.');
    pending.delete(id);
    const code = random(10).replace(/[-_]/g, 'x');
    codes.set(code, { login, ...request, expires: Date.now() + 10 * 60_000 });
    const to = new URL(request.redirectUri);
    to.searchParams.set('code', code);
    if (request.state !== null) to.searchParams.set('state', request.state);
    return send(res, 302, 'text/plain', '', { location: to.href });
  }

  if (req.method === 'POST' && path === '/login/oauth/access_token') {
    const body = await form(req);
    const wantsJson = (req.headers.accept ?? '').includes('application/json');
    const answer = (value) => (wantsJson
      ? json(res, 200, value)
      : send(res, 200, 'application/x-www-form-urlencoded; charset=utf-8', new URLSearchParams(value).toString()));
    let [clientId, secret] = [body.get('client_id'), body.get('client_secret')];
    const basic = /^basic\s+(.+)$/i.exec(req.headers.authorization ?? '');
    if (basic) {
      const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      [clientId, secret] = [decodeURIComponent(decoded.slice(0, colon)), decodeURIComponent(decoded.slice(colon + 1))];
    }
    if (clientId !== CLIENT_ID || secret !== CLIENT_SECRET) {
      return answer({ error: 'incorrect_client_credentials', error_description: 'The client_id and/or client_secret passed are incorrect.' });
    }
    const code = codes.get(body.get('code') ?? '');
    codes.delete(body.get('code') ?? '');
    const verifier = body.get('code_verifier') ?? '';
    if (!code || code.expires < Date.now() || s256(verifier) !== code.challenge) {
      return answer({ error: 'bad_verification_code', error_description: 'The code passed is incorrect or expired.' });
    }
    if (body.has('redirect_uri') && body.get('redirect_uri') !== code.redirectUri) {
      return answer({ error: 'redirect_uri_mismatch', error_description: 'The redirect_uri MUST match the registered callback URL for this application.' });
    }
    const token = `gho_${random(27).replace(/[-_]/g, '0')}`;
    tokens.set(token, code.login);
    return answer({ access_token: token, token_type: 'bearer', scope: 'read:user,user:email' });
  }

  if (req.method === 'GET' && (path === '/api/user' || path === '/api/user/emails')) {
    if (!req.headers['user-agent']) {
      return json(res, 403, { message: 'Request forbidden by administrative rules. Please make sure your request has a User-Agent header.' });
    }
    const auth = /^(?:bearer|token)\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    const login = auth && tokens.get(auth[1]);
    if (!login) return json(res, 401, { message: 'Bad credentials', status: '401' });
    const who = person(login);
    return path === '/api/user'
      ? json(res, 200, { id: who.githubId, login: who.local, name: who.name, email: null })
      : json(res, 200, [{ email: who.email, primary: true, verified: who.verified, visibility: null }]);
  }

  return json(res, 404, { message: 'Not Found' });
}

// ---- server --------------------------------------------------------------------------

let provider;
let oidcCallback;
const server = createServer(async (req, res) => {
  const url = new URL(req.url, provider.issuer);
  try {
    if (url.pathname === '/github' || url.pathname.startsWith('/github/')) return await github(req, res, url);
    if (url.pathname.startsWith('/interaction/')) return await interaction(provider, req, res, url);
    return oidcCallback(req, res);
  } catch (err) {
    console.error(`${req.method} ${url.pathname}:`, err);
    if (!res.headersSent) send(res, 400, 'text/plain', `${err.message}\n`);
    else res.end();
  }
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  provider = makeProvider(issuer);
  oidcCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, github: `${issuer}/github` })}\n`);
});

const quit = () => process.exit(0);
process.stdin.on('end', quit).on('close', quit).resume();
process.on('SIGTERM', quit).on('SIGINT', quit);
