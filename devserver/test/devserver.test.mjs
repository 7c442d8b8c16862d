// Stand-in-only endpoints (stats, fault injection, runtime settings, project features) and the
// snapshot on shutdown / reload on start.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, startServer, token } from './helpers.mjs';

describe('stats and faults', () => {
  let srv, svc;
  before(async () => {
    srv = await startServer();
    svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  });
  after(async () => {
    await srv?.stop();
  });

  const post = (p, body) =>
    fetch(srv.baseUrl + p, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body ? JSON.stringify(body) : undefined });
  const stats = async () => (await fetch(srv.baseUrl + '_devserver/stats')).json();

  test('healthcheck', async () => {
    const res = await fetch(srv.baseUrl + 'healthcheck');
    assert.equal(res.status, 200);
    assert.equal((await res.json()).ok, true);
  });

  test('request counters by method and route kind; reset', async () => {
    assert.equal((await post('_devserver/reset-stats')).status, 200);
    await token(srv.baseUrl, CLIENTS.service);
    const created = await svc.post('Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' } });
    await svc.get(`Observation/${created.body.id}`);
    await svc.get('Observation?_count=1');
    const s = await stats();
    assert.equal(s.fhir.total, 3);
    assert.equal(s.fhir.by_route['POST create'], 1);
    assert.equal(s.fhir.by_route['GET read'], 1);
    assert.equal(s.fhir.by_route['GET search-type'], 1);
    assert.equal(s.token.requests, 1);
    assert.equal(typeof s.notifications.delivered, 'number');
  });

  test('fault injection: 429 with Medplum RateLimit header, then 503, then normal', async () => {
    let res = await post('_devserver/fault', { status: 429, count: 1, resetSeconds: 7 });
    assert.equal(res.status, 200);
    res = await post('_devserver/fault', { status: 503, count: 1, method: 'GET' });
    assert.equal(res.status, 200);
    const limited = await svc.get('Patient/patient-portal-pat');
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get('ratelimit'), '"requests";r=0;t=7');
    assert.equal(limited.headers.get('retry-after'), null);
    assert.equal(limited.body.issue[0].code, 'throttled');
    const unavailable = await svc.get('Patient/patient-portal-pat');
    assert.equal(unavailable.status, 503);
    assert.equal(unavailable.body.resourceType, 'OperationOutcome');
    assert.equal((await svc.get('Patient/patient-portal-pat')).status, 200);
  });

  test('runtime settings: GET/POST /_devserver/config; POST /_devserver/project sets features as a super admin', async () => {
    const current = await (await fetch(srv.baseUrl + '_devserver/config')).json();
    assert.deepEqual(Object.keys(current.settings).sort(), [
      'authRateLimit',
      'compat',
      'fhirQuota',
      'fhirQuotaWindowMs',
      'projectFhirQuota',
      'rateLimit',
      'rateLimitHeaders',
      'transactionConflicts',
      'validateProfiles',
    ]);
    assert.equal(current.settings.fhirQuota, 50000);
    assert.equal(current.settings.compat, '5.2');
    assert.equal(current.settings.transactionConflicts.enabled, false);
    assert.equal((await post('_devserver/config', { fhirQuota: -1 })).status, 400);
    assert.equal((await post('_devserver/config', { nope: 1 })).status, 400);
    const changed = await (await post('_devserver/config', { rateLimit: 70000 })).json();
    assert.equal(changed.settings.rateLimit, 70000);
    await post('_devserver/config', { rateLimit: 60000 });

    const off = await (await post('_devserver/project', { features: [] })).json();
    assert.equal(off.features, undefined);
    const on = await (await post('_devserver/project', { id: 'starvit-dev', features: ['transaction-bundles'] })).json();
    assert.deepEqual(on.features, ['transaction-bundles']);
    const s = await stats();
    assert.equal(typeof s.fhir_quota.total_points, 'number');
    assert.ok(s.resources.Project >= 1);
  });

  test('fault injection can target the token endpoint and paths; DELETE clears', async () => {
    await post('_devserver/fault', { status: 503, count: 5, scope: 'token' });
    const res = await fetch(srv.baseUrl + 'oauth2/token', {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'starvit-service', client_secret: 'starvit-dev-service-secret' }),
    });
    assert.equal(res.status, 503);
    await fetch(srv.baseUrl + '_devserver/fault', { method: 'DELETE' });
    await token(srv.baseUrl, CLIENTS.service);
    await post('_devserver/fault', { status: 500, count: 1, pathPattern: '^/fhir/R4/Task' });
    assert.equal((await svc.get('Patient/patient-portal-pat')).status, 200);
    assert.equal((await svc.get('Task?_count=1')).status, 500);
  });
});

describe('snapshot', () => {
  test('state is saved on SIGTERM and reloaded on start (tokens stay valid)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devserver-snap-'));
    const snapshot = path.join(dir, 'state.json');
    try {
      let srv = await startServer({ DEVSERVER_SNAPSHOT: snapshot });
      const tok = (await token(srv.baseUrl, CLIENTS.service)).access_token;
      const created = await client(srv.baseUrl, tok).post('Observation', { resourceType: 'Observation', status: 'final', code: { text: 'kept' } });
      assert.equal(created.status, 201);
      assert.equal(await srv.stop('SIGTERM'), 0);
      assert.ok(fs.existsSync(snapshot));
      srv = await startServer({ DEVSERVER_SNAPSHOT: snapshot });
      try {
        // Issuer differs (new port) but the key and Login survive: a fresh token works and the data is there.
        const tok2 = (await token(srv.baseUrl, CLIENTS.service)).access_token;
        const read = await client(srv.baseUrl, tok2).get(`Observation/${created.body.id}`);
        assert.equal(read.status, 200);
        assert.equal(read.body.meta.versionId, created.body.meta.versionId);
        assert.equal((await client(srv.baseUrl, tok).get(`Observation/${created.body.id}`)).status, 200);
      } finally {
        await srv.stop();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
