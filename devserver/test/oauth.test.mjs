// facts §3: OAuth2 client credentials, ES256 tokens with Medplum's claims, JWKS, discovery,
// authorization code + PKCE through the development login page, 401 on missing/bad tokens.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, decodeJwt, pkcePair, startServer, token } from './helpers.mjs';

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.stop();
});

async function jwks() {
  const res = await fetch(srv.baseUrl + '.well-known/jwks.json');
  assert.equal(res.status, 200);
  return (await res.json()).keys;
}

function verifyWithJwks(jwt, keys) {
  const { header, signingInput, signature } = decodeJwt(jwt);
  const jwk = keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, 'kid present in JWKS');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  return crypto.verify('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' }, signature);
}

describe('client credentials', () => {
  test('form fields: token response and claims verified against the JWKS', async () => {
    const before = Math.floor(Date.now() / 1000);
    const tok = await token(srv.baseUrl, CLIENTS.service);
    assert.equal(tok.token_type, 'Bearer');
    assert.equal(tok.expires_in, 3600);
    assert.equal(typeof tok.scope, 'string');
    assert.deepEqual(tok.profile, { reference: 'ClientApplication/starvit-service' });
    const { header, payload } = decodeJwt(tok.access_token);
    assert.equal(header.alg, 'ES256');
    assert.ok(verifyWithJwks(tok.access_token, await jwks()), 'signature verifies with the published key');
    assert.equal(payload.iss, srv.baseUrl);
    assert.equal(payload.aud, 'starvit-service');
    assert.equal(payload.sub, 'starvit-service');
    assert.equal(payload.username, 'starvit-service');
    assert.equal(payload.profile, 'ClientApplication/starvit-service');
    assert.match(payload.login_id, /^[0-9a-f-]{36}$/);
    assert.equal(payload.scope, tok.scope);
    assert.ok(payload.iat >= before - 1 && payload.nbf <= payload.iat + 1);
    assert.equal(payload.exp - payload.iat, 3600);
  });

  test('HTTP Basic authentication works too', async () => {
    const tok = await token(srv.baseUrl, CLIENTS.partner, { basic: true });
    assert.equal(decodeJwt(tok.access_token).payload.sub, 'partner-acme');
  });

  test('a wrong secret is refused with an OAuth error', async () => {
    const res = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'starvit-service', client_secret: 'nope' }),
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error, 'invalid_request');
  });

  test('discovery documents', async () => {
    const oc = await (await fetch(srv.baseUrl + '.well-known/openid-configuration')).json();
    assert.equal(oc.issuer, srv.baseUrl);
    assert.equal(oc.token_endpoint, srv.baseUrl + 'oauth2/token');
    assert.equal(oc.jwks_uri, srv.baseUrl + '.well-known/jwks.json');
    const smart = await fetch(srv.baseUrl + '.well-known/smart-configuration');
    assert.equal(smart.status, 200);
  });
});

describe('bearer tokens on /fhir/R4', () => {
  test('missing token -> 401 OperationOutcome', async () => {
    const res = await client(srv.baseUrl).get('Patient');
    assert.equal(res.status, 401);
    assert.equal(res.body.resourceType, 'OperationOutcome');
  });

  test('tampered token -> 401', async () => {
    const tok = await token(srv.baseUrl, CLIENTS.service);
    const [h, p] = tok.access_token.split('.');
    const forged = h + '.' + Buffer.from(JSON.stringify({ ...decodeJwt(tok.access_token).payload, sub: 'ops-admin' })).toString('base64url') + '.' + tok.access_token.split('.')[2];
    assert.equal((await client(srv.baseUrl, forged).get('Patient')).status, 401);
    assert.equal((await client(srv.baseUrl, h + '.' + p + '.AAAA').get('Patient')).status, 401);
    assert.equal((await client(srv.baseUrl, tok.access_token).get('Patient')).status, 200);
  });
});

describe('authorization code + PKCE (development login page)', () => {
  const redirectUri = 'http://127.0.0.1:8765/callback';

  async function authorize(params, user) {
    const res = await fetch(srv.baseUrl + 'oauth2/authorize', {
      method: 'POST',
      body: new URLSearchParams({ ...params, user }),
      redirect: 'manual',
    });
    return res;
  }

  test('login page lists the seeded users; code exchange yields a user token', async () => {
    const { verifier, challenge } = pkcePair();
    const params = {
      response_type: 'code',
      client_id: 'starvit-clinician-app',
      redirect_uri: redirectUri,
      scope: 'openid fhirUser',
      state: 'xyz-123',
      code_challenge: challenge,
      code_challenge_method: 'S256',
    };
    const page = await fetch(srv.baseUrl + 'oauth2/authorize?' + new URLSearchParams(params));
    assert.equal(page.status, 200);
    const html = await page.text();
    for (const id of ['clinician-alice', 'clinician-bob', 'ops-olivia', 'researcher-ravi', 'patient-portal-pat']) {
      assert.ok(html.includes(`value="${id}"`), `button for ${id}`);
    }
    const res = await authorize(params, 'clinician-alice');
    assert.equal(res.status, 302);
    const location = new URL(res.headers.get('location'));
    assert.equal(location.origin + location.pathname, redirectUri);
    assert.equal(location.searchParams.get('state'), 'xyz-123');
    const code = location.searchParams.get('code');
    assert.ok(code);

    const bad = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: 'wrong-verifier', client_id: 'starvit-clinician-app', redirect_uri: redirectUri }),
    });
    assert.equal(bad.status, 400);

    const ok = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: 'starvit-clinician-app', redirect_uri: redirectUri }),
    });
    assert.equal(ok.status, 200);
    const tok = await ok.json();
    const { payload } = decodeJwt(tok.access_token);
    assert.ok(verifyWithJwks(tok.access_token, await jwks()));
    assert.equal(payload.aud, 'starvit-clinician-app');
    assert.equal(payload.profile, 'Practitioner/clinician-alice');
    assert.equal(payload.sub, 'user-clinician-alice');
    assert.equal(payload.username, 'user-clinician-alice');

    const info = await (await fetch(srv.baseUrl + 'oauth2/userinfo', { headers: { Authorization: 'Bearer ' + tok.access_token } })).json();
    assert.equal(info.profile, 'Practitioner/clinician-alice');

    const reuse = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: 'starvit-clinician-app' }),
    });
    assert.equal(reuse.status, 400, 'a code works once');
  });

  test('PKCE is required and the redirect URI must match', async () => {
    const base = { response_type: 'code', client_id: 'starvit-clinician-app', redirect_uri: redirectUri, state: 's' };
    assert.equal((await fetch(srv.baseUrl + 'oauth2/authorize?' + new URLSearchParams(base))).status, 400);
    const { challenge } = pkcePair();
    const wrong = { ...base, redirect_uri: 'http://evil.example/cb', code_challenge: challenge, code_challenge_method: 'S256' };
    assert.equal((await fetch(srv.baseUrl + 'oauth2/authorize?' + new URLSearchParams(wrong))).status, 400);
  });
});
