// facts §4: bulk export as Medplum serves it — $export kick-off (202 + Content-Location), status
// polling under /fhir/R4/bulkdata/export/<id>, a manifest of presigned NDJSON files, _type and
// _since, protected and unexported types left out, cancellation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, startServer, token } from './helpers.mjs';

let srv, svc, partner, patientId;

before(async () => {
  srv = await startServer();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  partner = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
  const patient = await partner.post('Patient', { resourceType: 'Patient', gender: 'female', birthDate: '1970-01-01' });
  assert.equal(patient.status, 201);
  patientId = patient.body.id;
  const obs = await partner.post('Observation', {
    resourceType: 'Observation',
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '29463-7' }] },
    subject: { reference: `Patient/${patientId}` },
    valueQuantity: { value: 70, unit: 'kg', system: 'http://unitsofmeasure.org', code: 'kg' },
  });
  assert.equal(obs.status, 201);
});
after(async () => {
  await srv?.stop();
});

async function kickOff(query = '') {
  const res = await svc.get(`$export${query}`, { Prefer: 'respond-async' });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const location = res.headers.get('content-location');
  assert.match(location, new RegExp(`^${srv.baseUrl}fhir/R4/bulkdata/export/[0-9a-f-]{36}$`));
  return location.slice(srv.baseUrl.length + 'fhir/R4/'.length);
}

async function manifest(statusPath) {
  for (let i = 0; i < 200; i++) {
    const res = await svc.get(statusPath);
    if (res.status === 200) {
      return res.body;
    }
    assert.equal(res.status, 202);
    assert.equal(res.body, undefined); // Medplum answers an empty 202 while the export runs
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('the export never completed');
}

async function ndjson(url) {
  const res = await fetch(url); // presigned: no token
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'application/fhir+ndjson');
  return (await res.text()).trim().split('\n').map((line) => JSON.parse(line));
}

describe('$export', () => {
  test('kick-off, polling, manifest and presigned NDJSON files by type', async () => {
    const status = await kickOff('?_type=Patient,Observation');
    const body = await manifest(status);
    assert.equal(body.requiresAccessToken, false);
    assert.ok(body.transactionTime);
    assert.ok(body.request.endsWith('$export?_type=Patient,Observation'));
    assert.deepEqual(body.output.map((o) => o.type).sort(), ['Observation', 'Patient']);
    const patients = await ndjson(body.output.find((o) => o.type === 'Patient').url);
    assert.ok(patients.some((p) => p.id === patientId));
    assert.ok(patients.every((p) => p.resourceType === 'Patient'));
    const stamps = patients.map((p) => p.meta.lastUpdated);
    assert.deepEqual(stamps, [...stamps].sort()); // oldest first
  });

  test('a tampered or expired file URL is refused; the status needs a token', async () => {
    const body = await manifest(await kickOff('?_type=Patient'));
    const url = new URL(body.output[0].url);
    url.searchParams.set('Signature', 'A' + url.searchParams.get('Signature').slice(1));
    assert.equal((await fetch(url)).status, 403);
    const expired = new URL(body.output[0].url);
    expired.searchParams.set('Expires', '1000');
    assert.equal((await fetch(expired)).status, 403);
    const anonymous = await fetch(`${srv.baseUrl}fhir/R4/${await kickOff()}`);
    assert.equal(anonymous.status, 401);
  });

  test('_since keeps only what changed; protected and unexported types never appear', async () => {
    const future = new Date(Date.now() + 60_000).toISOString();
    const none = await manifest(await kickOff(`?_since=${encodeURIComponent(future)}`));
    assert.deepEqual(none.output, []);
    const all = await manifest(await kickOff());
    const types = all.output.map((o) => o.type);
    for (const hidden of ['AuditEvent', 'ProjectMembership', 'ClientApplication', 'Project', 'User', 'Login', 'Binary']) {
      assert.ok(!types.includes(hidden), hidden);
    }
    assert.ok(types.includes('Patient'));
    const bad = await svc.get('$export?_since=yesterday');
    assert.equal(bad.status, 400);
  });

  test('a cancelled export answers 404', async () => {
    const status = await kickOff();
    const cancel = await svc.del(status);
    assert.equal(cancel.status, 202);
    assert.equal((await svc.get(status)).status, 404);
  });
});
