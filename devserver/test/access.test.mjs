// facts §3: ProjectMembership + AccessPolicy — resource types, readonly/interaction, criteria with
// %patient, writeConstraint (%before/%after) -> 403, X-Medplum-On-Behalf-Of for admin clients,
// and the partner posting Synthea bundles.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, client, pkcePair, startServer, token } from './helpers.mjs';

const SYNTHEA = '/work/shared/data/synthea/';
let srv, svc, admin, partner;

async function userToken(user) {
  const { verifier, challenge } = pkcePair();
  const params = {
    response_type: 'code',
    client_id: 'starvit-clinician-app',
    redirect_uri: 'http://127.0.0.1:8765/callback',
    scope: 'openid',
    state: 's',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    user,
  };
  const res = await fetch(srv.baseUrl + 'oauth2/authorize', { method: 'POST', body: new URLSearchParams(params), redirect: 'manual' });
  const code = new URL(res.headers.get('location')).searchParams.get('code');
  const tok = await fetch(srv.baseUrl + 'oauth2/token', {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, client_id: 'starvit-clinician-app' }),
  });
  return client(srv.baseUrl, (await tok.json()).access_token);
}

before(async () => {
  srv = await startServer();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
  partner = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
});
after(async () => {
  await srv?.stop();
});

const task = (status, extra = {}) => ({
  resourceType: 'Task',
  status,
  intent: 'proposal',
  code: { text: 'Review suggestion' },
  for: { reference: 'Patient/patient-portal-pat' },
  ...extra,
});

describe('service policy', () => {
  test('resource types: may read Patients, may not create them', async () => {
    assert.equal((await svc.get('Patient/patient-portal-pat')).status, 200);
    assert.equal((await svc.post('Patient', { resourceType: 'Patient' })).status, 403);
    assert.equal((await svc.get('ProjectMembership')).status, 403);
  });

  test('writeConstraint: the service may not complete its own Tasks (403), a clinician may', async () => {
    assert.equal((await svc.post('Task', task('completed'))).status, 403);
    const created = await svc.post('Task', task('requested'));
    assert.equal(created.status, 201);
    const complete = await svc.put(`Task/${created.body.id}`, { ...created.body, status: 'completed' });
    assert.equal(complete.status, 403);
    assert.equal(complete.body.issue[0].code, 'forbidden');
    const patched = await svc.patch(`Task/${created.body.id}`, [{ op: 'replace', path: '/status', value: 'accepted' }]);
    assert.equal(patched.status, 403);
    const cancel = await svc.put(`Task/${created.body.id}`, { ...created.body, status: 'cancelled' });
    assert.equal(cancel.status, 200);

    const alice = await userToken('clinician-alice');
    const t2 = (await svc.post('Task', task('ready'))).body;
    const done = await alice.put(`Task/${t2.id}`, { ...t2, status: 'completed' }, { 'X-Medplum': 'extended' });
    assert.equal(done.status, 200);
    assert.equal(done.body.meta.author.reference, 'Practitioner/clinician-alice');
  });
});

describe('other identities', () => {
  test('researcher is read-only', async () => {
    const ravi = await userToken('researcher-ravi');
    assert.equal((await ravi.get('Patient/patient-portal-pat')).status, 200);
    assert.equal((await ravi.post('Observation', { resourceType: 'Observation', status: 'final', code: { text: 'x' } })).status, 403);
    assert.equal((await ravi.post('Task', task('requested'))).status, 403);
  });

  test('patient portal user sees only their own compartment (%patient criteria)', async () => {
    const mine = await svc.post('Observation', {
      resourceType: 'Observation',
      status: 'final',
      code: { text: 'mine' },
      subject: { reference: 'Patient/patient-portal-pat' },
    });
    const other = await svc.post('Observation', { resourceType: 'Observation', status: 'final', code: { text: 'other' } });
    const pat = await userToken('patient-portal-pat');
    assert.equal((await pat.get(`Observation/${mine.body.id}`)).status, 200);
    assert.equal((await pat.get(`Observation/${other.body.id}`)).status, 404);
    const search = await pat.get('Observation?_count=100');
    assert.ok(search.body.entry.every((e) => e.resource.subject?.reference === 'Patient/patient-portal-pat'));
    assert.equal((await pat.get('Patient/patient-portal-pat')).status, 200);
    const others = await pat.get('Patient?_count=100');
    assert.deepEqual(others.body.entry.map((e) => e.resource.id), ['patient-portal-pat']);
  });
});

describe('X-Medplum-On-Behalf-Of', () => {
  test('admin client acting for a clinician: runs under her policy, meta.author is her profile', async () => {
    const t = (await svc.post('Task', task('ready'))).body;
    for (const header of ['Practitioner/clinician-bob', 'pm-clinician-bob']) {
      const res = await admin.put(`Task/${t.id}`, { ...t, status: 'in-progress', description: header }, {
        'X-Medplum-On-Behalf-Of': header,
        'X-Medplum': 'extended',
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.meta.author.reference, 'Practitioner/clinician-bob');
    }
    const denied = await admin.post('Patient', { resourceType: 'Patient' }, { 'X-Medplum-On-Behalf-Of': 'Practitioner/clinician-bob' });
    assert.equal(denied.status, 403, 'clinician policy applies');
    const notAdmin = await svc.get('Task', { 'X-Medplum-On-Behalf-Of': 'Practitioner/clinician-bob' });
    assert.equal(notAdmin.status, 403, 'only project-admin clients may use On-Behalf-Of');
  });
});

describe('integration partner', () => {
  test('posts Synthea support bundles and a patient transaction', async () => {
    for (const f of ['0-hospitalInformation1625911868739.json', '0-practitionerInformation1625911868739.json', '0f2074a0-4173-1a32-988f-5316d7f1cbbe.json']) {
      const raw = fs.readFileSync(SYNTHEA + f, 'utf8');
      const res = await partner.post('', raw);
      assert.equal(res.status, 200, f + ': ' + JSON.stringify(res.body).slice(0, 300));
      const failed = res.body.entry.filter((e) => !/^20[01]/.test(e.response.status));
      assert.deepEqual(failed, [], f);
    }
    const patients = await partner.get('Patient?_count=1&_total=accurate&identifier=https://github.com/synthetichealth/synthea|0f2074a0-4173-1a32-988f-5316d7f1cbbe');
    assert.equal(patients.body.total, 1);
    assert.equal((await partner.post('Task', task('requested'))).status, 403);
  });
});
