// facts §7: MEDPLUM_COMPAT=5.0 behaves like the 5.0.10 server that was observed — only the first
// subscription-supported-interaction extension counts, no auto-disable, no audit-event destination,
// and delivery retries doubling from 1 s (the default retry base) without jitter.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, EXT, client, sleep, startReceiver, startServer, subscription, token } from './helpers.mjs';

let srv, rx, svc, admin;

before(async () => {
  // No SUBSCRIPTION_RETRY_BASE_MS: the default (1 s) is under test here.
  srv = await startServer({ MEDPLUM_COMPAT: '5.0', SUBSCRIPTION_AUTO_DISABLE_AFTER: '1', SUBSCRIPTION_TIMEOUT_MS: '800' });
  rx = await startReceiver();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
});
after(async () => {
  await srv?.stop();
  await rx?.close();
});

function scenario() {
  const tag = `c-${crypto.randomUUID().slice(0, 8)}`;
  return { tag, path: '/hook/' + tag, criteria: `Observation?code=urn:test:compat|${tag}` };
}
const obs = (tag, extra = {}) => ({
  resourceType: 'Observation',
  status: 'preliminary',
  code: { coding: [{ system: 'urn:test:compat', code: tag }] },
  ...extra,
});

async function subscribe(path, criteria, extension = []) {
  const res = await svc.post('Subscription', subscription(rx.url + path, criteria, extension));
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

describe('MEDPLUM_COMPAT=5.0', () => {
  test('healthcheck reports the emulated version', async () => {
    const health = await (await fetch(srv.baseUrl + 'healthcheck')).json();
    assert.equal(health.version, '5.0.10-devserver');
  });

  test('create, update, delete listed: only the first (create) counts; $resend update delivers nothing', async () => {
    const { tag, path, criteria } = scenario();
    const sub = await subscribe(path, criteria, [
      { url: EXT.interaction, valueCode: 'create' },
      { url: EXT.interaction, valueCode: 'update' },
      { url: EXT.interaction, valueCode: 'delete' },
    ]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 1);
    await svc.put(`Observation/${created.id}`, { ...created, status: 'final' });
    const resend = await admin.post(`Observation/${created.id}/$resend`, { subscription: `Subscription/${sub.id}`, interaction: 'update' });
    assert.equal(resend.status, 200);
    assert.equal((await admin.del(`Observation/${created.id}`)).status, 200);
    await sleep(400);
    assert.deepEqual(rx.forPath(path).map((x) => x.headers['x-medplum-interaction']), ['create']);
  });

  test('no extension: create, update and delete all fire', async () => {
    const { tag, path, criteria } = scenario();
    await subscribe(path, criteria);
    const created = (await svc.post('Observation', obs(tag))).body;
    await svc.put(`Observation/${created.id}`, { ...created, status: 'final' });
    await admin.del(`Observation/${created.id}`);
    await rx.waitFor(() => rx.forPath(path).length >= 3);
    assert.deepEqual(rx.forPath(path).map((x) => x.headers['x-medplum-interaction']).sort(), ['create', 'delete', 'update']);
  });

  test('retries at +1 s, +2 s (doubling, no jitter); no auto-disable; one AuditEvent per attempt even with destination "log"', async () => {
    const { tag, path, criteria } = scenario();
    rx.setResponder((e) => (e.path === path ? 500 : 200));
    const sub = await subscribe(path, criteria, [
      { url: EXT.maxAttempts, valueInteger: 2 },
      { url: EXT.auditDestination, valueCode: 'log' },
    ]);
    const created = (await svc.post('Observation', obs(tag))).body;
    await rx.waitFor(() => rx.forPath(path).length >= 3, 6000);
    const hits = rx.forPath(path);
    const gap1 = hits[1].time - hits[0].time;
    const gap2 = hits[2].time - hits[1].time;
    assert.ok(gap1 >= 1000 && gap1 < 1300, `first retry after 1 s (got ${gap1})`);
    assert.ok(gap2 >= 2000 && gap2 < 2300, `second retry after 2 s (got ${gap2})`);
    await sleep(300);
    const events = (await admin.get(`AuditEvent?entity=Observation/${created.id}&_count=100`)).body.entry ?? [];
    assert.equal(events.length, 3, 'AuditEvent resources despite the "log" destination');
    assert.equal((await svc.get(`Subscription/${sub.id}`)).body.status, 'active', 'exhausted, yet still active');
    rx.setResponder(() => 200);
  });
});
