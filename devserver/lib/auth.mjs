// OAuth2 / OpenID endpoints, ES256 token signing, bearer-token authentication and
// ProjectMembership + AccessPolicy resolution, modelled on the Medplum server.
import {
  createReference,
  getDisplayString,
  OperationOutcomeError,
  projectAdminResourceTypes,
  unauthorized,
  badRequest,
  forbidden,
} from '@medplum/core';
import crypto from 'node:crypto';

const TOKEN_LIFETIME_S = 3600;
const CODE_LIFETIME_MS = 10 * 60 * 1000;

// ------------------------------------------------------------------ keys and JWTs

export class Keys {
  constructor(saved) {
    if (saved?.privateJwk) {
      this.privateKey = crypto.createPrivateKey({ key: saved.privateJwk, format: 'jwk' });
      this.kid = saved.kid;
    } else {
      this.privateKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      this.kid = crypto.randomUUID();
    }
    this.publicKey = crypto.createPublicKey(this.privateKey);
    this.jwk = { ...this.publicKey.export({ format: 'jwk' }), kid: this.kid, alg: 'ES256', use: 'sig' };
  }

  toJSON() {
    return { kid: this.kid, privateJwk: this.privateKey.export({ format: 'jwk' }) };
  }

  sign(payload) {
    const header = { alg: 'ES256', kid: this.kid, typ: 'JWT' };
    const input = b64url(JSON.stringify(header)) + '.' + b64url(JSON.stringify(payload));
    const sig = crypto.sign('sha256', Buffer.from(input), { key: this.privateKey, dsaEncoding: 'ieee-p1363' });
    return input + '.' + sig.toString('base64url');
  }

  /** @returns the payload, or undefined when the token is malformed, badly signed or expired. */
  verify(token) {
    const parts = token.split('.');
    if (parts.length !== 3) {
      return undefined;
    }
    let header, payload;
    try {
      header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
      payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (header.alg !== 'ES256' || (header.kid && header.kid !== this.kid)) {
      return undefined;
    }
    const ok = crypto.verify(
      'sha256',
      Buffer.from(parts[0] + '.' + parts[1]),
      { key: this.publicKey, dsaEncoding: 'ieee-p1363' },
      Buffer.from(parts[2], 'base64url')
    );
    if (!ok) {
      return undefined;
    }
    const now = Math.floor(Date.now() / 1000);
    if (typeof payload.exp !== 'number' || payload.exp < now || (payload.nbf && payload.nbf > now + 5)) {
      return undefined;
    }
    return payload;
  }
}

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

function timingSafeEqualStr(a, b) {
  const ab = Buffer.from(String(a));
  const bb = Buffer.from(String(b));
  return ab.length === bb.length && crypto.timingSafeEqual(ab, bb);
}

// ------------------------------------------------------------------ memberships and policies

function idOf(ref) {
  return ref?.reference?.split('/')[1];
}

export function findMembershipByProfile(store, profileRef) {
  for (const m of store.all('ProjectMembership')) {
    if (m.profile?.reference === profileRef && m.active !== false) {
      return m;
    }
  }
  return undefined;
}

function findMembershipByUser(store, userRef) {
  for (const m of store.all('ProjectMembership')) {
    if (m.user?.reference === userRef && m.active !== false) {
      return m;
    }
  }
  return undefined;
}

/** Builds the effective AccessPolicy for a membership, like Medplum's buildAccessPolicy. */
export function buildAccessPolicy(store, membership) {
  const access = [];
  if (membership.accessPolicy) {
    access.push({ policy: membership.accessPolicy, parameter: [] });
  }
  for (const a of membership.access ?? []) {
    access.push(a);
  }
  const resources = [];
  for (const entry of access) {
    const policy = store.get('AccessPolicy', idOf(entry.policy));
    if (!policy) {
      continue;
    }
    let json = JSON.stringify(policy.resource ?? []);
    const params = [{ name: 'profile', valueReference: membership.profile }, ...(entry.parameter ?? [])];
    for (const p of params) {
      const ref = p.valueReference?.reference;
      const value = ref ?? p.valueString ?? '';
      const id = ref ? ref.split('/')[1] : value;
      json = json.replaceAll(`%${p.name}.id`, id).replaceAll(`%${p.name}`, value);
    }
    resources.push(...JSON.parse(json));
  }
  if (resources.length === 0) {
    resources.push({ resourceType: '*' });
  }
  if (membership.admin) {
    for (const resourceType of projectAdminResourceTypes) {
      if (!resources.some((r) => r.resourceType === resourceType)) {
        resources.push({ resourceType });
      }
    }
  }
  return { resourceType: 'AccessPolicy', resource: resources };
}

function profileAuthor(store, profileRef) {
  const [type, id] = profileRef.split('/');
  const profile = store.get(type, id);
  return profile ? createReference(profile) : { reference: profileRef };
}

/**
 * Resolves the request context for a bearer token.
 * @returns {{ login, membership, projectId, profile, author, accessPolicy, admin, claims }}
 */
export function authenticate(app, authorization, onBehalfOf) {
  if (!authorization?.startsWith('Bearer ')) {
    throw new OperationOutcomeError(unauthorized);
  }
  const token = authorization.slice(7).trim();
  const claims = app.keys.verify(token);
  if (!claims) {
    throw new OperationOutcomeError(unauthorized);
  }
  const login = app.store.get('Login', claims.login_id);
  if (!login || login.revoked || !login.membership) {
    throw new OperationOutcomeError(unauthorized);
  }
  let membership = app.store.get('ProjectMembership', idOf(login.membership));
  if (!membership || membership.active === false) {
    throw new OperationOutcomeError(unauthorized);
  }
  let onBehalfOfRef;
  if (onBehalfOf) {
    if (!membership.admin) {
      throw new OperationOutcomeError(forbidden);
    }
    let target;
    if (onBehalfOf.includes('/')) {
      target = findMembershipByProfile(app.store, onBehalfOf);
    } else {
      target = app.store.get('ProjectMembership', onBehalfOf);
    }
    if (!target || target.project?.reference !== membership.project?.reference) {
      throw new OperationOutcomeError(forbidden);
    }
    onBehalfOfRef = membership.profile;
    membership = target;
  }
  const profileRef = membership.profile.reference;
  return {
    login,
    claims,
    membership,
    projectId: idOf(membership.project),
    profile: profileRef,
    author: profileAuthor(app.store, profileRef),
    accessPolicy: buildAccessPolicy(app.store, membership),
    admin: Boolean(membership.admin),
    actingClient: onBehalfOfRef ? { ...onBehalfOfRef } : undefined,
  };
}

// ------------------------------------------------------------------ token endpoint

function tokenError(status, error, description) {
  return { status, json: { error, error_description: description } };
}

function createLogin(app, fields) {
  const repo = app.systemRepo();
  return repo.writeImpl({ resourceType: 'Login', id: crypto.randomUUID(), ...fields }, undefined, true);
}

function issueTokens(app, login, membership, clientId, subjectId) {
  const now = Math.floor(Date.now() / 1000);
  const profile = membership.profile.reference;
  const base = {
    iss: app.config.baseUrl,
    aud: clientId,
    sub: subjectId,
    iat: now,
    nbf: now,
    exp: now + TOKEN_LIFETIME_S,
  };
  const accessToken = app.keys.sign({
    ...base,
    login_id: login.id,
    username: subjectId,
    scope: login.scope,
    profile,
  });
  const idToken = app.keys.sign({
    ...base,
    login_id: login.id,
    fhirUser: profile,
    nonce: login.nonce,
  });
  return {
    status: 200,
    json: {
      token_type: 'Bearer',
      expires_in: TOKEN_LIFETIME_S,
      scope: login.scope,
      id_token: idToken,
      access_token: accessToken,
      project: membership.project,
      profile: membership.profile,
    },
  };
}

export function handleToken(app, params, authorizationHeader) {
  app.stats.token.requests++;
  let clientId = params.client_id;
  let clientSecret = params.client_secret;
  if (authorizationHeader?.startsWith('Basic ')) {
    const decoded = Buffer.from(authorizationHeader.slice(6), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i > 0) {
      clientId = decodeURIComponent(decoded.slice(0, i));
      clientSecret = decodeURIComponent(decoded.slice(i + 1));
    }
  }
  const grantType = params.grant_type;
  if (!grantType) {
    return tokenError(400, 'invalid_request', 'Missing grant_type');
  }
  if (grantType === 'client_credentials') {
    app.stats.token.client_credentials++;
    if (!clientId) {
      return tokenError(400, 'invalid_request', 'Missing client_id');
    }
    if (!clientSecret) {
      return tokenError(400, 'invalid_request', 'Missing client_secret');
    }
    const client = app.store.get('ClientApplication', clientId);
    if (!client) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    if (!client.secret || !timingSafeEqualStr(client.secret, clientSecret)) {
      return tokenError(400, 'invalid_request', 'Invalid secret');
    }
    const membership = findMembershipByProfile(app.store, 'ClientApplication/' + clientId);
    if (!membership) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    const scope = params.scope || 'openid';
    const login = createLogin(app, {
      user: { reference: 'ClientApplication/' + clientId },
      client: { reference: 'ClientApplication/' + clientId },
      membership: { reference: 'ProjectMembership/' + membership.id },
      project: membership.project,
      authMethod: 'client',
      authTime: new Date().toISOString(),
      scope,
      granted: true,
      remoteAddress: params.__remoteAddress,
    });
    return issueTokens(app, login, membership, clientId, clientId);
  }
  if (grantType === 'authorization_code') {
    app.stats.token.authorization_code++;
    const code = params.code;
    if (!code) {
      return tokenError(400, 'invalid_request', 'Missing code');
    }
    let login;
    for (const l of app.store.all('Login')) {
      if (l.code && timingSafeEqualStr(l.code, code)) {
        login = l;
        break;
      }
    }
    if (!login || login.granted || login.revoked || Date.now() - Date.parse(login.authTime) > CODE_LIFETIME_MS) {
      return tokenError(400, 'invalid_grant', 'Invalid code');
    }
    const loginClientId = idOf(login.client);
    if (clientId && clientId !== loginClientId) {
      return tokenError(400, 'invalid_grant', 'Invalid client');
    }
    const client = app.store.get('ClientApplication', loginClientId);
    if (client?.secret && clientSecret && !timingSafeEqualStr(client.secret, clientSecret)) {
      return tokenError(400, 'invalid_request', 'Invalid secret');
    }
    if (login.codeChallenge) {
      const verifier = params.code_verifier;
      if (!verifier) {
        return tokenError(400, 'invalid_request', 'Missing code verifier');
      }
      const computed =
        login.codeChallengeMethod === 'plain'
          ? verifier
          : crypto.createHash('sha256').update(verifier).digest('base64url');
      if (!timingSafeEqualStr(computed, login.codeChallenge)) {
        return tokenError(400, 'invalid_request', 'Invalid code verifier');
      }
    }
    const membership = app.store.get('ProjectMembership', idOf(login.membership));
    if (!membership) {
      return tokenError(400, 'invalid_grant', 'Invalid membership');
    }
    const repo = app.systemRepo();
    const granted = repo.writeImpl({ ...login, granted: true }, login, false);
    return issueTokens(app, granted, membership, loginClientId, idOf(login.user));
  }
  return tokenError(400, 'unsupported_grant_type', 'Unsupported grant type');
}

// ------------------------------------------------------------------ authorize (development login page)

function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function validateAuthorizeParams(app, p) {
  if (p.response_type !== 'code') {
    return 'Invalid response_type (must be "code")';
  }
  const client = app.store.get('ClientApplication', p.client_id);
  if (!client) {
    return 'Client not found';
  }
  const allowed = [client.redirectUri, ...(client.redirectUris ?? [])].filter(Boolean);
  if (!p.redirect_uri || !allowed.includes(p.redirect_uri)) {
    return 'Incorrect redirect_uri';
  }
  if (!client.pkceOptional) {
    if (!p.code_challenge) {
      return 'Missing code_challenge';
    }
    if (p.code_challenge_method !== 'S256' && p.code_challenge_method !== 'plain') {
      return 'Invalid code_challenge_method';
    }
  }
  return undefined;
}

/** Members that can log in interactively (Practitioner / Patient profiles with a User). */
function interactiveMembers(store) {
  const out = [];
  for (const m of store.all('ProjectMembership')) {
    const type = m.profile?.reference?.split('/')[0];
    if (m.active === false || !['Practitioner', 'Patient', 'RelatedPerson'].includes(type) || !m.user) {
      continue;
    }
    const [t, id] = m.profile.reference.split('/');
    const profile = store.get(t, id);
    out.push({ membership: m, id, type, name: profile ? getDisplayString(profile) : id });
  }
  return out;
}

export function handleAuthorizeGet(app, p) {
  const error = validateAuthorizeParams(app, p);
  if (error) {
    return { status: 400, html: `<!doctype html><title>Error</title><p>${escapeHtml(error)}</p>` };
  }
  const hidden = ['response_type', 'client_id', 'redirect_uri', 'scope', 'state', 'code_challenge', 'code_challenge_method', 'nonce']
    .filter((k) => p[k] !== undefined)
    .map((k) => `<input type="hidden" name="${k}" value="${escapeHtml(p[k])}">`)
    .join('\n');
  const buttons = interactiveMembers(app.store)
    .map(
      (u) =>
        `<button type="submit" name="user" value="${escapeHtml(u.id)}">${escapeHtml(u.name)} <small>(${u.type}/${escapeHtml(u.id)}${u.membership.admin ? ', admin' : ''})</small></button>`
    )
    .join('\n');
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>Medplum devserver sign in</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}button{display:block;width:100%;margin:.4em 0;padding:.6em;text-align:left}</style>
</head><body>
<h1>Development sign in</h1>
<p>Local Medplum stand-in: no passwords. Choose a seeded user to sign in to <b>${escapeHtml(p.client_id)}</b>.</p>
<form method="POST" action="/oauth2/authorize">
${hidden}
${buttons}
</form></body></html>`;
  return { status: 200, html };
}

export function handleAuthorizePost(app, p) {
  const error = validateAuthorizeParams(app, p);
  if (error) {
    return { status: 400, html: `<!doctype html><title>Error</title><p>${escapeHtml(error)}</p>` };
  }
  const userParam = p.user;
  if (!userParam) {
    return { status: 400, html: '<!doctype html><title>Error</title><p>Missing user</p>' };
  }
  const members = interactiveMembers(app.store);
  const chosen = members.find(
    (m) => m.id === userParam || m.membership.profile.reference === userParam || idOf(m.membership.user) === userParam
  );
  if (!chosen) {
    return { status: 400, html: '<!doctype html><title>Error</title><p>Unknown user</p>' };
  }
  const code = crypto.randomBytes(24).toString('hex');
  createLogin(app, {
    user: chosen.membership.user,
    client: { reference: 'ClientApplication/' + p.client_id },
    membership: { reference: 'ProjectMembership/' + chosen.membership.id },
    project: chosen.membership.project,
    profileType: chosen.type,
    authMethod: 'password',
    authTime: new Date().toISOString(),
    scope: p.scope || 'openid',
    nonce: p.nonce,
    code,
    codeChallenge: p.code_challenge,
    codeChallengeMethod: p.code_challenge ? p.code_challenge_method || 'plain' : undefined,
    granted: false,
  });
  const url = new URL(p.redirect_uri);
  url.searchParams.set('code', code);
  if (p.state !== undefined) {
    url.searchParams.set('state', p.state);
  }
  return { status: 302, location: url.toString() };
}

export function openidConfiguration(baseUrl) {
  return {
    issuer: baseUrl,
    authorization_endpoint: baseUrl + 'oauth2/authorize',
    token_endpoint: baseUrl + 'oauth2/token',
    userinfo_endpoint: baseUrl + 'oauth2/userinfo',
    jwks_uri: baseUrl + '.well-known/jwks.json',
    introspection_endpoint: baseUrl + 'oauth2/introspect',
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['ES256'],
    grant_types_supported: ['client_credentials', 'authorization_code'],
    code_challenge_methods_supported: ['S256', 'plain'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    scopes_supported: ['openid', 'profile', 'fhirUser', 'offline_access'],
  };
}

export function userinfo(app, ctx) {
  const [type, id] = ctx.profile.split('/');
  const profile = app.store.get(type, id);
  const out = { sub: ctx.claims.sub, profile: ctx.profile, fhirUser: ctx.profile };
  if (profile?.name?.[0]) {
    out.name = getDisplayString(profile);
    out.given_name = profile.name[0].given?.join(' ');
    out.family_name = profile.name[0].family;
  }
  const user = app.store.get('User', ctx.claims.sub);
  if (user?.email) {
    out.email = user.email;
    out.email_verified = Boolean(user.emailVerified);
  }
  return out;
}

export function introspect(app, token) {
  const claims = token ? app.keys.verify(token) : undefined;
  if (!claims || !app.store.get('Login', claims.login_id) || app.store.get('Login', claims.login_id).revoked) {
    return { active: false };
  }
  return { active: true, ...claims, client_id: claims.aud };
}

export { badRequest };
