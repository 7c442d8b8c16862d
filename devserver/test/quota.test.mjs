// facts §4 and §7: RateLimit headers on every FHIR response ("requests" per IP, "fhirInteractions"
// per membership), the FHIR quota charged as Medplum charges it, 429 `throttled` without
// Retry-After, the stand-in's switches for them, and the opt-in serialization-conflict simulation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, devserver, parseRateLimit, startServer, token } from './helpers.mjs';

const uniq = () => Math.random().toString(36).slice(2);
const obs = (extra = {}) => ({ resourceType: 'Observation', status: 'preliminary', code: { text: 'weight' }, ...extra });

/** Points charged to a membership by one call, read from the server's own counters. */
async function charged(baseUrl, membership, fn) {
  const before = (await devserver(baseUrl, 'stats')).fhir_quota.by_membership[membership] ?? 0;
  const result = await fn();
  const after = (await devserver(baseUrl, 'stats')).fhir_quota.by_membership[membership] ?? 0;
  return { points: after - before, result };
}

describe('default limits', () => {
  let srv, svc, admin;
  before(async () => {
    srv = await startServer();
    svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
    admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
  });
  after(async () => {
    await srv?.stop();
  });
  const pts = (fn, membership = 'pm-starvit-service') => charged(srv.baseUrl, membership, fn);

  test('every FHIR response carries two RateLimit lines: "requests" and "fhirInteractions"', async () => {
    const res = await fetch(srv.baseUrl + 'fhir/R4/Patient/patient-portal-pat', {
      headers: { Authorization: 'Bearer ' + (await token(srv.baseUrl, CLIENTS.partner)).access_token },
    });
    assert.equal(res.status, 200);
    const raw = res.headers.get('ratelimit');
    assert.match(raw, /^"requests";r=\d+;t=\d+, "fhirInteractions";r=\d+;t=\d+$/);
    const policies = parseRateLimit(raw);
    assert.ok(policies.requests.r > 59000 && policies.requests.r < 60000);
    assert.equal(policies.fhirInteractions.r, 50000 - 1, 'a read costs 1 of 50,000');
    assert.ok(policies.fhirInteractions.t > 0 && policies.fhirInteractions.t <= 60);
    assert.equal(res.headers.get('retry-after'), null);
    const health = await fetch(srv.baseUrl + 'healthcheck');
    assert.deepEqual(Object.keys(parseRateLimit(health.headers.get('ratelimit'))), ['requests'], 'non-FHIR routes: requests only');
  });

  test('points per interaction: read 1, vread 1, history 10, search 20, writes 100, conditional create 120', async () => {
    const created = await pts(() => svc.post('Observation', obs()));
    assert.equal(created.points, 100);
    const o = created.result.body;
    assert.equal((await pts(() => svc.get(`Observation/${o.id}`))).points, 1);
    assert.equal((await pts(() => svc.get(`Observation/${o.id}/_history/${o.meta.versionId}`))).points, 1);
    assert.equal((await pts(() => svc.get(`Observation/${o.id}/_history`))).points, 10);
    assert.equal((await pts(() => svc.get('Observation?_count=1'))).points, 20);
    assert.equal((await pts(() => svc.put(`Observation/${o.id}`, { ...o, status: 'final' }))).points, 100);
    assert.equal((await pts(() => svc.patch(`Observation/${o.id}`, [{ op: 'replace', path: '/status', value: 'amended' }]))).points, 100);
    const value = uniq();
    const ine = { 'If-None-Exist': `identifier=urn:test:quota|${value}` };
    const conditional = await pts(() => svc.post('Observation', obs({ identifier: [{ system: 'urn:test:quota', value }] }), ine));
    assert.equal(conditional.result.status, 201);
    assert.equal(conditional.points, 120, 'search 20 + write 100');
    assert.equal((await pts(() => svc.post('Observation', obs(), ine))).points, 20, 'a match costs the search only');
    assert.equal((await pts(() => admin.del(`Observation/${o.id}`), 'pm-ops-admin')).points, 100);
  });

  test('bundles: every entry charged on its own; a conditional create inside a bundle costs 140', async () => {
    const value = uniq();
    const batch = await pts(() =>
      svc.post('', {
        resourceType: 'Bundle',
        type: 'batch',
        entry: [
          { resource: obs(), request: { method: 'POST', url: 'Observation' } },
          { request: { method: 'GET', url: 'Observation?_count=1' } },
          { request: { method: 'GET', url: 'Patient/patient-portal-pat' } },
        ],
      })
    );
    assert.equal(batch.points, 100 + 20 + 1);
    const tx = await pts(() =>
      svc.post('', {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          {
            resource: obs({ identifier: [{ system: 'urn:test:quota-tx', value }] }),
            request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=urn:test:quota-tx|${value}` },
          },
          { resource: obs(), request: { method: 'POST', url: 'Observation' } },
        ],
      })
    );
    assert.equal(tx.result.status, 200);
    assert.equal(tx.points, 140 + 100, "identity search 20 + conditionalCreate's search 20 + write 100, plus a plain create");
  });

  test('_include / _revinclude: 1 point per included resource returned', async () => {
    const tag = uniq();
    for (let i = 0; i < 3; i++) {
      await svc.post('Observation', obs({ code: { text: tag }, subject: { reference: 'Patient/patient-portal-pat' } }));
    }
    const included = await pts(() => svc.get(`Observation?code:text=${tag}&_include=Observation:subject`));
    assert.equal(included.result.body.entry.filter((e) => e.search.mode === 'include').length, 1);
    assert.equal(included.points, 20 + 1);
    const revincluded = await pts(() => svc.get(`Patient?_id=patient-portal-pat&_revinclude=Observation:subject&_count=1`));
    const n = revincluded.result.body.entry.filter((e) => e.search.mode === 'include').length;
    assert.ok(n >= 3);
    assert.equal(revincluded.points, 20 + n);
  });

  test('stats and RateLimit agree; the project limit is 10x the user limit and r reports the lower', async () => {
    const res = await svc.get('Patient/patient-portal-pat');
    const r = parseRateLimit(res.headers.get('ratelimit')).fhirInteractions.r;
    const used = (await devserver(srv.baseUrl, 'stats')).fhir_quota.by_membership['pm-starvit-service'];
    assert.equal(r, 50000 - used);
    // Raise the user limit above the project's remaining: r now follows the project (10 x 100 = 1,000 left at most).
    const settings = (await devserver(srv.baseUrl, 'config', { fhirQuota: 100 })).settings;
    assert.equal(settings.fhirQuota, 100);
    await devserver(srv.baseUrl, 'reset-quota', {});
    await svc.get('Patient/patient-portal-pat');
    await devserver(srv.baseUrl, 'config', { fhirQuota: 100000, projectFhirQuota: 150 });
    const limited = await svc.get('Patient/patient-portal-pat');
    assert.equal(parseRateLimit(limited.headers.get('ratelimit')).fhirInteractions.r, 150 - 2, 'project window: 2 reads so far');
    await devserver(srv.baseUrl, 'config', { fhirQuota: 50000, projectFhirQuota: null });
    await devserver(srv.baseUrl, 'reset-quota', {});
  });

  test('quota spent -> 429 throttled with RateLimit r=0 and no Retry-After, until reset', async () => {
    await devserver(srv.baseUrl, 'config', { fhirQuota: 250 });
    await devserver(srv.baseUrl, 'reset-quota', {});
    try {
      assert.equal((await svc.post('Observation', obs())).status, 201);
      assert.equal((await svc.post('Observation', obs())).status, 201);
      const refused = await svc.post('Observation', obs());
      assert.equal(refused.status, 429);
      assert.equal(refused.body.issue[0].code, 'throttled');
      assert.equal(refused.headers.get('retry-after'), null);
      const limit = parseRateLimit(refused.headers.get('ratelimit')).fhirInteractions;
      assert.equal(limit.r, 0);
      assert.ok(limit.t > 0 && limit.t <= 60);
      const diagnostics = JSON.parse(refused.body.issue[0].diagnostics);
      assert.equal(diagnostics.limit, 250);
      assert.equal((await svc.get('Patient/patient-portal-pat')).status, 429, 'even a read is refused now');
      const other = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
      assert.equal((await other.get('Patient/patient-portal-pat')).status, 200, 'quota is per membership');
      assert.ok((await devserver(srv.baseUrl, 'stats')).fhir_quota.throttled >= 2);
    } finally {
      await devserver(srv.baseUrl, 'config', { fhirQuota: 50000 });
      await devserver(srv.baseUrl, 'reset-quota', {});
    }
    assert.equal((await svc.get('Patient/patient-portal-pat')).status, 200);
  });

  test('a quota refusal inside a transaction fails the transaction; inside a batch the rest of the entries', async () => {
    await devserver(srv.baseUrl, 'config', { fhirQuota: 250 });
    await devserver(srv.baseUrl, 'reset-quota', {});
    try {
      const entry = [1, 2, 3].map(() => ({ resource: obs(), request: { method: 'POST', url: 'Observation' } }));
      const tx = await svc.post('', { resourceType: 'Bundle', type: 'transaction', entry });
      assert.equal(tx.status, 429);
      await devserver(srv.baseUrl, 'reset-quota', {});
      const batch = await svc.post('', { resourceType: 'Bundle', type: 'batch', entry });
      assert.equal(batch.status, 200);
      assert.deepEqual(batch.body.entry.map((e) => e.response.status), ['201', '201', '429']);
    } finally {
      await devserver(srv.baseUrl, 'config', { fhirQuota: 50000 });
      await devserver(srv.baseUrl, 'reset-quota', {});
    }
  });
});

describe('switches', () => {
  test('MEDPLUM_RATELIMIT_HEADERS=0 and MEDPLUM_FHIR_QUOTA=0: no headers, no quota, points still counted', async () => {
    const srv = await startServer({ MEDPLUM_RATELIMIT_HEADERS: '0', MEDPLUM_FHIR_QUOTA: '0' });
    try {
      const svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
      const res = await svc.post('Observation', obs());
      assert.equal(res.status, 201);
      assert.equal(res.headers.get('ratelimit'), null);
      const stats = await devserver(srv.baseUrl, 'stats');
      assert.equal(stats.fhir_quota.by_membership['pm-starvit-service'], 100);
      const config = await devserver(srv.baseUrl, 'config');
      assert.equal(config.settings.fhirQuota, 0);
      assert.equal(config.settings.rateLimitHeaders, false);
    } finally {
      await srv.stop();
    }
  });

  test('per-IP "requests" policy (MEDPLUM_RATE_LIMIT) and the auth-route limit (MEDPLUM_AUTH_RATE_LIMIT)', async () => {
    const srv = await startServer({ MEDPLUM_RATE_LIMIT: '5', MEDPLUM_AUTH_RATE_LIMIT: '2' });
    try {
      const tok = (await token(srv.baseUrl, CLIENTS.service)).access_token;
      const svc = client(srv.baseUrl, tok);
      const seen = [];
      for (let i = 0; i < 6; i++) {
        const res = await svc.get('Patient/patient-portal-pat');
        seen.push([res.status, parseRateLimit(res.headers.get('ratelimit')).requests?.r]);
      }
      assert.deepEqual(seen.map((s) => s[0]), [200, 200, 200, 200, 200, 429]);
      assert.deepEqual(seen.map((s) => s[1]), [4, 3, 2, 1, 0, 0]);
      const refused = await svc.get('Patient/patient-portal-pat');
      assert.equal(refused.body.issue[0].code, 'throttled');
      assert.equal(refused.headers.get('retry-after'), null);
      // Auth routes count separately: one token request was made above, one more is allowed.
      await token(srv.baseUrl, CLIENTS.partner);
      const third = await fetch(srv.baseUrl + 'oauth2/token', {
        method: 'POST',
        body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'partner-acme', client_secret: 'partner-acme-dev-secret' }),
      });
      assert.equal(third.status, 429);
      assert.match(third.headers.get('ratelimit'), /^"requests";r=0;t=\d+$/);
      assert.equal((await devserver(srv.baseUrl, 'stats')).rate_limit.auth_throttled, 1);
    } finally {
      await srv.stop();
    }
  });
});

describe('serialization conflicts (MEDPLUM_TRANSACTION_CONFLICTS)', () => {
  let srv, svc;
  before(async () => {
    srv = await startServer({ MEDPLUM_TRANSACTION_CONFLICTS: '1', MEDPLUM_TRANSACTION_CONFLICT_WINDOW_MS: '5000' });
    svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  });
  after(async () => {
    await srv?.stop();
  });

  const conditionalTx = (patient, value = uniq()) => ({
    resourceType: 'Bundle',
    type: 'transaction',
    entry: [
      {
        resource: obs({ identifier: [{ system: 'urn:test:conflict', value }], subject: { reference: patient } }),
        request: { method: 'POST', url: 'Observation', ifNoneExist: `identifier=urn:test:conflict|${value}` },
      },
    ],
  });

  test('overlapping conditional transactions for the same patient: the later one gets 409 after the retries, charged per attempt', async () => {
    const patient = (await svc.get('Patient/patient-portal-pat')).body;
    assert.equal((await svc.post('', conditionalTx(`Patient/${patient.id}`))).status, 200);
    const second = await charged(srv.baseUrl, 'pm-starvit-service', () => svc.post('', conditionalTx(`Patient/${patient.id}`)));
    assert.equal(second.result.status, 409);
    assert.equal(second.result.body.issue[0].code, 'conflict');
    assert.equal(second.points, 20 + 2 * 120, 'identity search once, the transaction body twice (2 attempts)');
    const stats = (await devserver(srv.baseUrl, 'stats')).transactions;
    assert.equal(stats.conflicts, 1);
    assert.equal(stats.retried, 1);
    // Transactions without conditional entries are not serializable; batches and single requests are not simulated.
    const plain = await svc.post('', { resourceType: 'Bundle', type: 'transaction', entry: [{ resource: obs({ subject: { reference: `Patient/${patient.id}` } }), request: { method: 'POST', url: 'Observation' } }] });
    assert.equal(plain.status, 200);
    const batch = await svc.post('', { ...conditionalTx(`Patient/${patient.id}`), type: 'batch' });
    assert.equal(batch.status, 200);
    assert.equal(batch.body.entry[0].response.status, '201', 'batches do not conflict');
    const standalone = await svc.post('Observation', obs({ subject: { reference: `Patient/${patient.id}` } }), { 'If-None-Exist': `identifier=urn:test:conflict|${uniq()}` });
    assert.equal(standalone.status, 201);
  });

  test('every Nth overlapping transaction fails; the others succeed on the internal retry (charged twice)', async () => {
    await devserver(srv.baseUrl, 'config', { transactionConflicts: { every: 2 } });
    await devserver(srv.baseUrl, 'reset-quota', {});
    const ref = 'Patient/patient-portal-pat';
    const value = uniq();
    assert.equal((await svc.post('', conditionalTx(ref, value))).status, 200, 'no overlap yet');
    const retried = await charged(srv.baseUrl, 'pm-starvit-service', () => svc.post('', conditionalTx(ref)));
    assert.equal(retried.result.status, 200);
    assert.equal(retried.points, 20 + 2 * 120);
    const failed = await svc.post('', conditionalTx(ref));
    assert.equal(failed.status, 409);
    const third = await svc.post('', conditionalTx(ref));
    assert.equal(third.status, 200);
    // Off at run time: no conflicts at all.
    await devserver(srv.baseUrl, 'config', { transactionConflicts: { enabled: false } });
    for (let i = 0; i < 3; i++) {
      assert.equal((await svc.post('', conditionalTx(ref))).status, 200);
    }
  });
});

describe('quota window (MEDPLUM_FHIR_QUOTA_WINDOW_MS)', () => {
  test('a shortened window resets the quota after its length; t reports it', async () => {
    const srv = await startServer({ MEDPLUM_FHIR_QUOTA: '150', MEDPLUM_FHIR_QUOTA_WINDOW_MS: '1500' });
    try {
      const svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
      const first = await svc.post('Observation', obs());
      assert.equal(first.status, 201);
      const limit = parseRateLimit(first.headers.get('ratelimit')).fhirInteractions;
      assert.equal(limit.r, 50);
      assert.ok(limit.t >= 1 && limit.t <= 2, 't is the shortened window');
      assert.equal((await svc.post('Observation', obs())).status, 429);
      await new Promise((resolve) => setTimeout(resolve, 1600));
      assert.equal((await svc.post('Observation', obs())).status, 201, 'a new window');
    } finally {
      await srv.stop();
    }
  });
});
