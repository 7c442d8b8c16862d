// facts §3 and §7: ProjectMembership + AccessPolicy — resource types, readonly/interaction, criteria
// with %patient, writeConstraint (%before/%after) -> 403, X-Medplum-On-Behalf-Of for admin clients
// (meta.author = the real caller, meta.onBehalfOf = the impersonated profile), and the partner
// posting Synthea bundles.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, USERS, client, devserver, startServer, token, userToken } from './helpers.mjs';

const SYNTHEA = '/work/shared/data/synthea/';
let srv, svc, admin, partner;

async function signIn(user) {
  return client(srv.baseUrl, (await userToken(srv.baseUrl, user)).access_token);
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

    const alice = await signIn(USERS.alice);
    const t2 = (await svc.post('Task', task('ready'))).body;
    const done = await alice.put(`Task/${t2.id}`, { ...t2, status: 'completed' }, { 'X-Medplum': 'extended' });
    assert.equal(done.status, 200);
    assert.equal(done.body.meta.author.reference, 'Practitioner/clinician-alice');
  });
});

describe('other identities', () => {
  test('researcher is read-only', async () => {
    const ravi = await signIn(USERS.ravi);
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
    const pat = await signIn(USERS.pat);
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
  test('admin client acting for a clinician: her policy; meta.author = the admin client, meta.onBehalfOf = her', async () => {
    const t = (await svc.post('Task', task('ready'))).body;
    let version = t;
    for (const header of ['Practitioner/clinician-bob', 'ProjectMembership/pm-clinician-bob']) {
      const res = await admin.put(`Task/${t.id}`, { ...version, status: 'in-progress', description: header }, {
        'X-Medplum-On-Behalf-Of': header,
        'X-Medplum': 'extended',
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.meta.author.reference, 'ClientApplication/ops-admin', 'author is the real caller');
      assert.equal(res.body.meta.onBehalfOf.reference, 'Practitioner/clinician-bob');
      version = res.body;
    }
    // Without X-Medplum: extended, author/project/compartment are hidden, onBehalfOf is not.
    const plain = await svc.get(`Task/${t.id}`);
    assert.equal(plain.body.meta.author, undefined);
    assert.equal(plain.body.meta.project, undefined);
    assert.equal(plain.body.meta.compartment, undefined);
    assert.equal(plain.body.meta.onBehalfOf.reference, 'Practitioner/clinician-bob');
    // A later write without the header drops meta.onBehalfOf.
    const own = await admin.put(`Task/${t.id}`, { ...plain.body, description: 'own write' });
    assert.equal(own.status, 200);
    assert.equal(own.body.meta.onBehalfOf, undefined);

    const denied = await admin.post('Patient', { resourceType: 'Patient' }, { 'X-Medplum-On-Behalf-Of': 'Practitioner/clinician-bob' });
    assert.equal(denied.status, 403, 'clinician policy applies');
    const notAdmin = await svc.get('Task', { 'X-Medplum-On-Behalf-Of': 'Practitioner/clinician-bob' });
    assert.equal(notAdmin.status, 403, 'only project-admin clients may use On-Behalf-Of');
    const unknown = await admin.get('Task', { 'X-Medplum-On-Behalf-Of': 'Practitioner/nobody' });
    assert.equal(unknown.status, 403);
    const bareId = await admin.get('Task', { 'X-Medplum-On-Behalf-Of': 'pm-clinician-bob' });
    assert.equal(bareId.status, 403, 'a bare membership id is read as a profile reference and matches nothing');
  });
});

describe('integration partner', () => {
  const BP = 'http://hl7.org/fhir/StructureDefinition/bp';

  test('Synthea support bundles: conditional creates cost 140 each, the default quota runs out mid-batch', async () => {
    const raw = fs.readFileSync(SYNTHEA + '0-hospitalInformation1625911868739.json', 'utf8');
    const res = await partner.post('', raw);
    assert.equal(res.status, 200);
    const statuses = res.body.entry.map((e) => e.response.status);
    const firstThrottled = statuses.indexOf('429');
    // 388 conditional creates x 140 points > 50,000. The bundle's identity searches (20 each) all run
    // first, then each entry's conditional create (search 20 + write 100): entry 352 is refused.
    assert.equal(firstThrottled, Math.floor((50000 - 388 * 20) / 120));
    assert.ok(statuses.slice(0, firstThrottled).every((s) => s === '201'));
    assert.ok(statuses.slice(firstThrottled).every((s) => s === '429'), 'every later entry is refused too');
    assert.equal(res.body.entry[firstThrottled].response.outcome.issue[0].code, 'throttled');
    assert.match(res.headers.get('ratelimit'), /"fhirInteractions";r=0;t=\d+/);
    assert.equal((await partner.get('Patient?_count=1')).status, 429, 'the membership stays blocked until the window resets');
  });

  test('with a raised quota: support bundles load; the patient transaction fails on the bp profile as a whole', async () => {
    await devserver(srv.baseUrl, 'config', { fhirQuota: 10_000_000 });
    await devserver(srv.baseUrl, 'reset-quota', {});
    for (const f of ['0-hospitalInformation1625911868739.json', '0-practitionerInformation1625911868739.json']) {
      const res = await partner.post('', fs.readFileSync(SYNTHEA + f, 'utf8'));
      assert.equal(res.status, 200, f + ': ' + JSON.stringify(res.body).slice(0, 300));
      const failed = res.body.entry.filter((e) => !/^20[01]/.test(e.response.status));
      assert.deepEqual(failed, [], f);
    }
    const patientFile = JSON.parse(fs.readFileSync(SYNTHEA + '0f2074a0-4173-1a32-988f-5316d7f1cbbe.json', 'utf8'));
    const bpCount = patientFile.entry.filter((e) => e.resource.meta?.profile?.includes(BP)).length;
    assert.ok(bpCount > 0, 'the Synthea patient has BP Observations declaring the bp profile');
    const rejected = await partner.post('', patientFile);
    assert.equal(rejected.status, 400);
    assert.match(JSON.stringify(rejected.body), /Incorrect number of values provided for slice 'SystolicBP'/);
    const identifier = 'identifier=https://github.com/synthetichealth/synthea|0f2074a0-4173-1a32-988f-5316d7f1cbbe';
    assert.equal((await partner.get(`Patient?_count=1&_total=accurate&${identifier}`)).body.total, 0, 'nothing of the transaction is stored');

    // Without the bp profile declaration (vital-signs stays declared) the same data is accepted.
    for (const e of patientFile.entry) {
      if (e.resource.meta?.profile) {
        e.resource.meta.profile = e.resource.meta.profile.filter((p) => p !== BP);
      }
    }
    const accepted = await partner.post('', patientFile);
    assert.equal(accepted.status, 200, JSON.stringify(accepted.body).slice(0, 300));
    assert.equal((await partner.get(`Patient?_count=1&_total=accurate&${identifier}`)).body.total, 1);
    assert.equal((await partner.post('Task', task('requested'))).status, 403);
    await devserver(srv.baseUrl, 'config', { fhirQuota: 50000 });
  });
});
