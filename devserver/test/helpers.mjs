// Shared helpers for the conformance suite: start the stand-in as a child process on a free
// port, obtain tokens, call the FHIR API, and capture rest-hook notifications.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DEVSERVER_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const CLIENTS = {
  service: ['starvit-service', 'starvit-dev-service-secret'],
  partner: ['partner-acme', 'partner-acme-dev-secret'],
  admin: ['ops-admin', 'ops-admin-dev-secret'],
};

/** Seeded users (development passwords) and the public app they sign in through. */
export const USERS = {
  alice: ['alice.clinician@starvit.example', 'alice-dev-password'],
  bob: ['bob.clinician@starvit.example', 'bob-dev-password'],
  olivia: ['olivia.ops@starvit.example', 'olivia-dev-password'],
  ravi: ['ravi.researcher@starvit.example', 'ravi-dev-password'],
  pat: ['pat.portal@starvit.example', 'pat-dev-password'],
};
export const APP_CLIENT = 'starvit-clinician-app';
export const APP_REDIRECT = 'http://127.0.0.1:8765/callback';

export const EXT = {
  secret: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret',
  maxAttempts: 'https://medplum.com/fhir/StructureDefinition/subscription-max-attempts',
  successCodes: 'https://medplum.com/fhir/StructureDefinition/subscription-success-codes',
  auditDestination: 'https://medplum.com/fhir/StructureDefinition/subscription-audit-event-destination',
  interaction: 'https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction',
  fhirPath: 'https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression',
};

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Starts `node server.mjs` with the given environment; resolves once it prints its ready line. */
export async function startServer(env = {}) {
  const port = await freePort();
  const child = spawn(process.execPath, ['server.mjs'], {
    cwd: DEVSERVER_DIR,
    env: { ...process.env, MEDPLUM_PORT: String(port), MEDPLUM_BASE_URL: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start: ' + output)), 15000);
    child.stdout.on('data', (d) => {
      output += d;
      if (output.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr.on('data', (d) => (output += d));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${output}`));
    });
  });
  const baseUrl = `http://127.0.0.1:${port}/`;
  const logs = [];
  child.stdout.on('data', (d) => logs.push(String(d)));
  return {
    port,
    baseUrl,
    child,
    logs,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null) {
        children.delete(child);
        return child.exitCode;
      }
      const exited = new Promise((r) => child.once('exit', (code) => r(code)));
      child.kill(signal);
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5000))]);
      if (code === 'timeout') {
        child.kill('SIGKILL');
        await exited;
      }
      children.delete(child);
      return code;
    },
  };
}

export async function token(baseUrl, [clientId, secret], { basic = false } = {}) {
  const init = { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' } };
  if (basic) {
    init.headers.Authorization = 'Basic ' + Buffer.from(`${clientId}:${secret}`).toString('base64');
    init.body = new URLSearchParams({ grant_type: 'client_credentials' });
  } else {
    init.body = new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret });
  }
  const res = await fetch(baseUrl + 'oauth2/token', init);
  const json = await res.json();
  if (res.status !== 200) {
    throw new Error('token failed: ' + JSON.stringify(json));
  }
  return json;
}

/** A small FHIR client bound to one access token. */
export function client(baseUrl, accessToken) {
  async function request(method, p, body, headers = {}) {
    const init = { method, headers: { Accept: 'application/fhir+json', ...headers } };
    if (accessToken) {
      init.headers.Authorization = 'Bearer ' + accessToken;
    }
    if (body !== undefined) {
      init.body = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
      init.headers['Content-Type'] ??= p && method === 'PATCH' ? 'application/json-patch+json' : 'application/fhir+json';
    }
    const res = await fetch(baseUrl + 'fhir/R4/' + p, init);
    const text = await res.text();
    let json;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = text;
    }
    return { status: res.status, headers: res.headers, body: json };
  }
  return {
    request,
    get: (p, h) => request('GET', p, undefined, h),
    post: (p, b, h) => request('POST', p, b, h),
    put: (p, b, h) => request('PUT', p, b, h),
    patch: (p, b, h) => request('PATCH', p, b, h),
    del: (p, h) => request('DELETE', p, undefined, h),
  };
}

/** Local rest-hook receiver capturing every POST (raw body bytes included). */
export async function startReceiver() {
  const received = [];
  let responder = () => 200;
  const waiters = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const entry = { time: Date.now(), path: req.url, method: req.method, headers: req.headers, raw, body: raw.toString('utf8') };
      received.push(entry);
      const out = responder(entry);
      const { status, delayMs } = typeof out === 'number' ? { status: out } : out;
      const reply = () => {
        if (!res.destroyed) {
          res.writeHead(status);
          res.end();
        }
      };
      if (delayMs) {
        setTimeout(reply, delayMs).unref();
      } else {
        reply();
      }
      for (const w of waiters) {
        w();
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    received,
    setResponder(fn) {
      responder = fn;
    },
    forPath(p) {
      return received.filter((r) => r.path === p);
    },
    async waitFor(predicate, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (!predicate(received)) {
        if (Date.now() > deadline) {
          throw new Error('timed out waiting for notifications; got ' + received.length);
        }
        await new Promise((r) => {
          const w = () => {
            waiters.delete(w);
            r();
          };
          waiters.add(w);
          setTimeout(w, 50);
        });
      }
      return received;
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((r) => server.close(r));
    },
  };
}

export function hmacHex(secret, raw) {
  return crypto.createHmac('sha256', secret).update(raw).digest('hex');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function subscription(endpoint, criteria, extension = [], extra = {}) {
  return {
    resourceType: 'Subscription',
    status: 'active',
    reason: 'conformance test',
    criteria,
    channel: { type: 'rest-hook', endpoint, payload: 'application/fhir+json', ...(extra.channel ?? {}) },
    extension,
  };
}

export function decodeJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    signingInput: h + '.' + p,
    signature: Buffer.from(s, 'base64url'),
  };
}

export function pkcePair() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

/** POST /auth/login as the Medplum app does (JSON; PKCE challenge; clientId fixes the project). */
export async function login(baseUrl, [email, password], extra = {}) {
  const res = await fetch(baseUrl + 'auth/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password, clientId: APP_CLIENT, scope: 'openid', ...extra }),
  });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

/** Exchanges an authorization code at /oauth2/token (form-encoded). */
export async function exchangeCode(baseUrl, code, verifier, extra = {}) {
  const params = { grant_type: 'authorization_code', code, client_id: APP_CLIENT, ...extra };
  if (verifier !== undefined) {
    params.code_verifier = verifier;
  }
  const res = await fetch(baseUrl + 'oauth2/token', { method: 'POST', body: new URLSearchParams(params) });
  return { status: res.status, body: await res.json() };
}

/** Signs a seeded user in (POST /auth/login + code exchange with PKCE S256); returns the token response. */
export async function userToken(baseUrl, user) {
  const { verifier, challenge } = pkcePair();
  const signedIn = await login(baseUrl, user, { codeChallenge: challenge, codeChallengeMethod: 'S256' });
  if (signedIn.status !== 200 || !signedIn.body.code) {
    throw new Error('login failed: ' + JSON.stringify(signedIn.body));
  }
  const tok = await exchangeCode(baseUrl, signedIn.body.code, verifier);
  if (tok.status !== 200) {
    throw new Error('code exchange failed: ' + JSON.stringify(tok.body));
  }
  return tok.body;
}

/** Calls a stand-in-only endpoint under /_devserver/. */
export async function devserver(baseUrl, path, body, method = body === undefined ? 'GET' : 'POST') {
  const res = await fetch(baseUrl + '_devserver/' + path, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.json();
}

/** Parses `RateLimit` header lines ("requests";r=1;t=2, "fhirInteractions";r=3;t=4) into an object. */
export function parseRateLimit(value) {
  const out = {};
  for (const part of String(value ?? '').split(',')) {
    const m = /^\s*"([^"]+)";r=(\d+);t=(\d+)\s*$/.exec(part);
    if (m) {
      out[m[1]] = { r: Number(m[2]), t: Number(m[3]) };
    }
  }
  return out;
}
