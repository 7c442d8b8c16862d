// OAuth2 / OpenID endpoints, /auth/login, ES256 token signing, bearer-token authentication and
// ProjectMembership + AccessPolicy resolution, modelled on the Medplum server.
import {
  badRequest,
  createReference,
  forbidden,
  getDisplayString,
  notFound,
  OperationOutcomeError,
  projectAdminResourceTypes,
  unauthorized,
} from '@medplum/core';
import crypto from 'node:crypto';
import { appSignInPage } from './signin.mjs';

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
    // A token whose signature this key already verified is not verified again (an ES256
    // verification was about a tenth of the stand-in's CPU under load); its expiry is checked
    // on every use, so what is accepted is exactly what a full verification accepts.
    const known = this.verified?.get(token);
    if (known) {
      return unexpired(known);
    }
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
    this.verified ??= new Map();
    if (this.verified.size >= VERIFIED_TOKENS) {
      this.verified.delete(this.verified.keys().next().value);
    }
    this.verified.set(token, payload);
    return unexpired(payload);
  }
}

// Signatures remembered per key (the oldest forgotten first).
const VERIFIED_TOKENS = 1000;

function unexpired(payload) {
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.exp !== 'number' || payload.exp < now || (payload.nbf && payload.nbf > now + 5)) {
    return undefined;
  }
  return payload;
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

/**
 * The entries Medplum adds for project admins (applyProjectAdminAccessPolicy): admin resource
 * types, the own Project with super-admin-only fields read-only (a project admin's write to
 * `features` or `systemSetting` is silently undone), memberships with `project`/`user`
 * read-only, Users without their secrets.
 */
function projectAdminEntries(membership) {
  const projectId = idOf(membership.project);
  const projectRef = membership.project?.reference;
  const special = {
    Project: {
      resourceType: 'Project',
      criteria: `Project?_id=${projectId}`,
      readonlyFields: ['superAdmin', 'features', 'link', 'systemSetting'],
      hiddenFields: ['systemSecret'],
    },
    ProjectMembership: { resourceType: 'ProjectMembership', criteria: `ProjectMembership?project=${projectRef}`, readonlyFields: ['project', 'user'] },
    User: { resourceType: 'User', hiddenFields: ['passwordHash', 'mfaSecret'], readonlyFields: ['email', 'emailVerified', 'mfaEnrolled', 'project'] },
  };
  return projectAdminResourceTypes.map((resourceType) => special[resourceType] ?? { resourceType });
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
    for (const entry of projectAdminEntries(membership)) {
      if (!resources.some((r) => r.resourceType === entry.resourceType)) {
        resources.push(entry);
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

/** A Login by id: stored Login resources, or the unstored client-credentials logins. */
export function findLogin(app, id) {
  return app.store.get('Login', id) ?? app.clientLogins.get(id);
}

/** Forgets client-credentials logins whose tokens have all expired. */
export function pruneClientLogins(app, now = Date.now()) {
  for (const [id, login] of app.clientLogins) {
    if (now - Date.parse(login.authTime) > TOKEN_LIFETIME_S * 1000 + 60_000) {
      app.clientLogins.delete(id);
    }
  }
}

/** Marks a login revoked (POST /oauth2/logout). */
export function revokeLogin(app, login) {
  const unstored = app.clientLogins.get(login.id);
  if (unstored) {
    app.clientLogins.set(login.id, { ...unstored, revoked: true });
    return;
  }
  app.systemRepo().writeImpl({ ...login, revoked: true }, login, false);
}

/**
 * Resolves the request context for a bearer token.
 *
 * With `X-Medplum-On-Behalf-Of` (project admins only; `ProjectMembership/<id>` or the profile
 * reference of a membership in the same project) the request runs with the impersonated
 * membership's AccessPolicy, while `author` stays the real caller's profile and `onBehalfOf`
 * names the impersonated profile, as Medplum's tryAddOnBehalfOf / getRepoForLogin / buildMeta.
 * @returns {{ login, membership, projectId, profile, author, onBehalfOf, accessPolicy, admin, claims }}
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
  const login = findLogin(app, claims.login_id);
  if (!login || login.revoked || !login.membership) {
    throw new OperationOutcomeError(unauthorized);
  }
  const membership = app.store.get('ProjectMembership', idOf(login.membership));
  if (!membership || membership.active === false) {
    throw new OperationOutcomeError(unauthorized);
  }
  let effective = membership;
  let onBehalfOfRef;
  if (typeof onBehalfOf === 'string' && onBehalfOf) {
    if (!membership.admin) {
      throw new OperationOutcomeError(forbidden);
    }
    let target;
    if (onBehalfOf.startsWith('ProjectMembership/')) {
      target = app.store.get('ProjectMembership', onBehalfOf.slice('ProjectMembership/'.length));
      if (!target || target.project?.reference !== membership.project?.reference) {
        throw new OperationOutcomeError(notFound);
      }
    } else {
      target = [...app.store.all('ProjectMembership')].find(
        (m) => m.profile?.reference === onBehalfOf && m.project?.reference === membership.project?.reference
      );
      if (!target) {
        throw new OperationOutcomeError(forbidden);
      }
    }
    effective = target;
    onBehalfOfRef = profileAuthor(app.store, target.profile.reference);
  }
  const profileRef = membership.profile.reference;
  return {
    login,
    claims,
    membership,
    effectiveMembership: effective,
    projectId: idOf(membership.project),
    profile: profileRef,
    author: profileAuthor(app.store, profileRef),
    onBehalfOf: onBehalfOfRef,
    accessPolicy: buildAccessPolicy(app.store, effective),
    admin: Boolean(effective.admin),
  };
}

// ------------------------------------------------------------------ passwords

/** Password hash stored in User.passwordHash (scrypt here; the real server uses bcrypt). */
export function hashPassword(password, salt = crypto.randomBytes(16).toString('base64url')) {
  const hash = crypto.scryptSync(String(password), salt, 32).toString('base64url');
  return `scrypt$${salt}$${hash}`;
}

function verifyPassword(password, stored) {
  const [kind, salt, hash] = String(stored ?? '').split('$');
  if (kind !== 'scrypt' || !salt || !hash) {
    return false;
  }
  return timingSafeEqualStr(hashPassword(password, salt).split('$')[2], hash);
}

// ------------------------------------------------------------------ token endpoint

function tokenError(status, error, description) {
  return { status, json: { error, error_description: description } };
}

function createLogin(app, fields) {
  const repo = app.systemRepo();
  return repo.writeImpl({ resourceType: 'Login', id: crypto.randomUUID(), ...fields }, undefined, true);
}

function generateSecret(bytes) {
  return crypto.randomBytes(bytes).toString('hex');
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
    client_id: clientId,
    login_id: login.id,
    username: subjectId,
    scope: login.scope,
    profile,
  });
  const idToken = app.keys.sign({
    ...base,
    client_id: clientId,
    login_id: login.id,
    fhirUser: profile,
    nonce: login.nonce,
    auth_time: Math.floor(Date.parse(login.authTime) / 1000),
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

function verifyCode(challenge, method, verifier) {
  if (method === 'plain') {
    return timingSafeEqualStr(challenge, verifier);
  }
  if (method === 'S256') {
    return timingSafeEqualStr(challenge, crypto.createHash('sha256').update(verifier).digest('base64url'));
  }
  return false;
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
    if (!client || (client.status && client.status !== 'active')) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    if (!client.secret || !timingSafeEqualStr(client.secret, clientSecret)) {
      return tokenError(400, 'invalid_request', 'Invalid secret');
    }
    const membership = findMembershipByProfile(app.store, 'ClientApplication/' + clientId);
    if (!membership) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    // Medplum 5.0 stores no Login resource for client credentials: the login lives only in
    // server memory (and in the snapshot, so tokens survive a restart with a snapshot).
    const login = {
      resourceType: 'Login',
      id: crypto.randomUUID(),
      user: { reference: 'ClientApplication/' + clientId },
      client: { reference: 'ClientApplication/' + clientId },
      membership: { reference: 'ProjectMembership/' + membership.id },
      authMethod: 'client',
      authTime: new Date().toISOString(),
      scope: params.scope || 'openid',
      granted: true,
      remoteAddress: params.__remoteAddress,
    };
    pruneClientLogins(app);
    app.clientLogins.set(login.id, login);
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
    if (!login || Date.now() - Date.parse(login.authTime) > CODE_LIFETIME_MS) {
      return tokenError(400, 'invalid_request', 'Invalid code');
    }
    if (clientId && login.client?.reference !== 'ClientApplication/' + clientId) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    if (!login.membership) {
      return tokenError(400, 'invalid_request', 'Invalid profile');
    }
    if (login.granted) {
      revokeLogin(app, login);
      return tokenError(400, 'invalid_grant', 'Token already granted');
    }
    if (login.revoked) {
      return tokenError(400, 'invalid_grant', 'Token revoked');
    }
    const loginClientId = idOf(login.client);
    const client = loginClientId ? app.store.get('ClientApplication', loginClientId) : undefined;
    if (loginClientId && !client) {
      return tokenError(400, 'invalid_request', 'Invalid client');
    }
    if (clientSecret) {
      if (!client?.secret || !timingSafeEqualStr(client.secret, clientSecret)) {
        return tokenError(400, 'invalid_request', 'Invalid secret');
      }
    } else if (!client?.pkceOptional) {
      // PKCE is enforced here, at the exchange: a login without a challenge cannot be redeemed.
      if (!login.codeChallenge) {
        return tokenError(400, 'invalid_request', 'Missing verification context');
      }
      const verifier = params.code_verifier;
      if (!verifier) {
        return tokenError(400, 'invalid_request', 'Missing code verifier');
      }
      if (!verifyCode(login.codeChallenge, login.codeChallengeMethod, verifier)) {
        return tokenError(400, 'invalid_request', 'Invalid code verifier');
      }
    }
    const membership = app.store.get('ProjectMembership', idOf(login.membership));
    if (!membership) {
      return tokenError(400, 'invalid_grant', 'Invalid membership');
    }
    const granted = app.systemRepo().writeImpl({ ...login, granted: true }, login, false);
    return issueTokens(app, granted, membership, loginClientId, idOf(login.user));
  }
  return tokenError(400, 'invalid_request', 'Unsupported grant_type');
}

// ------------------------------------------------------------------ authorize (redirect to the app)

function allowedRedirects(client) {
  return [client.redirectUri, ...(client.redirectUris ?? [])].filter(Boolean);
}

function errorRedirect(redirectUri, error, state) {
  const url = new URL(redirectUri);
  url.searchParams.append('error', error);
  url.searchParams.append('state', state ?? 'undefined');
  return { status: 302, location: url.toString() };
}

function parseCookies(header) {
  const out = {};
  for (const part of String(header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) {
      out[part.slice(0, i).trim()] = decodeURIComponent(part.slice(i + 1).trim());
    }
  }
  return out;
}

/**
 * GET|POST /oauth2/authorize like Medplum's authorize.ts: validates the client and redirect URI
 * (400 text otherwise), the other parameters (error redirect to the client otherwise), reuses a
 * signed-in Login from the `medplum-<client>` cookie (unless prompt=login), and otherwise
 * redirects to the Medplum app's sign-in page `<appBaseUrl>oauth` with every parameter copied.
 * @returns {{ status: number, location?: string, text?: string }}
 */
export function handleAuthorize(app, params, cookieHeader) {
  const client = params.client_id ? app.store.get('ClientApplication', String(params.client_id)) : undefined;
  if (!client) {
    return { status: 400, text: 'Client not found' };
  }
  if (!allowedRedirects(client).includes(params.redirect_uri)) {
    return { status: 400, text: 'Incorrect redirect_uri' };
  }
  const state = params.state;
  if (!params.scope) {
    return errorRedirect(params.redirect_uri, 'invalid_request', state);
  }
  if (params.response_type !== 'code') {
    return errorRedirect(params.redirect_uri, 'unsupported_response_type', state);
  }
  if (params.request) {
    return errorRedirect(params.redirect_uri, 'request_not_supported', state);
  }
  if (params.aud) {
    let ok = false;
    try {
      const aud = new URL(params.aud);
      const base = new URL(app.config.baseUrl);
      ok = aud.protocol === base.protocol && aud.host === base.host;
    } catch {
      ok = false;
    }
    if (!ok) {
      return errorRedirect(params.redirect_uri, 'invalid_request', state);
    }
  }
  if (params.code_challenge && !params.code_challenge_method) {
    return errorRedirect(params.redirect_uri, 'invalid_request', state);
  }
  const cookie = parseCookies(cookieHeader)['medplum-' + client.id];
  let existing;
  if (cookie) {
    existing = [...app.store.all('Login')].find((l) => l.cookie && timingSafeEqualStr(l.cookie, cookie));
    if (existing && (!existing.granted || existing.revoked)) {
      existing = undefined;
    }
    const maxAge = params.max_age ? Number.parseInt(params.max_age, 10) : 3600;
    if (existing && (Date.now() - Date.parse(existing.authTime)) / 1000 > maxAge) {
      existing = undefined;
    }
  }
  if (params.prompt === 'none' && !existing) {
    return errorRedirect(params.redirect_uri, 'login_required', state);
  }
  if (params.prompt !== 'login' && existing) {
    const updated = app.systemRepo().writeImpl({ ...existing, nonce: params.nonce, granted: false }, existing, false);
    const url = new URL(params.redirect_uri);
    url.searchParams.append('code', updated.code);
    url.searchParams.append('state', state ?? 'undefined');
    return { status: 302, location: url.toString() };
  }
  const url = new URL('oauth', appBaseUrl(app.config));
  for (const [name, value] of Object.entries(params)) {
    url.searchParams.set(name, String(value));
  }
  return { status: 302, location: url.toString() };
}

export function appBaseUrl(config) {
  return config.appBaseUrl || config.baseUrl + '_devserver/app/';
}

// ------------------------------------------------------------------ /auth/login and /auth/profile

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

function invalidRequest(errors) {
  return {
    resourceType: 'OperationOutcome',
    id: 'invalid-request',
    issue: errors.map(([text, param]) => ({ severity: 'error', code: 'invalid', details: { text }, expression: [param] })),
  };
}

/** Memberships a Login can use (user, optional project and profile type). */
function membershipsForLogin(app, login) {
  const out = [];
  for (const m of app.store.all('ProjectMembership')) {
    if (m.user?.reference !== login.user?.reference) {
      continue;
    }
    if (login.project?.reference && m.project?.reference !== login.project.reference) {
      continue;
    }
    if (login.profileType && !m.profile?.reference?.startsWith(login.profileType)) {
      continue;
    }
    out.push(m);
  }
  return out;
}

function setLoginMembership(app, login, membershipId) {
  if (login.revoked) {
    throw new OperationOutcomeError(badRequest('Login revoked'));
  }
  if (login.granted) {
    throw new OperationOutcomeError(badRequest('Login granted'));
  }
  if (login.membership) {
    throw new OperationOutcomeError(badRequest('Login profile already set'));
  }
  const membership = app.store.get('ProjectMembership', membershipId);
  if (!membership) {
    throw new OperationOutcomeError(badRequest('Profile not found'));
  }
  if (membership.user?.reference !== login.user?.reference) {
    throw new OperationOutcomeError(badRequest('Invalid profile'));
  }
  if (membership.active === false) {
    throw new OperationOutcomeError(badRequest('Profile not active'));
  }
  return app.systemRepo().writeImpl({ ...login, membership: { reference: 'ProjectMembership/' + membership.id } }, login, false);
}

/** What Medplum's sendLoginResult answers, plus the login cookie to set (OAuth2 clients). */
function loginResult(login) {
  const cookie = login.client ? { name: 'medplum-' + idOf(login.client), value: login.cookie } : undefined;
  if (login.membership) {
    return { status: 200, json: { login: login.id, code: login.code }, cookie };
  }
  return { status: 200, json: { login: login.id }, cookie };
}

function userByEmail(app, email, projectId) {
  const wanted = String(email).toLowerCase();
  const users = [...app.store.all('User')].filter((u) => String(u.email ?? '').toLowerCase() === wanted);
  if (projectId) {
    const inProject = users.find((u) => u.project?.reference === 'Project/' + projectId);
    if (inProject) {
      return inProject;
    }
  }
  return users.find((u) => !u.project);
}

/**
 * POST /auth/login (what the Medplum app calls from its sign-in page): email + password, with
 * `clientId` (the OAuth client, which fixes the project) and the PKCE `codeChallenge`.
 * Answers `{login, code}` when the user has exactly one matching membership, `{login,
 * memberships}` when several (then POST /auth/profile), 400 OperationOutcome otherwise.
 */
export function handleLogin(app, body, remoteAddress, userAgent) {
  const errors = [];
  if (typeof body.email !== 'string' || !EMAIL.test(body.email)) {
    errors.push(['Valid email address is required', 'email']);
  }
  if (typeof body.password !== 'string' || body.password.length < 5) {
    errors.push(['Invalid password, must be at least 5 characters', 'password']);
  }
  if (errors.length) {
    return { status: 400, json: invalidRequest(errors) };
  }
  let projectId = body.projectId;
  let client;
  if (body.clientId) {
    client = app.store.get('ClientApplication', String(body.clientId));
    if (!client) {
      throw new OperationOutcomeError(notFound);
    }
    const clientProject = client.meta?.project;
    if (projectId !== undefined && projectId !== clientProject) {
      throw new OperationOutcomeError(badRequest('Invalid projectId'));
    }
    projectId = clientProject;
  }
  const scope = body.scope || 'openid';
  if (!client?.pkceOptional) {
    if (!body.codeChallenge && body.codeChallengeMethod) {
      throw new OperationOutcomeError(badRequest('Invalid code challenge', 'code_challenge'));
    }
    if (body.codeChallenge && !body.codeChallengeMethod) {
      throw new OperationOutcomeError(badRequest('Invalid code challenge method', 'code_challenge_method'));
    }
    if (body.codeChallengeMethod && body.codeChallengeMethod !== 'plain' && body.codeChallengeMethod !== 'S256') {
      throw new OperationOutcomeError(badRequest('Invalid code challenge method', 'code_challenge_method'));
    }
  }
  const user = userByEmail(app, body.email, projectId);
  if (!user) {
    throw new OperationOutcomeError(badRequest('User not found'));
  }
  if (!user.passwordHash) {
    throw new OperationOutcomeError(badRequest('Invalid authentication method'));
  }
  if (!verifyPassword(body.password, user.passwordHash)) {
    throw new OperationOutcomeError(badRequest('Email or password is invalid'));
  }
  let login = createLogin(app, {
    client: client ? { reference: 'ClientApplication/' + client.id } : undefined,
    project: projectId ? { reference: 'Project/' + projectId } : undefined,
    profileType: body.resourceType,
    user: { reference: 'User/' + user.id },
    authMethod: 'password',
    authTime: new Date().toISOString(),
    code: generateSecret(16),
    cookie: generateSecret(16),
    scope,
    nonce: body.nonce || crypto.randomUUID(),
    codeChallenge: body.codeChallenge,
    codeChallengeMethod: body.codeChallengeMethod,
    remoteAddress,
    userAgent,
  });
  const memberships = membershipsForLogin(app, login);
  if (memberships.length === 0) {
    throw new OperationOutcomeError(badRequest('User not found'));
  }
  if (memberships.length === 1) {
    login = setLoginMembership(app, login, memberships[0].id);
    return loginResult(login);
  }
  const result = loginResult(login);
  result.json.memberships = memberships.map((m) => ({ id: m.id, project: m.project, profile: m.profile }));
  return result;
}

/** POST /auth/profile: chooses the membership of a login that has several. */
export function handleProfile(app, body) {
  const errors = [];
  if (!body.login) {
    errors.push(['Missing login', 'login']);
  }
  if (!body.profile) {
    errors.push(['Missing profile', 'profile']);
  }
  if (errors.length) {
    return { status: 400, json: invalidRequest(errors) };
  }
  const login = app.store.get('Login', String(body.login));
  if (!login) {
    throw new OperationOutcomeError(notFound);
  }
  return loginResult(setLoginMembership(app, login, String(body.profile)));
}

// ------------------------------------------------------------------ stand-in sign-in page (plays the Medplum app)

// The page itself is signin.mjs; re-exported here where app.mjs has always found it.
export { appSignInPage };

export function appSignInPost(app, params, remoteAddress, userAgent) {
  const check = handleAuthorize(app, { ...params, prompt: 'login' });
  if (check.status === 400) {
    return { status: 400, text: check.text };
  }
  if (!check.location.startsWith(appBaseUrl(app.config))) {
    return check;
  }
  let result;
  try {
    result = handleLogin(
      app,
      {
        email: params.email,
        password: params.password,
        clientId: params.client_id,
        scope: params.scope,
        nonce: params.nonce,
        codeChallenge: params.code_challenge,
        codeChallengeMethod: params.code_challenge_method,
      },
      remoteAddress,
      userAgent
    );
  } catch (err) {
    const text = err?.outcome?.issue?.[0]?.details?.text ?? String(err?.message ?? err);
    return { status: 200, html: appSignInPage(app, params, text) };
  }
  if (result.status !== 200 || !result.json.code) {
    const text = result.json?.issue?.map((i) => i.details?.text).join('; ') || 'Choose a profile through POST /auth/profile';
    return { status: 200, html: appSignInPage(app, params, text) };
  }
  const url = new URL(params.redirect_uri);
  url.searchParams.append('code', result.json.code);
  url.searchParams.append('state', params.state ?? 'undefined');
  return { status: 302, location: url.toString(), cookie: result.cookie };
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
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512'],
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
  const login = claims ? findLogin(app, claims.login_id) : undefined;
  if (!login || login.revoked) {
    return { active: false };
  }
  return { active: true, ...claims, client_id: claims.aud };
}

