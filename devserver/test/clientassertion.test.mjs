// facts §3: client credentials with a private_key_jwt client assertion (SMART Backend Services),
// as Medplum's token endpoint: aud = the token URL, iss = sub = the client id, the signature
// checked against the ClientApplication's jwksUri; the partner-keyed client and a second tenant
// (lab-beta, partner-beta) are seeded for the partner API.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, decodeJwt, startServer, token } from './helpers.mjs';

const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
let srv;
let jwksServer;
let jwksUrl;
const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const kid = 'partner-keyed-1';
const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });

function sign(claims, key = privateKey, header = { alg: 'ES256', kid, typ: 'JWT' }) {
  const input = Buffer.from(JSON.stringify(header)).toString('base64url') + '.' + Buffer.from(JSON.stringify(claims)).toString('base64url');
  const signature = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return input + '.' + signature.toString('base64url');
}

function claims(extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return { iss: 'partner-keyed', sub: 'partner-keyed', aud: srv.baseUrl + 'oauth2/token', jti: crypto.randomUUID(), iat: now, exp: now + 300, ...extra };
}

async function requestToken(assertion, type = ASSERTION_TYPE) {
  const res = await fetch(srv.baseUrl + 'oauth2/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', client_assertion_type: type, client_assertion: assertion }),
  });
  return { status: res.status, json: await res.json() };
}

before(async () => {
  srv = await startServer();
  jwksServer = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' }] }));
  });
  await new Promise((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  jwksUrl = `http://127.0.0.1:${jwksServer.address().port}/jwks.json`;
  const admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
  const current = await admin.get('ClientApplication/partner-keyed');
  assert.equal(current.status, 200);
  const updated = await admin.put('ClientApplication/partner-keyed', { ...current.body, jwksUri: jwksUrl });
  assert.equal(updated.status, 200);
});
after(async () => {
  await srv?.stop();
  await new Promise((resolve) => jwksServer?.close(resolve));
});

describe('private_key_jwt client assertions', () => {
  test('a signed assertion yields an access token for the client, as client credentials do', async () => {
    const { status, json } = await requestToken(sign(claims()));
    assert.equal(status, 200, JSON.stringify(json));
    const { payload } = decodeJwt(json.access_token);
    assert.equal(payload.aud, 'partner-keyed');
    assert.equal(payload.profile, 'ClientApplication/partner-keyed');
    const fhir = client(srv.baseUrl, json.access_token);
    assert.equal((await fhir.get('Patient?_count=1')).status, 200);
  });

  test('refusals name Medplum\'s reasons', async () => {
    const cases = [
      [sign(claims()), 'urn:example:other', 'Unsupported client assertion type'],
      ['not-a-jwt', ASSERTION_TYPE, 'Invalid client assertion'],
      [sign(claims({ aud: 'http://elsewhere.example/oauth2/token' })), ASSERTION_TYPE, 'Invalid client assertion audience'],
      [sign(claims({ sub: 'partner-acme' })), ASSERTION_TYPE, 'Invalid client assertion issuer'],
      [sign(claims({ iss: 'nobody', sub: 'nobody' })), ASSERTION_TYPE, 'Client not found'],
      [sign(claims({ iss: 'partner-acme', sub: 'partner-acme' })), ASSERTION_TYPE, 'Client must have a JWK Set URL'],
      [sign(claims(), other.privateKey), ASSERTION_TYPE, 'Invalid client assertion signature'],
      [sign(claims({ exp: Math.floor(Date.now() / 1000) - 60 })), ASSERTION_TYPE, 'Invalid client assertion signature'],
      [sign(claims(), privateKey, { alg: 'HS256', kid, typ: 'JWT' }), ASSERTION_TYPE, 'Invalid client assertion signature'],
    ];
    for (const [assertion, type, description] of cases) {
      const { status, json } = await requestToken(assertion, type);
      assert.equal(status, 400, description);
      assert.deepEqual(json, { error: 'invalid_request', error_description: description });
    }
  });

  test('discovery advertises private_key_jwt', async () => {
    const config = await (await fetch(srv.baseUrl + '.well-known/smart-configuration')).json();
    assert.ok(config.token_endpoint_auth_methods_supported.includes('private_key_jwt'));
    assert.ok(config.capabilities.includes('client-confidential-asymmetric'));
  });
});

describe('the second tenant', () => {
  test('partner-beta sees its own tenant only', async () => {
    const beta = client(srv.baseUrl, (await token(srv.baseUrl, ['partner-beta', 'partner-beta-dev-secret'])).access_token);
    assert.equal((await beta.get('Patient/beta-patient')).status, 200);
    const acme = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
    assert.equal((await acme.get('Patient/beta-patient')).status, 404);
  });
});
