// SMART Backend Services client authentication: `private_key_jwt` client assertions
// (RFC 7523), as Medplum's token endpoint does it (packages/server/src/oauth/token.ts,
// parseClientAssertion):
//
// - client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer;
// - the assertion's `aud` must be the token endpoint URL and `iss` must equal `sub` (the client id);
// - the ClientApplication must have a `jwksUri`; its key set is fetched and the signature checked
//   (RS256/384/512, ES256/384/512 only), with the issuer and audience checked again and the
//   assertion's lifetime (`exp`, `nbf`) enforced;
// - on success the request continues as if the client had sent its id and secret (Medplum then
//   still requires the ClientApplication to have a secret).
import crypto from 'node:crypto';

export const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ALGORITHMS = {
  RS256: { hash: 'sha256', kty: 'RSA' },
  RS384: { hash: 'sha384', kty: 'RSA' },
  RS512: { hash: 'sha512', kty: 'RSA' },
  ES256: { hash: 'sha256', kty: 'EC' },
  ES384: { hash: 'sha384', kty: 'EC' },
  ES512: { hash: 'sha512', kty: 'EC' },
};
const JWKS_TIMEOUT_MS = 5000;
const CLOCK_TOLERANCE_S = 0;

function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

async function fetchKeySet(url) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), JWKS_TIMEOUT_MS);
  try {
    const res = await fetch(url, { signal: controller.signal, headers: { Accept: 'application/json' } });
    if (!res.ok) {
      return undefined;
    }
    const body = await res.json();
    return Array.isArray(body?.keys) ? body.keys : undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

function signatureValid(alg, jwk, signingInput, signature) {
  const spec = ALGORITHMS[alg];
  if (!spec || jwk.kty !== spec.kty || (jwk.alg && jwk.alg !== alg)) {
    return false;
  }
  try {
    const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    const options = spec.kty === 'EC' ? { key, dsaEncoding: 'ieee-p1363' } : key;
    return crypto.verify(spec.hash, Buffer.from(signingInput), options, signature);
  } catch {
    return false;
  }
}

/**
 * Verifies a client assertion.
 * @returns {Promise<{clientId?: string, clientSecret?: string, error?: string}>}
 */
export async function verifyClientAssertion(app, assertionType, assertion) {
  if (assertionType !== JWT_BEARER) {
    return { error: 'Unsupported client assertion type' };
  }
  const parts = typeof assertion === 'string' ? assertion.split('.') : [];
  if (parts.length !== 3) {
    return { error: 'Invalid client assertion' };
  }
  let header;
  let claims;
  try {
    header = decodePart(parts[0]);
    claims = decodePart(parts[1]);
  } catch {
    return { error: 'Invalid client assertion' };
  }
  const tokenUrl = app.config.baseUrl + 'oauth2/token';
  if (claims.aud !== tokenUrl) {
    return { error: 'Invalid client assertion audience' };
  }
  if (claims.iss !== claims.sub) {
    return { error: 'Invalid client assertion issuer' };
  }
  const clientId = String(claims.iss);
  const client = app.store.get('ClientApplication', clientId);
  if (!client) {
    return { error: 'Client not found' };
  }
  if (!client.jwksUri) {
    return { error: 'Client must have a JWK Set URL' };
  }
  const invalid = { error: 'Invalid client assertion signature' };
  if (!ALGORITHMS[header.alg]) {
    return invalid;
  }
  const keys = await fetchKeySet(client.jwksUri);
  if (!keys) {
    return invalid;
  }
  const candidates = keys.filter((k) => (header.kid ? k.kid === header.kid : true) && (!k.use || k.use === 'sig'));
  const signingInput = parts[0] + '.' + parts[1];
  const signature = Buffer.from(parts[2], 'base64url');
  if (!candidates.some((jwk) => signatureValid(header.alg, jwk, signingInput, signature))) {
    return invalid;
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp === 'number' && claims.exp < now - CLOCK_TOLERANCE_S) {
    return invalid;
  }
  if (typeof claims.nbf === 'number' && claims.nbf > now + CLOCK_TOLERANCE_S) {
    return invalid;
  }
  return { clientId, clientSecret: client.secret };
}

/**
 * The token endpoint with client assertions: an assertion, when present, names the client
 * (it takes precedence over Basic auth and form fields, as in Medplum's getClientIdAndSecret).
 */
export async function handleTokenRequest(app, params, authorizationHeader, handleToken) {
  if (!params.client_assertion_type) {
    return handleToken(app, params, authorizationHeader);
  }
  const asserted = await verifyClientAssertion(app, params.client_assertion_type, params.client_assertion);
  if (asserted.error) {
    app.stats.token.requests++;
    return { status: 400, json: { error: 'invalid_request', error_description: asserted.error } };
  }
  const { client_assertion: _assertion, client_assertion_type: _type, ...rest } = params;
  return handleToken(app, { ...rest, client_id: asserted.clientId, client_secret: asserted.clientSecret }, undefined);
}
