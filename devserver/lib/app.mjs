// HTTP layer: Medplum-compatible routes on node:http.
import {
  allOk,
  badRequest,
  formatSearchQuery,
  getStatus,
  isOk,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  tooManyRequests,
} from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import {
  appBaseUrl,
  appSignInPage,
  appSignInPost,
  authenticate,
  handleAuthorize,
  handleLogin,
  handleProfile,
  handleToken,
  introspect,
  Keys,
  openidConfiguration,
  revokeLogin,
  userinfo,
} from './auth.mjs';
import { handleTokenRequest } from './clientassertion.mjs';
import { BulkExports } from './bulkexport.mjs';
import { loadDefinitions } from './definitions.mjs';
import { authMe } from './me.mjs';
import { FhirQuota, RateLimits, rateLimitHeader, throttledOutcome } from './ratelimit.mjs';
import { ConflictSimulator, RequestRepository } from './repo.mjs';
import { Store } from './store.mjs';
import { SubscriptionEngine } from './subscriptions.mjs';

const MAX_JSON_SIZE = 1024 * 1024; // Medplum maxJsonSize default '1mb'
const VERSIONS = { '5.0': '5.0.10-devserver', '5.2': '5.2.13-devserver' };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

export function readConfig(env = process.env) {
  const port = Number.parseInt(env.MEDPLUM_PORT ?? '8103', 10);
  let baseUrl = env.MEDPLUM_BASE_URL || `http://127.0.0.1:${port}/`;
  if (!baseUrl.endsWith('/')) {
    baseUrl += '/';
  }
  const int = (name, def) => {
    const v = env[name];
    return v === undefined || v === '' ? def : Number.parseInt(v, 10);
  };
  const bool = (name, def) => {
    const v = String(env[name] ?? '').trim().toLowerCase();
    if (!v) {
      return def;
    }
    return !['0', 'false', 'off', 'no'].includes(v);
  };
  const compat = String(env.MEDPLUM_COMPAT || '5.2').trim();
  if (!['5.0', '5.2'].includes(compat)) {
    throw new Error(`MEDPLUM_COMPAT must be 5.0 or 5.2 (got ${compat})`);
  }
  const projectQuota = int('MEDPLUM_PROJECT_FHIR_QUOTA', undefined);
  return {
    port,
    host: env.MEDPLUM_HOST || '127.0.0.1',
    baseUrl,
    appBaseUrl: env.MEDPLUM_APP_BASE_URL || undefined,
    settings: {
      compat,
      rateLimitHeaders: bool('MEDPLUM_RATELIMIT_HEADERS', true),
      rateLimit: int('MEDPLUM_RATE_LIMIT', 60000),
      authRateLimit: int('MEDPLUM_AUTH_RATE_LIMIT', 160),
      fhirQuota: int('MEDPLUM_FHIR_QUOTA', 50000),
      fhirQuotaWindowMs: int('MEDPLUM_FHIR_QUOTA_WINDOW_MS', 60000),
      projectFhirQuota: projectQuota ?? null,
      validateProfiles: bool('MEDPLUM_VALIDATE_PROFILES', true),
      transactionConflicts: {
        enabled: bool('MEDPLUM_TRANSACTION_CONFLICTS', false),
        windowMs: int('MEDPLUM_TRANSACTION_CONFLICT_WINDOW_MS', 100),
        every: Math.max(1, int('MEDPLUM_TRANSACTION_CONFLICT_EVERY', 1)),
        attempts: Math.max(1, int('MEDPLUM_TRANSACTION_ATTEMPTS', 2)),
      },
    },
    seedPath: env.DEVSERVER_SEED || new URL('../seed.json', import.meta.url).pathname,
    snapshotPath: env.DEVSERVER_SNAPSHOT || undefined,
    subscriptionConcurrency: Math.max(1, int('SUBSCRIPTION_CONCURRENCY', 20)),
    subscriptionRetryBaseMs: int('SUBSCRIPTION_RETRY_BASE_MS', 1000),
    subscriptionTimeoutMs: int('SUBSCRIPTION_TIMEOUT_MS', 120000),
    autoDisableAfter: int('SUBSCRIPTION_AUTO_DISABLE_AFTER', 10),
    autoDisableWindowS: int('SUBSCRIPTION_AUTO_DISABLE_WINDOW_S', 86400),
    verbose: env.DEVSERVER_VERBOSE === '1',
  };
}

function newStats() {
  return {
    started: new Date().toISOString(),
    fhir: { total: 0, by_route: {}, by_status: {} },
    token: { requests: 0, client_credentials: 0, authorization_code: 0 },
    auth: { login: 0, profile: 0 },
    fhir_quota: { total_points: 0, by_membership: {}, throttled: 0 },
    rate_limit: { requests_throttled: 0, auth_throttled: 0 },
    transactions: { serializable: 0, retried: 0, conflicts: 0 },
    notifications: {
      matched: 0,
      attempts: 0,
      delivered: 0,
      failed_attempts: 0,
      retries_scheduled: 0,
      exhausted: 0,
      stale_retries_dropped: 0,
      dropped_inactive: 0,
      dropped_deleted: 0,
      auto_disabled: 0,
      audit_events: 0,
      first_attempts: 0,
      first_attempt_latency_ms_total: 0,
      first_attempt_latency_ms_max: 0,
    },
    faults_injected: 0,
  };
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', ...headers });
  res.end(text);
}

function sendText(res, status, text, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', ...headers });
  res.end(text);
}

function sendFhir(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(text);
}

function sendOutcome(res, outcome, headers) {
  sendFhir(res, getStatus(outcome), outcome, headers);
}

/** Reads the request body; rejects with 'too-large' past the limit (the rest is drained). */
function readBody(req, limit = MAX_JSON_SIZE) {
  return new Promise((resolve, reject) => {
    const declared = Number.parseInt(req.headers['content-length'] ?? '', 10);
    if (declared > limit) {
      req.resume();
      reject(new Error('too-large'));
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on('data', (c) => {
      if (failed) {
        return;
      }
      size += c.length;
      if (size > limit) {
        failed = true;
        reject(new Error('too-large'));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => !failed && resolve(Buffer.concat(chunks)));
    req.on('error', (e) => !failed && reject(e));
  });
}

function parseForm(buf) {
  return Object.fromEntries(new URLSearchParams(buf.toString('utf8')));
}

export function createApp(config) {
  loadDefinitions();
  const store = new Store();
  const stats = newStats();
  const router = new FhirRouter();
  const settings = config.settings;
  const app = { config, settings, store, stats, router, keys: undefined, faults: [], clientLogins: new Map() };
  const limits = new RateLimits(settings);
  const conflicts = new ConflictSimulator(settings.transactionConflicts);
  app.limits = limits;
  app.conflicts = conflicts;
  const engine = new SubscriptionEngine(app);
  app.engine = engine;
  const emit = (event) => engine.onCommit(event);
  app.emit = emit;
  app.systemRepo = (projectId) =>
    new RequestRepository(store, { system: true, projectId, author: { reference: 'system' }, extended: true, baseUrl: config.baseUrl }, emit);

  // Medplum's $resend operation (project admins only).
  router.add(
    'POST',
    ':resourceType/:id/$resend',
    async (req, repo) => {
      const body = req.body && typeof req.body === 'object' && !Array.isArray(req.body) ? req.body : {};
      await repo.resendSubscriptions(req.params.resourceType, req.params.id, body);
      return [allOk];
    },
    'operation'
  );

  // Bulk Data $export, its status polling and its presigned NDJSON files (lib/bulkexport.mjs).
  const bulk = new BulkExports(app);
  bulk.register(router);

  // FHIR $validate on a resource type: the body is the resource, or Parameters with `resource`.
  router.add(
    'POST',
    ':resourceType/$validate',
    async (req, repo) => {
      const { resourceType } = req.params;
      let resource = req.body;
      if (resource?.resourceType === 'Parameters' && resourceType !== 'Parameters') {
        resource = resource.parameter?.find((p) => p.name === 'resource')?.resource;
      }
      if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
        return [badRequest('Missing resource')];
      }
      if (resource.resourceType !== resourceType) {
        return [badRequest('Incorrect resource type')];
      }
      repo.validateOnly(resource);
      return [allOk];
    },
    'operation'
  );

  // ---------------------------------------------------------------- state
  function loadSeed() {
    const bundle = JSON.parse(fs.readFileSync(config.seedPath, 'utf8'));
    const repo = app.systemRepo();
    for (const entry of bundle.entry ?? []) {
      const r = entry.resource;
      if (!r) {
        continue;
      }
      repo.writeImpl({ ...r, meta: { ...(r.meta ?? {}) } }, undefined, true);
    }
  }

  function loadState() {
    if (config.snapshotPath && fs.existsSync(config.snapshotPath)) {
      const data = JSON.parse(fs.readFileSync(config.snapshotPath, 'utf8'));
      store.load(data.store);
      app.keys = new Keys(data.keys);
      for (const login of data.clientLogins ?? []) {
        app.clientLogins.set(login.id, login);
      }
      return 'snapshot';
    }
    app.keys = new Keys();
    loadSeed();
    return 'seed';
  }

  function saveSnapshot() {
    if (!config.snapshotPath) {
      return false;
    }
    const tmp = config.snapshotPath + '.tmp';
    fs.writeFileSync(
      tmp,
      JSON.stringify({
        version: 1,
        savedAt: new Date().toISOString(),
        keys: app.keys.toJSON(),
        store: store.toJSON(),
        clientLogins: [...app.clientLogins.values()],
      })
    );
    fs.renameSync(tmp, config.snapshotPath);
    return true;
  }

  // ---------------------------------------------------------------- faults
  function takeFault(kind, method, path) {
    for (let i = 0; i < app.faults.length; i++) {
      const f = app.faults[i];
      if ((f.scope ?? 'fhir') !== kind && f.scope !== 'all') {
        continue;
      }
      if (f.method && f.method.toUpperCase() !== method) {
        continue;
      }
      if (f.pathPattern && !new RegExp(f.pathPattern).test(path)) {
        continue;
      }
      if (f.skip > 0) {
        f.skip--;
        continue;
      }
      f.count--;
      if (f.count <= 0) {
        app.faults.splice(i, 1);
      }
      stats.faults_injected++;
      return f;
    }
    return undefined;
  }

  async function applyFault(fault, res) {
    if (fault.delayMs) {
      await new Promise((r) => setTimeout(r, fault.delayMs));
    }
    const status = fault.status ?? 503;
    if (status === 0) {
      res.socket?.destroy();
      return;
    }
    if (status === 429) {
      const t = fault.resetSeconds ?? 60;
      sendFhir(res, 429, tooManyRequests, { RateLimit: `"requests";r=0;t=${t}` });
      return;
    }
    sendFhir(res, status, {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: status >= 500 ? 'exception' : 'processing', details: { text: fault.message ?? `Injected fault (status ${status})` } }],
    });
  }

  // ---------------------------------------------------------------- FHIR
  function routeKind(method, fhirPath) {
    try {
      const found = router.find(method, fhirPath);
      return found?.data?.interaction ?? 'unknown';
    } catch {
      return 'unknown';
    }
  }

  function searchUrl(searchRequest, offset, count) {
    const sr = { ...searchRequest, offset, count };
    const path = searchRequest.types?.length ? '' : searchRequest.resourceType;
    return `${config.baseUrl}fhir/R4/${path}${formatSearchQuery(sr)}`;
  }

  function projectFeatures(projectId) {
    return store.get('Project', projectId)?.features ?? [];
  }

  function capabilityStatement() {
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: stats.started,
      kind: 'instance',
      fhirVersion: '4.0.1',
      format: ['json'],
      software: { name: 'Medplum devserver (stand-in)', version: VERSIONS[settings.compat] },
      implementation: { description: 'Local Medplum stand-in', url: config.baseUrl + 'fhir/R4' },
      rest: [{ mode: 'server', security: { cors: true, service: [{ coding: [{ code: 'SMART-on-FHIR' }] }] } }],
    };
  }

  /** Effective FHIR quota limits for a project (Project.systemSetting overrides the defaults). */
  function quotaLimits(projectId) {
    const project = store.get('Project', projectId);
    const setting = (name) => project?.systemSetting?.find((x) => x.name === name);
    const configured = settings.fhirQuota > 0;
    const userLimit = setting('userFhirQuota')?.valueInteger ?? settings.fhirQuota;
    const projectLimit = setting('totalFhirQuota')?.valueInteger ?? settings.projectFhirQuota ?? userLimit * 10;
    return {
      userLimit: configured ? userLimit : Number.POSITIVE_INFINITY,
      projectLimit: configured ? projectLimit : Number.POSITIVE_INFINITY,
      enforce: configured && setting('enableFhirQuota')?.valueBoolean !== false,
      report: configured,
    };
  }

  function newQuota(ctx) {
    const membershipId = ctx.membership.id;
    const q = stats.fhir_quota;
    return new FhirQuota(limits, {
      membershipId,
      projectId: ctx.projectId,
      ...quotaLimits(ctx.projectId),
      onCharge: (points) => {
        q.total_points += points;
        q.by_membership[membershipId] = (q.by_membership[membershipId] ?? 0) + points;
      },
    });
  }

  /** `RateLimit` header lines: one per policy, like Medplum's res.append('RateLimit', ...). */
  function rateLimitHeaders(res, status, quota) {
    const lines = [...(res.rateLimitLines ?? [])];
    const fhir = quota?.header();
    if (fhir) {
      lines.push(fhir);
    }
    if (!lines.length || (!settings.rateLimitHeaders && status !== 429)) {
      return {};
    }
    return { RateLimit: lines };
  }

  async function handleFhir(req, res, url) {
    const method = req.method;
    let fhirPath = url.pathname.slice('/fhir/R4'.length).replace(/^\/+/, '');
    const kind = routeKind(method, fhirPath);
    stats.fhir.total++;
    const routeKey = `${method} ${kind}`;
    stats.fhir.by_route[routeKey] = (stats.fhir.by_route[routeKey] ?? 0) + 1;
    const countStatus = (s) => (stats.fhir.by_status[s] = (stats.fhir.by_status[s] ?? 0) + 1);

    const fault = takeFault('fhir', method, url.pathname);
    if (fault) {
      req.resume();
      countStatus(fault.status ?? 503);
      await applyFault(fault, res);
      return;
    }
    if (fhirPath === 'metadata' && method === 'GET') {
      countStatus(200);
      sendFhir(res, 200, capabilityStatement(), rateLimitHeaders(res, 200));
      return;
    }

    let ctx;
    try {
      ctx = authenticate(app, req.headers.authorization, req.headers['x-medplum-on-behalf-of']);
    } catch (err) {
      req.resume();
      const outcome = normalizeOperationOutcome(err);
      const status = getStatus(outcome);
      countStatus(status);
      sendOutcome(res, outcome, rateLimitHeaders(res, status));
      return;
    }
    const quota = newQuota(ctx);

    let body;
    if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
      let buf;
      try {
        buf = await readBody(req);
      } catch (err) {
        const outcome = err.message === 'too-large' ? badRequest('File too large') : badRequest(String(err.message));
        countStatus(400);
        sendOutcome(res, outcome, { Connection: 'close', ...rateLimitHeaders(res, 400) });
        return;
      }
      const ct = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
      if (buf.length) {
        if (ct === 'application/x-www-form-urlencoded') {
          body = parseForm(buf);
        } else {
          try {
            body = JSON.parse(buf.toString('utf8'));
          } catch {
            countStatus(400);
            sendOutcome(res, badRequest('Content could not be parsed'), rateLimitHeaders(res, 400));
            return;
          }
        }
      }
    }

    const xTrace = req.headers['x-trace-id'];
    const traceparent = req.headers['traceparent'];
    const traceId =
      typeof xTrace === 'string' && UUID.test(xTrace)
        ? xTrace
        : typeof traceparent === 'string' && TRACEPARENT.test(traceparent)
          ? traceparent
          : crypto.randomUUID();

    const repo = new RequestRepository(
      store,
      {
        projectId: ctx.projectId,
        author: ctx.author,
        onBehalfOf: ctx.onBehalfOf,
        accessPolicy: ctx.accessPolicy,
        admin: ctx.admin,
        extended: req.headers['x-medplum'] === 'extended',
        traceId,
        baseUrl: config.baseUrl,
        searchUrl,
        quota,
        validateProfiles: settings.validateProfiles,
        conflicts,
        transactionBundle: method === 'POST' && fhirPath === '' && body?.resourceType === 'Bundle' && body.type === 'transaction',
        txStats: stats.transactions,
      },
      emit
    );
    const fhirReq = {
      method,
      url: fhirPath + url.search,
      body,
      params: {},
      query: {},
      headers: req.headers,
      config: { transactions: projectFeatures(ctx.projectId).includes('transaction-bundles') },
    };
    let result;
    try {
      result = await router.handleRequest(fhirReq, repo);
    } catch (err) {
      result = [normalizeOperationOutcome(err)];
    }
    const [outcome, resource] = result;
    const status = getStatus(outcome);
    countStatus(status);
    if (status === 429) {
      stats.fhir_quota.throttled++;
    }
    const headers = { 'x-trace-id': traceId, ...rateLimitHeaders(res, status, quota) };
    if (outcome.id === 'accepted' && outcome.issue?.[0]?.diagnostics) {
      headers['Content-Location'] = outcome.issue[0].diagnostics; // as Medplum's sendOutcome
    }
    if (!isOk(outcome) || !resource) {
      sendOutcome(res, outcome, headers);
      return;
    }
    if (resource.meta?.versionId) {
      headers.ETag = `W/"${resource.meta.versionId}"`;
    }
    if (resource.meta?.lastUpdated) {
      headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201 && resource.id) {
      headers.Location = `${config.baseUrl}fhir/R4/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
    }
    sendFhir(res, status, resource, headers);
  }

  /** Medplum's auth routes have their own per-IP limit (160/min by default). */
  function isAuthRoute(path) {
    return path !== '/auth/me' && (path.startsWith('/auth/') || path.startsWith('/oauth2/'));
  }

  /** The per-IP "requests" policy; answers 429 itself when the window is spent. */
  function checkRequestLimit(req, res, path) {
    const auth = isAuthRoute(path);
    const consumed = limits.consumeRequest(req.socket.remoteAddress, auth);
    if (!consumed) {
      return true;
    }
    const { result, limit } = consumed;
    res.rateLimitLines = [rateLimitHeader('requests', result)];
    if (!result.rejected) {
      return true;
    }
    req.resume();
    stats.rate_limit[auth ? 'auth_throttled' : 'requests_throttled']++;
    sendJson(res, 429, throttledOutcome(result, limit), { RateLimit: res.rateLimitLines });
    return false;
  }

  async function readParams(req) {
    const buf = await readBody(req, 64 * 1024);
    const ct = (req.headers['content-type'] ?? '').toLowerCase();
    if (ct.includes('json')) {
      const parsed = JSON.parse(buf.toString('utf8') || '{}');
      return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : {};
    }
    return parseForm(buf);
  }

  function loginCookie(cookie) {
    return cookie ? { 'Set-Cookie': `${cookie.name}=${cookie.value}; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None` } : {};
  }

  // ---------------------------------------------------------------- dispatcher
  async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    const path = url.pathname;
    const method = req.method;

    if (!path.startsWith('/_devserver/') && !checkRequestLimit(req, res, path)) {
      return;
    }
    const rl = () => rateLimitHeaders(res, 200);

    if (bulk.handles(path)) {
      return bulk.handle(req, res, url, () => authenticate(app, req.headers.authorization), {
        outcome: (outcome) => sendOutcome(res, outcome, rl()),
        error: (err) => sendOutcome(res, normalizeOperationOutcome(err), rl()),
        json: (status, body) => sendJson(res, status, body, rl()),
      });
    }
    if (path === '/fhir/R4' || path.startsWith('/fhir/R4/')) {
      return handleFhir(req, res, url);
    }
    if (path === '/healthcheck' || path === '/') {
      return sendJson(res, 200, { ok: true, version: VERSIONS[settings.compat], postgres: true, redis: true, devserver: true }, rl());
    }
    if (path === '/.well-known/jwks.json') {
      return sendJson(res, 200, { keys: [app.keys.jwk] }, rl());
    }
    if (path === '/.well-known/openid-configuration') {
      return sendJson(res, 200, openidConfiguration(config.baseUrl), rl());
    }
    if (path === '/.well-known/smart-configuration' || path === '/fhir/R4/.well-known/smart-configuration') {
      const oc = openidConfiguration(config.baseUrl);
      return sendJson(res, 200, { ...oc, capabilities: ['client-confidential-symmetric', 'client-confidential-asymmetric', 'client-public', 'sso-openid-connect', 'permission-v1'] }, rl());
    }
    if (path === '/oauth2/token' && method === 'POST') {
      const fault = takeFault('token', method, path);
      if (fault) {
        req.resume();
        return applyFault(fault, res);
      }
      const ct = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
      if (ct !== 'application/x-www-form-urlencoded') {
        req.resume();
        res.writeHead(400, { 'Content-Type': 'text/html; charset=utf-8', ...rl() });
        return res.end('Unsupported content type');
      }
      let params;
      try {
        params = parseForm(await readBody(req, 64 * 1024));
      } catch {
        return sendJson(res, 400, { error: 'invalid_request', error_description: 'Invalid request body' }, rl());
      }
      params.__remoteAddress = req.socket.remoteAddress;
      let out;
      try {
        out = await handleTokenRequest(app, params, req.headers.authorization, handleToken);
      } catch (err) {
        out = { status: 500, json: { error: 'server_error', error_description: String(err?.message ?? err) } };
      }
      return sendJson(res, out.status, out.json, { 'Cache-Control': 'no-store', Pragma: 'no-cache', ...rl() });
    }
    if (path === '/oauth2/authorize' && (method === 'GET' || method === 'POST')) {
      // GET reads the query string, POST the form body (as Medplum).
      let params = Object.fromEntries(url.searchParams);
      if (method === 'POST') {
        params = parseForm(await readBody(req, 64 * 1024));
      }
      const out = handleAuthorize(app, params, req.headers.cookie);
      if (out.status === 302) {
        res.writeHead(302, { Location: out.location, ...rl() });
        return res.end();
      }
      res.writeHead(out.status, { 'Content-Type': 'text/html; charset=utf-8', ...rl() });
      return res.end(out.text);
    }
    if ((path === '/auth/login' || path === '/auth/profile') && method === 'POST') {
      let body;
      try {
        body = await readParams(req);
      } catch {
        return sendOutcome(res, badRequest('Content could not be parsed'), rl());
      }
      try {
        stats.auth[path === '/auth/login' ? 'login' : 'profile']++;
        const out =
          path === '/auth/login'
            ? handleLogin(app, body, req.socket.remoteAddress, req.headers['user-agent'])
            : handleProfile(app, body);
        return sendJson(res, out.status, out.json, { ...loginCookie(out.cookie), ...rl() });
      } catch (err) {
        return sendOutcome(res, normalizeOperationOutcome(err), rl());
      }
    }
    if (path === '/auth/me' && method === 'GET') {
      try {
        return sendJson(res, 200, authMe(app, req.headers.authorization), rl());
      } catch (err) {
        return sendOutcome(res, normalizeOperationOutcome(err), rl());
      }
    }
    if (path === '/oauth2/userinfo') {
      try {
        const ctx = authenticate(app, req.headers.authorization);
        return sendJson(res, 200, userinfo(app, ctx), rl());
      } catch (err) {
        return sendOutcome(res, normalizeOperationOutcome(err), rl());
      }
    }
    if (path === '/oauth2/introspect' && method === 'POST') {
      const params = parseForm(await readBody(req, 64 * 1024));
      return sendJson(res, 200, introspect(app, params.token), rl());
    }
    if (path === '/oauth2/logout') {
      req.resume();
      try {
        const ctx = authenticate(app, req.headers.authorization);
        revokeLogin(app, ctx.login);
        return sendJson(res, 200, { ok: true }, rl());
      } catch (err) {
        return sendOutcome(res, normalizeOperationOutcome(err), rl());
      }
    }

    // ---------------------------------------------------------- stand-in-only endpoints
    const appOauthPath = new URL('oauth', appBaseUrl(config)).pathname;
    if (path === appOauthPath && path.startsWith('/_devserver/')) {
      if (method === 'GET') {
        return sendText(res, 200, appSignInPage(app, Object.fromEntries(url.searchParams)));
      }
      if (method === 'POST') {
        const params = { ...Object.fromEntries(url.searchParams), ...parseForm(await readBody(req, 64 * 1024)) };
        const out = appSignInPost(app, params, req.socket.remoteAddress, req.headers['user-agent']);
        if (out.status === 302) {
          res.writeHead(302, { Location: out.location, ...loginCookie(out.cookie) });
          return res.end();
        }
        return sendText(res, out.status, out.html ?? out.text);
      }
    }
    if (path === '/_devserver/stats' && method === 'GET') {
      const n = stats.notifications;
      return sendJson(res, 200, {
        ...stats,
        notifications: {
          ...n,
          first_attempt_latency_ms_avg: n.first_attempts ? n.first_attempt_latency_ms_total / n.first_attempts : 0,
          queued: engine.queue.length,
          in_flight: engine.running,
          retries_pending: engine.timers.size,
        },
        faults_pending: app.faults,
        resources: Object.fromEntries(store.types().map((t) => [t, store.current.get(t)?.size ?? 0]).filter(([, n]) => n > 0)),
      });
    }
    if (path === '/_devserver/reset-stats' && method === 'POST') {
      req.resume();
      Object.assign(stats, newStats());
      return sendJson(res, 200, { ok: true });
    }
    if (path === '/_devserver/config') {
      if (method === 'POST') {
        let patch;
        try {
          patch = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
        } catch {
          return sendJson(res, 400, { error: 'invalid JSON' });
        }
        const error = applySettings(patch);
        if (error) {
          return sendJson(res, 400, { error });
        }
      } else {
        req.resume();
      }
      return sendJson(res, 200, { settings });
    }
    if (path === '/_devserver/reset-quota' && method === 'POST') {
      req.resume();
      limits.reset();
      conflicts.reset();
      return sendJson(res, 200, { ok: true });
    }
    if (path === '/_devserver/project' && method === 'POST') {
      let spec;
      try {
        spec = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
      } catch {
        return sendJson(res, 400, { error: 'invalid JSON' });
      }
      const projectId = spec.id ?? 'starvit-dev';
      const project = store.get('Project', projectId);
      if (!project) {
        return sendJson(res, 404, { error: `no Project/${projectId}` });
      }
      const updated = { ...project };
      for (const field of ['features', 'systemSetting']) {
        if (field in spec) {
          if (spec[field] === null || (Array.isArray(spec[field]) && spec[field].length === 0)) {
            delete updated[field];
          } else {
            updated[field] = spec[field];
          }
        }
      }
      try {
        const stored = app.systemRepo().writeImpl(updated, project, false);
        return sendJson(res, 200, stored);
      } catch (err) {
        return sendOutcome(res, normalizeOperationOutcome(err));
      }
    }
    if (path === '/_devserver/fault') {
      if (method === 'GET') {
        return sendJson(res, 200, { faults: app.faults });
      }
      if (method === 'DELETE') {
        app.faults = [];
        return sendJson(res, 200, { ok: true, faults: [] });
      }
      if (method === 'POST') {
        let spec;
        try {
          spec = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8') || '{}');
        } catch {
          return sendJson(res, 400, { error: 'invalid JSON' });
        }
        const fault = {
          status: spec.status ?? 503,
          count: spec.count ?? 1,
          skip: spec.skip ?? 0,
          method: spec.method,
          pathPattern: spec.pathPattern,
          scope: spec.scope ?? 'fhir',
          resetSeconds: spec.resetSeconds ?? 60,
          delayMs: spec.delayMs ?? 0,
          message: spec.message,
        };
        if (![0, 429, 500, 502, 503, 504].includes(fault.status) && !(fault.status >= 400 && fault.status < 600)) {
          return sendJson(res, 400, { error: 'status must be 0 (drop connection) or 4xx/5xx' });
        }
        app.faults.push(fault);
        return sendJson(res, 200, { ok: true, faults: app.faults });
      }
    }
    if (path === '/_devserver/snapshot' && method === 'POST') {
      req.resume();
      return sendJson(res, 200, { saved: saveSnapshot(), path: config.snapshotPath ?? null });
    }
    req.resume();
    return sendOutcome(res, notFound, rl());
  }

  /** Applies a partial settings object from POST /_devserver/config; returns an error text or undefined. */
  function applySettings(patch) {
    if (!patch || typeof patch !== 'object' || Array.isArray(patch)) {
      return 'expected a JSON object';
    }
    const ints = ['rateLimit', 'authRateLimit', 'fhirQuota', 'projectFhirQuota', 'fhirQuotaWindowMs'];
    for (const [key, value] of Object.entries(patch)) {
      if (ints.includes(key)) {
        if (!(Number.isInteger(value) && value >= 0) && !(key === 'projectFhirQuota' && value === null)) {
          return `${key} must be a non-negative integer (or null for projectFhirQuota)`;
        }
      } else if (key === 'rateLimitHeaders' || key === 'validateProfiles') {
        if (typeof value !== 'boolean') {
          return `${key} must be true or false`;
        }
      } else if (key === 'compat') {
        if (!['5.0', '5.2'].includes(value)) {
          return 'compat must be "5.0" or "5.2"';
        }
      } else if (key === 'transactionConflicts') {
        if (!value || typeof value !== 'object') {
          return 'transactionConflicts must be an object';
        }
      } else {
        return `unknown setting ${key}`;
      }
    }
    for (const [key, value] of Object.entries(patch)) {
      if (key === 'transactionConflicts') {
        const tc = settings.transactionConflicts;
        if ('enabled' in value) {
          tc.enabled = Boolean(value.enabled);
        }
        for (const k of ['windowMs', 'every', 'attempts']) {
          if (Number.isInteger(value[k]) && value[k] >= (k === 'windowMs' ? 0 : 1)) {
            tc[k] = value[k];
          }
        }
      } else {
        settings[key] = value;
      }
    }
    return undefined;
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error('request failed', err);
      if (!res.headersSent) {
        const outcome = err instanceof OperationOutcomeError ? err.outcome : normalizeOperationOutcome(err);
        sendOutcome(res, outcome);
      } else {
        res.end();
      }
    });
  });
  server.keepAliveTimeout = 65000;

  return {
    app,
    server,
    loadState,
    saveSnapshot,
    listen() {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(config.port, config.host, () => resolve(server.address()));
      });
    },
    async close() {
      await engine.close();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
    },
  };
}
