// facts §1: rest-hook Subscription delivery — headers, signature over the exact bytes, payload with
// Medplum meta, interaction filtering, FHIRPath criteria, retries (count and spacing), stale-retry
// drop, AuditEvents, success codes, timeout, auto-disable, no-op updates, transactions, $resend.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, EXT, client, hmacHex, sleep, startReceiver, startServer, subscription, token } from './helpers.mjs';

const RETRY_BASE = 200;
let srv, rx, svc, admin;

before(async () => {
  srv = await startServer({
    SUBSCRIPTION_RETRY_BASE_MS: String(RETRY_BASE),
    SUBSCRIPTION_AUTO_DISABLE_AFTER: '2',
    SUBSCRIPTION_TIMEOUT_MS: '800',
  });
  rx = await startReceiver();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
});
after(async () => {
  await srv?.stop();
  await rx?.close();
});

let n = 0;
/** A unique tag, the Observation criteria matching it, and a receiver path. */
function scenario() {
  const tag = `t${++n}-${crypto.randomUUID().slice(0, 8)}`;
  return { tag, path: '/hook/' + tag, criteria: `Observation?code=urn:test:sub|${tag}` };
}
const obs = (tag, extra = {}) => ({
  resourceType: 'Observation',
  status: 'preliminary',
  code: { coding: [{ system: 'urn:test:sub', code: tag }] },
  ...extra,
});

async function subscribe(path, criteria, extension = [], extra = {}) {
  const res = await svc.post('Subscription', subscription(rx.url + path, criteria, extension, extra));
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

async function auditEventsFor(resource) {
  const res = await admin.get(`AuditEvent?entity=${resource.resourceType}/${resource.id}&_count=100`);
  assert.equal(res.status, 200);
  return (res.body.entry ?? []).map((e) => e.resource);
}

describe('delivery', () => {
  test('headers, signature over the raw bytes, full resource with Medplum meta, x-trace-id', async () => {
    const { tag, path, criteria } = scenario();
    const secret = 'whsec-' + tag;
    const sub = await subscribe(path, criteria, [{ url: EXT.secret, valueString: secret }], {
      channel: { header: ['Authorization: Bearer abc:def', 'X-Custom-Header:  some value '] },
    });
    const traceId = crypto.randomUUID();
    const created = await svc.post('Observation', obs(tag), { 'X-Trace-Id': traceId });
    assert.equal(created.status, 201);
    const [hit] = await rx.waitFor(() => rx.forPath(path).length >= 1).then(() => rx.forPath(path));
    const h = hit.headers;
    assert.equal(hit.method, 'POST');
    assert.equal(h['content-type'], 'application/fhir+json');
    assert.equal(h['x-medplum-subscription'], sub.id);
    assert.equal(h['x-medplum-interaction'], 'create');
    assert.equal(h['x-medplum-deleted-resource'], undefined);
    assert.equal(h['authorization'], 'Bearer abc', 'a second ":" cuts the value, as Medplum splits on ":"');
    assert.equal(h['x-custom-header'], 'some value');
    assert.equal(h['x-trace-id'], traceId);
    const expected = hmacHex(secret, hit.raw);
    assert.equal(h['x-signature'], expected);
    assert.ok(crypto.timingSafeEqual(Buffer.from(h['x-signature']), Buffer.from(expected)));
    assert.match(h['x-signature'], /^[0-9a-f]{64}$/);
    const body = JSON.parse(hit.body);
    assert.equal(hit.body, JSON.stringify(body), 'compact JSON');
    assert.equal(body.id, created.body.id);
    assert.equal(body.meta.versionId, created.body.meta.versionId);
    assert.equal(body.meta.author.reference, 'ClientApplication/starvit-service');
    assert.equal(body.meta.project, 'starvit-dev');
    assert.ok(Array.isArray(body.meta.compartment));
  });

  test('no supported-interaction extension: create, update and delete all fire; delete sends {}', async () => {
    const { tag, path, criteria } = scenario();
    const secret = 's-' + tag;
    await subscribe(path, criteria, [{ url: EXT.secret, valueString: secret }]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    await svc.put(`Observation/${created.id}`, { ...created, status: 'final' });
    await rx.waitFor(() => rx.forPath(path).length >= 2);
    assert.equal((await admin.del(`Observation/${created.id}`)).status, 200);
    await rx.waitFor(() => rx.forPath(path).length >= 3);
    const hits = rx.forPath(path);
    assert.deepEqual(hits.map((x) => x.headers['x-medplum-interaction']).sort(), ['create', 'delete', 'update']);
    const del = hits.find((x) => x.headers['x-medplum-interaction'] === 'delete');
    assert.equal(del.body, '{}');
    assert.equal(del.headers['x-medplum-deleted-resource'], `Observation/${created.id}`);
    assert.equal(del.headers['x-signature'], hmacHex(secret, '{}'));
  });

  test('several supported-interaction extensions are honoured (create + delete, not update)', async () => {
    const { tag, path, criteria } = scenario();
    await subscribe(path, criteria, [
      { url: EXT.interaction, valueCode: 'create' },
      { url: EXT.interaction, valueCode: 'delete' },
    ]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await svc.put(`Observation/${created.id}`, { ...created, status: 'final' });
    await admin.del(`Observation/${created.id}`);
    await rx.waitFor(() => rx.forPath(path).length >= 2);
    await sleep(300);
    assert.deepEqual(rx.forPath(path).map((x) => x.headers['x-medplum-interaction']).sort(), ['create', 'delete']);
  });

  test('FHIRPath criteria with %previous / %current fire only on exactly true', async () => {
    const { tag, path, criteria } = scenario();
    await subscribe(path, criteria, [
      {
        url: EXT.fhirPath,
        valueString: "%current.status = 'final' and (%previous.status.exists().not() or %previous.status != 'final')",
      },
    ]);
    const a = (await svc.post('Observation', obs(tag))).body; // preliminary: false
    const a2 = (await svc.put(`Observation/${a.id}`, { ...a, status: 'final' })).body; // becomes final: true
    await svc.put(`Observation/${a.id}`, { ...a2, note: [{ text: 'still final' }] }); // final -> final: false
    const b = (await svc.post('Observation', obs(tag, { status: 'final' }))).body; // created final, %previous = {}: true
    await rx.waitFor(() => rx.forPath(path).length >= 2);
    await sleep(300);
    const hits = rx.forPath(path).map((x) => JSON.parse(x.body));
    assert.equal(hits.length, 2);
    assert.deepEqual(hits.map((r) => r.meta.versionId).sort(), [a2.meta.versionId, b.meta.versionId].sort());
  });

  test('identical-content update: no new version, no notification', async () => {
    const { tag, path, criteria } = scenario();
    await subscribe(path, criteria);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    const same = await svc.put(`Observation/${created.id}`, created);
    assert.equal(same.body.meta.versionId, created.meta.versionId);
    await sleep(300);
    assert.equal(rx.forPath(path).length, 1);
  });

  test('deliveries run in parallel (a slow receiver does not serialise events)', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? { status: 200, delayMs: 400 } : 200));
    await subscribe(path, criteria);
    const t0 = Date.now();
    await Promise.all([1, 2, 3, 4, 5].map(() => svc.post('Observation', obs(tag))));
    await rx.waitFor(() => rx.forPath(path).length >= 5, 3000);
    const spread = Math.max(...rx.forPath(path).map((x) => x.time)) - t0;
    assert.ok(spread < 400, `all five POSTs started before the first answer (${spread} ms)`);
    await sleep(450);
    rx.setResponder(() => 200);
  });

  test('criteria search string: token/reference match, other resource types ignored', async () => {
    const { tag, path } = scenario();
    await subscribe(path, `Observation?code=urn:test:sub|${tag}&subject=Patient/patient-portal-pat`);
    await svc.post('Observation', obs(tag)); // no subject: no match
    await svc.post('Observation', obs(tag, { subject: { reference: 'Patient/patient-portal-pat' } }));
    await svc.post('ServiceRequest', {
      resourceType: 'ServiceRequest',
      status: 'active',
      intent: 'proposal',
      code: { coding: [{ system: 'urn:test:sub', code: tag }] },
      subject: { reference: 'Patient/patient-portal-pat' },
    });
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    await sleep(300);
    assert.equal(rx.forPath(path).length, 1);
    assert.equal(JSON.parse(rx.forPath(path)[0].body).subject.reference, 'Patient/patient-portal-pat');
  });
});

describe('failures, retries and AuditEvents', () => {
  test('max-attempts 2: three POSTs with doubling backoff, one AuditEvent per attempt', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? 500 : 200));
    const sub = await subscribe(path, criteria, [{ url: EXT.maxAttempts, valueInteger: 2 }]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 3, 5000);
    await sleep(RETRY_BASE * 6);
    const hits = rx.forPath(path);
    assert.equal(hits.length, 3, 'first POST + 2 retries');
    const gap1 = hits[1].time - hits[0].time;
    const gap2 = hits[2].time - hits[1].time;
    assert.ok(gap1 >= RETRY_BASE * 0.85 && gap1 < RETRY_BASE * 2, `first retry after ~${RETRY_BASE} ms (got ${gap1})`);
    assert.ok(gap2 >= RETRY_BASE * 2 * 0.85 && gap2 < RETRY_BASE * 4, `second retry after ~${RETRY_BASE * 2} ms (got ${gap2})`);

    const events = await auditEventsFor(created);
    assert.equal(events.length, 3);
    for (const ae of events) {
      assert.equal(ae.type.code, 'transmit');
      assert.equal(ae.outcome, '4');
      assert.equal(ae.source.observer.reference, `Subscription/${sub.id}`);
      assert.deepEqual(ae.entity.map((e) => e.what.reference), [`Observation/${created.id}`, `Subscription/${sub.id}`]);
      assert.ok(ae.period.start && ae.period.end);
    }
    assert.deepEqual(events.map((e) => e.outcomeDesc).sort(), [0, 1, 2].map((i) => `Attempt ${i} received status 500`));
    rx.setResponder(() => 200);
  });

  test('default max-attempts: 5 POSTs in all (first + 4 retries), then dropped', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? 503 : 200));
    await subscribe(path, criteria);
    await svc.post('Observation', obs(tag));
    await rx.waitFor(() => rx.forPath(path).length >= 5, 8000);
    await sleep(RETRY_BASE * 8 * 1.3);
    assert.equal(rx.forPath(path).length, 5);
    rx.setResponder(() => 200);
  });

  test('a retry is dropped when the resource has a newer version', async () => {
    const { tag, path, criteria } = scenario();
    let firstVersion;
    rx.setResponder((e) => (e.path === path && JSON.parse(e.body).meta.versionId === firstVersion ? 500 : 200));
    await subscribe(path, criteria, [{ url: EXT.maxAttempts, valueInteger: 3 }]);
    const created = (await svc.post('Observation', obs(tag))).body;
    firstVersion = created.meta.versionId;
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    const v2 = (await svc.put(`Observation/${created.id}`, { ...created, status: 'final' })).body;
    await sleep(RETRY_BASE * 8);
    const versions = rx.forPath(path).map((e) => JSON.parse(e.body).meta.versionId);
    assert.deepEqual(versions.filter((v) => v === firstVersion).length, 1, 'the failed v1 event is not retried');
    assert.ok(versions.includes(v2.meta.versionId));
    const stats = await (await fetch(srv.baseUrl + '_devserver/stats')).json();
    assert.ok(stats.notifications.stale_retries_dropped >= 1);
    rx.setResponder(() => 200);
  });

  test('success-codes extension and 3xx success; audit destination "log" writes no AuditEvent resource', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? 404 : e.path === path + '-3xx' ? 302 : 200));
    await subscribe(path, criteria, [
      { url: EXT.successCodes, valueString: '200-299,404' },
      { url: EXT.maxAttempts, valueInteger: 1 },
    ]);
    await subscribe(path + '-3xx', criteria, [
      { url: EXT.maxAttempts, valueInteger: 1 },
      { url: EXT.auditDestination, valueCode: 'log' },
    ]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 1 && rx.forPath(path + '-3xx').length >= 1);
    await sleep(RETRY_BASE * 2);
    assert.equal(rx.forPath(path).length, 1, '404 counted as success: no retry');
    assert.equal(rx.forPath(path + '-3xx').length, 1, '302 is a success by default');
    const events = await auditEventsFor(created);
    assert.equal(events.length, 1, 'the log-destination subscription writes none');
    assert.equal(events[0].outcome, '0');
    assert.equal(events[0].outcomeDesc, 'Attempt 0 received status 404');
    rx.setResponder(() => 200);
  });

  test('timeout counts as a failed attempt', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? { status: 200, delayMs: 3000 } : 200));
    await subscribe(path, criteria, [{ url: EXT.maxAttempts, valueInteger: 0 }]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await sleep(1300);
    const events = await auditEventsFor(created);
    assert.equal(events.length, 1);
    assert.equal(events[0].outcome, '4');
    assert.match(events[0].outcomeDesc, /^Attempt 0 received error .*TimeoutError/);
    rx.setResponder(() => 200);
  });

  test('auto-disable after consecutive exhausted events: status off, error, AuditEvent outcome 8', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? 500 : 200));
    const sub = await subscribe(path, criteria, [{ url: EXT.maxAttempts, valueInteger: 0 }]);
    await svc.post('Observation', obs(tag));
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    await sleep(100);
    assert.equal((await svc.get(`Subscription/${sub.id}`)).body.status, 'active', 'one exhausted event is not enough');
    await svc.post('Observation', obs(tag));
    await rx.waitFor(() => rx.forPath(path).length >= 2);
    await sleep(200);
    const after = (await svc.get(`Subscription/${sub.id}`)).body;
    assert.equal(after.status, 'off');
    assert.match(after.error, /^Automatically disabled after 2 consecutive failed events/);
    const events = await auditEventsFor(sub);
    const disabled = events.filter((e) => e.outcome === '8');
    assert.equal(disabled.length, 1);
    assert.equal(disabled[0].source.observer.reference, `Subscription/${sub.id}`);
    await svc.post('Observation', obs(tag));
    await sleep(300);
    assert.equal(rx.forPath(path).length, 2, 'a disabled subscription is silent');
    rx.setResponder(() => 200);
  });
});

describe('transactions and $resend', () => {
  test('a rolled-back transaction fires nothing; a committed one fires after commit', async () => {
    const { tag, path, criteria } = scenario();
    await subscribe(path, criteria);
    const failing = await svc.post('', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: obs(tag), request: { method: 'POST', url: 'Observation' } },
        { resource: obs(tag, { status: 'bogus' }), request: { method: 'POST', url: 'Observation' } },
      ],
    });
    assert.equal(failing.status, 400);
    await sleep(300);
    assert.equal(rx.forPath(path).length, 0);
    const ok = await svc.post('', {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: obs(tag), request: { method: 'POST', url: 'Observation' } },
        { resource: obs(tag, { status: 'final' }), request: { method: 'POST', url: 'Observation' } },
      ],
    });
    assert.equal(ok.status, 200);
    await rx.waitFor(() => rx.forPath(path).length >= 2);
  });

  test('$resend (project admin only) re-sends to the named subscription', async () => {
    const { tag, path, criteria } = scenario();
    const sub = await subscribe(path, criteria);
    const other = await subscribe(path + '-other', criteria);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 1 && rx.forPath(path + '-other').length >= 1);
    const denied = await svc.post(`Observation/${created.id}/$resend`, { subscription: `Subscription/${sub.id}`, interaction: 'update' });
    assert.equal(denied.status, 403);
    const res = await admin.post(`Observation/${created.id}/$resend`, { subscription: `Subscription/${sub.id}`, interaction: 'update' });
    assert.equal(res.status, 200);
    await rx.waitFor(() => rx.forPath(path).length >= 2);
    await sleep(200);
    assert.equal(rx.forPath(path)[1].headers['x-medplum-interaction'], 'update');
    assert.equal(rx.forPath(path + '-other').length, 1);
    assert.ok(other.id);
  });
});
