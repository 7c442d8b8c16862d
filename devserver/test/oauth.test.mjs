// facts §3 and §7: OAuth2 client credentials (no stored Login), ES256 tokens with Medplum's claims,
// JWKS, discovery, sign-in as the real server: /oauth2/authorize redirects to the app's sign-in page,
// the app calls POST /auth/login, the code is exchanged with PKCE enforced; 401 on missing/bad tokens.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  APP_CLIENT,
  APP_REDIRECT,
  CLIENTS,
  USERS,
  client,
  decodeJwt,
  devserver,
  exchangeCode,
  login,
  pkcePair,
  startServer,
  token,
} from './helpers.mjs';

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

describe('client credentials create no stored Login (5.0)', () => {
  test('no Login resource is stored for client tokens; the token works and can be revoked', async () => {
    const logins = async () => (await devserver(srv.baseUrl, 'stats')).resources.Login ?? 0;
    const before = await logins();
    const tok = await token(srv.baseUrl, CLIENTS.partner);
    assert.equal(await logins(), before, 'client credentials store no Login');
    await login(srv.baseUrl, USERS.ravi);
    assert.equal(await logins(), before + 1, 'a user sign-in does');
    const { payload } = decodeJwt(tok.access_token);
    assert.match(payload.login_id, /^[0-9a-f-]{36}$/);
    const partner = client(srv.baseUrl, tok.access_token);
    assert.equal((await partner.get('Patient?_count=1')).status, 200);
    const introspected = await (await fetch(srv.baseUrl + 'oauth2/introspect', { method: 'POST', body: new URLSearchParams({ token: tok.access_token }) })).json();
    assert.equal(introspected.active, true);
    const logout = await fetch(srv.baseUrl + 'oauth2/logout', { method: 'POST', headers: { Authorization: 'Bearer ' + tok.access_token } });
    assert.equal(logout.status, 200);
    assert.equal((await partner.get('Patient?_count=1')).status, 401);
  });

  test('the token endpoint takes form-encoded bodies only', async () => {
    const res = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'starvit-service', client_secret: 'starvit-dev-service-secret' }),
    });
    assert.equal(res.status, 400);
    assert.equal(await res.text(), 'Unsupported content type');
  });
});

describe('sign-in: /oauth2/authorize -> app sign-in page -> POST /auth/login -> code + PKCE', () => {
  const authorizeParams = (challenge) => ({
    response_type: 'code',
    client_id: APP_CLIENT,
    redirect_uri: APP_REDIRECT,
    scope: 'openid fhirUser',
    state: 'xyz-123',
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });

  test('GET /oauth2/authorize redirects to the app sign-in page with every parameter', async () => {
    const { challenge } = pkcePair();
    const params = authorizeParams(challenge);
    const res = await fetch(srv.baseUrl + 'oauth2/authorize?' + new URLSearchParams(params), { redirect: 'manual' });
    assert.equal(res.status, 302);
    const location = new URL(res.headers.get('location'));
    assert.equal(location.origin + location.pathname, srv.baseUrl + '_devserver/app/oauth');
    assert.deepEqual(Object.fromEntries(location.searchParams), params);
    // POST takes the same parameters as a form body
    const post = await fetch(srv.baseUrl + 'oauth2/authorize', { method: 'POST', body: new URLSearchParams(params), redirect: 'manual' });
    assert.equal(post.status, 302);
    assert.equal(new URL(post.headers.get('location')).pathname, '/_devserver/app/oauth');
  });

  test('authorize errors: unknown client / wrong redirect -> 400; other problems redirect to the client', async () => {
    const { challenge } = pkcePair();
    const base = authorizeParams(challenge);
    const get = (p) => fetch(srv.baseUrl + 'oauth2/authorize?' + new URLSearchParams(p), { redirect: 'manual' });
    const noClient = await get({ ...base, client_id: 'nope' });
    assert.equal(noClient.status, 400);
    assert.equal(await noClient.text(), 'Client not found');
    const wrongRedirect = await get({ ...base, redirect_uri: 'http://evil.example/cb' });
    assert.equal(wrongRedirect.status, 400);
    assert.equal(await wrongRedirect.text(), 'Incorrect redirect_uri');
    for (const [params, error] of [
      [{ ...base, scope: '' }, 'invalid_request'],
      [{ ...base, response_type: 'token' }, 'unsupported_response_type'],
      [{ ...base, code_challenge_method: '' }, 'invalid_request'],
    ]) {
      const res = await get(params);
      assert.equal(res.status, 302);
      const location = new URL(res.headers.get('location'));
      assert.equal(location.origin + location.pathname, APP_REDIRECT);
      assert.equal(location.searchParams.get('error'), error);
      assert.equal(location.searchParams.get('state'), 'xyz-123');
    }
  });

  test('POST /auth/login answers {login, code}; the code exchange yields a user token', async () => {
    const { verifier, challenge } = pkcePair();
    const signedIn = await login(srv.baseUrl, USERS.alice, { codeChallenge: challenge, codeChallengeMethod: 'S256', scope: 'openid fhirUser' });
    assert.equal(signedIn.status, 200, JSON.stringify(signedIn.body));
    assert.deepEqual(Object.keys(signedIn.body).sort(), ['code', 'login']);
    assert.match(signedIn.headers.get('set-cookie'), /^medplum-starvit-clinician-app=/);

    const bad = await exchangeCode(srv.baseUrl, signedIn.body.code, 'wrong-verifier');
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error_description, 'Invalid code verifier');

    const ok = await exchangeCode(srv.baseUrl, signedIn.body.code, verifier);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const tok = ok.body;
    const { payload } = decodeJwt(tok.access_token);
    assert.ok(verifyWithJwks(tok.access_token, await jwks()));
    assert.equal(payload.aud, APP_CLIENT);
    assert.equal(payload.profile, 'Practitioner/clinician-alice');
    assert.equal(payload.sub, 'user-clinician-alice');
    assert.equal(payload.username, 'user-clinician-alice');
    assert.deepEqual(tok.profile, { reference: 'Practitioner/clinician-alice' });

    const info = await (await fetch(srv.baseUrl + 'oauth2/userinfo', { headers: { Authorization: 'Bearer ' + tok.access_token } })).json();
    assert.equal(info.profile, 'Practitioner/clinician-alice');

    const reuse = await exchangeCode(srv.baseUrl, signedIn.body.code, verifier);
    assert.equal(reuse.status, 400, 'a code works once');
    assert.equal(reuse.body.error, 'invalid_grant');
  });

  test('PKCE is enforced at the exchange; wrong passwords and unknown users are refused', async () => {
    const noChallenge = await login(srv.baseUrl, USERS.bob);
    assert.equal(noChallenge.status, 200);
    const exchanged = await exchangeCode(srv.baseUrl, noChallenge.body.code, undefined);
    assert.equal(exchanged.status, 400);
    assert.equal(exchanged.body.error_description, 'Missing verification context');

    const { challenge } = pkcePair();
    const missingVerifier = await login(srv.baseUrl, USERS.bob, { codeChallenge: challenge, codeChallengeMethod: 'S256' });
    assert.equal((await exchangeCode(srv.baseUrl, missingVerifier.body.code, undefined)).body.error_description, 'Missing code verifier');

    const wrong = await login(srv.baseUrl, [USERS.bob[0], 'not-the-password']);
    assert.equal(wrong.status, 400);
    assert.equal(wrong.body.issue[0].details.text, 'Email or password is invalid');
    const unknown = await login(srv.baseUrl, ['nobody@starvit.example', 'whatever-password']);
    assert.equal(unknown.status, 400);
    assert.equal(unknown.body.issue[0].details.text, 'User not found');
    const invalid = await login(srv.baseUrl, ['not-an-email', 'x']);
    assert.equal(invalid.status, 400);
    assert.deepEqual(invalid.body.issue.map((i) => i.expression[0]), ['email', 'password']);
    const noMethod = await login(srv.baseUrl, USERS.bob, { codeChallenge: challenge });
    assert.equal(noMethod.status, 400);
  });

  test('the stand-in sign-in page signs in and redirects to the client with code and state', async () => {
    const { verifier, challenge } = pkcePair();
    const params = authorizeParams(challenge);
    const page = await fetch(srv.baseUrl + '_devserver/app/oauth?' + new URLSearchParams(params));
    assert.equal(page.status, 200);
    assert.match(await page.text(), /alice\.clinician@starvit\.example/);
    const wrong = await fetch(srv.baseUrl + '_devserver/app/oauth', {
      method: 'POST',
      body: new URLSearchParams({ ...params, email: USERS.alice[0], password: 'nope-nope' }),
      redirect: 'manual',
    });
    assert.equal(wrong.status, 200);
    assert.match(await wrong.text(), /Email or password is invalid/);
    const res = await fetch(srv.baseUrl + '_devserver/app/oauth', {
      method: 'POST',
      body: new URLSearchParams({ ...params, email: USERS.alice[0], password: USERS.alice[1] }),
      redirect: 'manual',
    });
    assert.equal(res.status, 302);
    const location = new URL(res.headers.get('location'));
    assert.equal(location.origin + location.pathname, APP_REDIRECT);
    assert.equal(location.searchParams.get('state'), 'xyz-123');
    const ok = await exchangeCode(srv.baseUrl, location.searchParams.get('code'), verifier);
    assert.equal(ok.status, 200);
    assert.equal(ok.body.profile.reference, 'Practitioner/clinician-alice');
  });
});
