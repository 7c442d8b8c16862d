// facts §4: REST behaviour — CRUD, headers, conditional create, optimistic locking, JSON Patch,
// validation, body limit, no-op updates, transactions (atomic on / batch-like off), meta fields.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, startServer, token } from './helpers.mjs';

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
  const project = (await admin.get('Project/starvit-dev')).body;
  const features = on ? ['transaction-bundles'] : [];
  const res = await admin.put('Project/starvit-dev', { ...project, features });
  assert.equal(res.status, 200, JSON.stringify(res.body));
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
