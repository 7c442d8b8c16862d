// facts §4 and §7: REST behaviour — CRUD, headers, conditional create, optimistic locking, JSON
// Patch, validation (declared profiles too), $validate, body limit, no-op updates, transactions
// (atomic on / batch-like off), meta fields, Project.features read-only for project admins.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, devserver, startServer, token } from './helpers.mjs';

let srv, svc, admin;
const uniq = () => Math.random().toString(36).slice(2);

before(async () => {
  srv = await startServer();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
});
after(async () => {
  await srv?.stop();
});

const obs = (extra = {}) => ({ resourceType: 'Observation', status: 'preliminary', code: { text: 'weight' }, ...extra });

async function setTransactions(on) {
  // Project.features is super-admin only: the stand-in's own endpoint plays the super admin.
  const project = await devserver(srv.baseUrl, 'project', { id: 'starvit-dev', features: on ? ['transaction-bundles'] : [] });
  assert.deepEqual(project.features, on ? ['transaction-bundles'] : undefined);
}

describe('CRUD and headers', () => {
  test('create: 201, Location, ETag, Last-Modified; meta.author/project hidden unless X-Medplum: extended', async () => {
    const res = await svc.post('Observation', obs());
    assert.equal(res.status, 201);
    const r = res.body;
    assert.equal(res.headers.get('etag'), `W/"${r.meta.versionId}"`);
    assert.ok(res.headers.get('location').startsWith(`${srv.baseUrl}fhir/R4/Observation/${r.id}`));
    assert.equal(res.headers.get('last-modified'), new Date(r.meta.lastUpdated).toUTCString());
    assert.equal(r.meta.author, undefined);
    assert.equal(r.meta.project, undefined);
    const ext = await svc.get(`Observation/${r.id}`, { 'X-Medplum': 'extended' });
    assert.deepEqual(ext.body.meta.author.reference, 'ClientApplication/starvit-service');
    assert.equal(ext.body.meta.project, 'starvit-dev');
    const plain = await svc.get(`Observation/${r.id}`);
    assert.equal(plain.status, 200);
    assert.equal(plain.body.meta.author, undefined);
  });

  test('read, vread, history, update, delete -> 410', async () => {
    const created = (await svc.post('Observation', obs())).body;
    const updated = await svc.put(`Observation/${created.id}`, { ...created, status: 'final' });
    assert.equal(updated.status, 200);
    assert.notEqual(updated.body.meta.versionId, created.meta.versionId);
    const v1 = await svc.get(`Observation/${created.id}/_history/${created.meta.versionId}`);
    assert.equal(v1.status, 200);
    assert.equal(v1.body.status, 'preliminary');
    const hist = await svc.get(`Observation/${created.id}/_history`);
    assert.equal(hist.body.type, 'history');
    assert.equal(hist.body.entry.length, 2);
    assert.equal(hist.body.entry[0].resource.status, 'final', 'newest first');
    const del = await admin.del(`Observation/${created.id}`);
    assert.equal(del.status, 200);
    assert.equal((await svc.get(`Observation/${created.id}`)).status, 410);
    assert.equal((await svc.get('Observation/does-not-exist')).status, 404);
  });

  test('identical-content update creates no new version', async () => {
    const created = (await svc.post('Observation', obs())).body;
    const again = await svc.put(`Observation/${created.id}`, created);
    assert.equal(again.status, 200);
    assert.equal(again.body.meta.versionId, created.meta.versionId);
    const hist = await svc.get(`Observation/${created.id}/_history`);
    assert.equal(hist.body.entry.length, 1);
  });

  test('search with paging links and _total', async () => {
    const tag = uniq();
    for (let i = 0; i < 3; i++) {
      await svc.post('Observation', obs({ identifier: [{ system: 'urn:test:page', value: tag + i }], code: { text: tag } }));
    }
    const res = await svc.get(`Observation?code:text=${tag}&_count=2&_total=accurate`);
    assert.equal(res.status, 200);
    assert.equal(res.body.total, 3);
    assert.equal(res.body.entry.length, 2);
    const next = res.body.link.find((l) => l.relation === 'next');
    assert.ok(next);
    const page2 = await svc.get(next.url.slice((srv.baseUrl + 'fhir/R4/').length));
    assert.equal(page2.body.entry.length, 1);
  });
});

describe('conditional create, optimistic locking, patch', () => {
  test('If-None-Exist: 201, then 200 with the existing resource, 412 on several matches', async () => {
    const value = uniq();
    const body = obs({ identifier: [{ system: 'urn:test:ine', value }] });
    const h = { 'If-None-Exist': `identifier=urn:test:ine|${value}` };
    const first = await svc.post('Observation', body, h);
    assert.equal(first.status, 201);
    const second = await svc.post('Observation', body, h);
    assert.equal(second.status, 200);
    assert.equal(second.body.id, first.body.id);
    await svc.post('Observation', body); // a second, unconditional copy
    const third = await svc.post('Observation', body, h);
    assert.equal(third.status, 412);
    assert.equal(third.body.resourceType, 'OperationOutcome');
  });

  test('PUT with a stale If-Match -> 412; matching If-Match -> 200', async () => {
    const created = (await svc.post('Observation', obs())).body;
    const ok = await svc.put(`Observation/${created.id}`, { ...created, status: 'final' }, { 'If-Match': `W/"${created.meta.versionId}"` });
    assert.equal(ok.status, 200);
    const stale = await svc.put(`Observation/${created.id}`, { ...created, status: 'amended' }, { 'If-Match': `W/"${created.meta.versionId}"` });
    assert.equal(stale.status, 412);
    assert.equal(stale.body.resourceType, 'OperationOutcome');
  });

  test('JSON Patch with a test op on /meta/versionId: passes when current, 400 when stale', async () => {
    const created = (await svc.post('Observation', obs())).body;
    const patch = (v) => [
      { op: 'test', path: '/meta/versionId', value: v },
      { op: 'replace', path: '/status', value: 'final' },
    ];
    const ok = await svc.patch(`Observation/${created.id}`, patch(created.meta.versionId));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.status, 'final');
    const stale = await svc.patch(`Observation/${created.id}`, patch(created.meta.versionId));
    assert.equal(stale.status, 400);
    assert.equal(stale.body.resourceType, 'OperationOutcome');
    const ifMatch = await svc.patch(`Observation/${created.id}`, [{ op: 'replace', path: '/status', value: 'amended' }], {
      'If-Match': `W/"${created.meta.versionId}"`,
    });
    assert.equal(ifMatch.status, 412);
  });
});

describe('validation and limits', () => {
  test('invalid resources -> 400 OperationOutcome and nothing stored', async () => {
    const marker = uniq();
    const bad = [
      obs({ status: 'bogus', identifier: [{ system: 'urn:test:invalid', value: marker }] }),
      { resourceType: 'Observation', code: { text: 'x' }, identifier: [{ system: 'urn:test:invalid', value: marker }] },
      obs({ unknownField: 1, identifier: [{ system: 'urn:test:invalid', value: marker }] }),
    ];
    for (const b of bad) {
      const res = await svc.post('Observation', b);
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.resourceType, 'OperationOutcome');
    }
    const search = await svc.get(`Observation?identifier=urn:test:invalid|${marker}&_total=accurate`);
    assert.equal(search.body.total, 0);
    const notJson = await svc.post('Observation', '{not json');
    assert.equal(notJson.status, 400);
  });

  test('JSON body over 1 MB -> 400 "File too large"', async () => {
    const big = obs({ note: [{ text: 'x'.repeat(1024 * 1024) }] });
    const res = await svc.post('Observation', big);
    assert.equal(res.status, 400);
    assert.match(JSON.stringify(res.body), /File too large/);
    const justUnder = obs({ note: [{ text: 'x'.repeat(1000 * 1000) }] });
    assert.equal((await svc.post('Observation', justUnder)).status, 201);
  });
});

describe('batch and transaction', () => {
  function txBundle(type, marker, { failLast = true } = {}) {
    const entries = [
      {
        fullUrl: 'urn:uuid:3f0b2e0a-1111-4aaa-8bbb-000000000001',
        resource: { resourceType: 'Patient', identifier: [{ system: 'urn:test:tx', value: marker }] },
        request: { method: 'POST', url: 'Patient' },
      },
      {
        resource: obs({ identifier: [{ system: 'urn:test:tx', value: marker }], subject: { reference: 'urn:uuid:3f0b2e0a-1111-4aaa-8bbb-000000000001' } }),
        request: { method: 'POST', url: 'Observation' },
      },
    ];
    if (failLast) {
      entries.push({ resource: obs({ status: 'bogus' }), request: { method: 'POST', url: 'Observation' } });
    }
    return { resourceType: 'Bundle', type, entry: entries };
  }

  test('transaction-bundles ON: atomic; urn:uuid references rewritten', async () => {
    await setTransactions(true);
    const partner = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
    const marker = uniq();
    const failed = await partner.post('', txBundle('transaction', marker));
    assert.equal(failed.status, 400, JSON.stringify(failed.body));
    const leftovers = await admin.get(`Observation?identifier=urn:test:tx|${marker}&_total=accurate`);
    assert.equal(leftovers.body.total, 0, 'nothing from a failed transaction is stored');
    const patients = await admin.get(`Patient?identifier=urn:test:tx|${marker}&_total=accurate`);
    assert.equal(patients.body.total, 0);

    const ok = await partner.post('', txBundle('transaction', marker, { failLast: false }));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.type, 'transaction-response');
    const patientId = ok.body.entry[0].resource.id;
    assert.equal(ok.body.entry[1].resource.subject.reference, `Patient/${patientId}`);
  });

  test('transaction-bundles ON: more than 8 entries with a conditional entry -> 400', async () => {
    await setTransactions(true);
    const marker = uniq();
    const entry = [];
    for (let i = 0; i < 9; i++) {
      entry.push({
        resource: obs({ identifier: [{ system: 'urn:test:tx9', value: marker + i }] }),
        request: { method: 'POST', url: 'Observation', ...(i === 0 ? { ifNoneExist: `identifier=urn:test:tx9|${marker}0` } : {}) },
      });
    }
    const res = await svc.post('', { resourceType: 'Bundle', type: 'transaction', entry });
    assert.equal(res.status, 400);
    const eight = await svc.post('', { resourceType: 'Bundle', type: 'transaction', entry: entry.slice(0, 8) });
    assert.equal(eight.status, 200);
  });

  test('transaction-bundles OFF: processed like a batch (partial success)', async () => {
    await setTransactions(false);
    try {
      const partner = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
      const marker = uniq();
      const res = await partner.post('', txBundle('transaction', marker));
      assert.equal(res.status, 200);
      const stored = await admin.get(`Observation?identifier=urn:test:tx|${marker}&_total=accurate`);
      assert.equal(stored.body.total, 1, 'earlier entries stay stored');
      const statuses = res.body.entry.map((e) => e.response.status);
      assert.equal(statuses[2], '400');
    } finally {
      await setTransactions(true);
    }
  });

  test('batch: entries succeed or fail independently', async () => {
    const res = await svc.post('', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        { resource: obs(), request: { method: 'POST', url: 'Observation' } },
        { resource: obs({ status: 'bogus' }), request: { method: 'POST', url: 'Observation' } },
        { request: { method: 'GET', url: 'Observation?_count=1' } },
      ],
    });
    assert.equal(res.status, 200);
    assert.equal(res.body.type, 'batch-response');
    assert.deepEqual(res.body.entry.map((e) => e.response.status), ['201', '400', '200']);
  });
});

describe('Project.features (super admin only)', () => {
  test("a project admin's PATCH or PUT of features answers 200 and changes nothing", async () => {
    const before = (await admin.get('Project/starvit-dev')).body;
    assert.deepEqual(before.features, ['transaction-bundles']);
    const removed = await admin.patch('Project/starvit-dev', [{ op: 'remove', path: '/features' }]);
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assert.deepEqual(removed.body.features, ['transaction-bundles']);
    assert.equal(removed.body.meta.versionId, before.meta.versionId, 'no new version');
    const put = await admin.put('Project/starvit-dev', { ...before, features: ['bots'] });
    assert.equal(put.status, 200);
    assert.deepEqual((await admin.get('Project/starvit-dev')).body.features, ['transaction-bundles']);
    // Other fields stay writable for the project admin.
    const renamed = await admin.patch('Project/starvit-dev', [{ op: 'replace', path: '/description', value: 'renamed' }]);
    assert.equal(renamed.status, 200);
    assert.equal(renamed.body.description, 'renamed');
  });

  test('PATCH /features/- on a project without features -> 400; add the whole array instead', async () => {
    await setTransactions(false);
    try {
      const dash = await admin.patch('Project/starvit-dev', [{ op: 'add', path: '/features/-', value: 'transaction-bundles' }]);
      assert.equal(dash.status, 400);
      assert.equal(dash.body.resourceType, 'OperationOutcome');
      const whole = await admin.patch('Project/starvit-dev', [{ op: 'add', path: '/features', value: ['transaction-bundles'] }]);
      assert.equal(whole.status, 200, 'valid patch, but the field is read-only for a project admin');
      assert.equal(whole.body.features, undefined);
    } finally {
      await setTransactions(true);
    }
  });
});

describe('declared profiles and $validate', () => {
  const BP = 'http://hl7.org/fhir/StructureDefinition/bp';
  const vital = (extra = {}) => ({
    resourceType: 'Observation',
    status: 'final',
    category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'vital-signs' }] }],
    code: { coding: [{ system: 'http://loinc.org', code: '85354-9' }] },
    subject: { reference: 'Patient/patient-portal-pat' },
    effectiveDateTime: '2026-01-01T10:00:00Z',
    ...extra,
  });
  const component = (code, value) => ({
    code: { coding: [{ system: 'http://loinc.org', code }] },
    valueQuantity: { value, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' },
  });

  // As with Synthea's BP Observations: systolic and diastolic components present, yet the bp
  // profile's slices (discriminated on code.coding.code/system) are not recognised by Medplum's
  // validator, so every Observation declaring the bp profile is refused, as the real server did.
  const bp = (extra = {}) => vital({ meta: { profile: [BP] }, component: [component('8462-4', 76), component('8480-6', 128)], ...extra });

  test('bp profile -> 400 "Incorrect number of values provided for slice \'SystolicBP\'"; others validated, unknown ones ignored', async () => {
    const bad = await svc.post('Observation', bp());
    assert.equal(bad.status, 400);
    assert.ok(bad.body.issue.some((i) => i.details.text === "Incorrect number of values provided for slice 'SystolicBP': expected 1..1, but found 0"));
    const withoutDeclaration = await svc.post('Observation', bp({ meta: {} }));
    assert.equal(withoutDeclaration.status, 201, 'the same data without the declaration is fine');
    const heartrate = 'http://hl7.org/fhir/StructureDefinition/heartrate';
    const hr = vital({
      meta: { profile: [heartrate] },
      code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
      valueQuantity: { value: 60, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    });
    assert.equal((await svc.post('Observation', hr)).status, 201, 'a known profile that is satisfied');
    const hrBad = await svc.post('Observation', { ...hr, valueQuantity: undefined, dataAbsentReason: { text: 'not measured' }, component: undefined, subject: undefined });
    assert.equal(hrBad.status, 400, 'a known profile that is not satisfied (subject required)');
    const unknown = await svc.post('Observation', bp({ meta: { profile: ['http://example.org/StructureDefinition/not-loaded'] } }));
    assert.equal(unknown.status, 201, 'a profile the server cannot load is skipped');
  });

  test('a profile failure fails the whole transaction', async () => {
    const marker = uniq();
    const res = await svc.post('', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: obs({ identifier: [{ system: 'urn:test:profile-tx', value: marker }] }), request: { method: 'POST', url: 'Observation' } },
        { resource: bp(), request: { method: 'POST', url: 'Observation' } },
      ],
    });
    assert.equal(res.status, 400);
    assert.match(JSON.stringify(res.body), /SystolicBP/);
    const stored = await admin.get(`Observation?identifier=urn:test:profile-tx|${marker}&_total=accurate`);
    assert.equal(stored.body.total, 0);
  });

  test('MEDPLUM_VALIDATE_PROFILES off (runtime setting) accepts the declaration unchecked', async () => {
    await devserver(srv.baseUrl, 'config', { validateProfiles: false });
    try {
      assert.equal((await svc.post('Observation', bp())).status, 201);
    } finally {
      await devserver(srv.baseUrl, 'config', { validateProfiles: true });
    }
  });

  test('POST <Type>/$validate with a resource or Parameters answers an OperationOutcome and stores nothing', async () => {
    const marker = uniq();
    const ok = await svc.post('Observation/$validate', obs({ identifier: [{ system: 'urn:test:validate', value: marker }] }));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.resourceType, 'OperationOutcome');
    assert.equal(ok.body.issue[0].severity, 'information');
    const invalid = await svc.post('Observation/$validate', obs({ status: 'bogus' }));
    assert.equal(invalid.status, 400);
    assert.equal(invalid.body.resourceType, 'OperationOutcome');
    const profiled = await svc.post('Observation/$validate', {
      resourceType: 'Parameters',
      parameter: [{ name: 'resource', resource: bp() }],
    });
    assert.equal(profiled.status, 400);
    assert.match(JSON.stringify(profiled.body), /SystolicBP/);
    const wrongType = await svc.post('Patient/$validate', obs());
    assert.equal(wrongType.status, 400);
    const stored = await admin.get(`Observation?identifier=urn:test:validate|${marker}&_total=accurate`);
    assert.equal(stored.body.total, 0);
  });
});
