// Decision integrity in the seeded AccessPolicies (docs/backend/SECURITY.md, "Decision
// integrity"): who is a clinician cannot be changed by the partner, the service, a patient or a
// researcher (writeConstraint on the state before AND after a write; no delete interaction);
// a clinician cannot strip a review Task of the tag or identifier the review Subscription
// relies on, nor reopen a decided Task; the service may put back a decided status that a
// person set, never decide an open Task itself. And, as on Medplum, an update's meta is the
// candidate's own: an update without meta.tag drops the stored tags.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { CLIENTS, USERS, client, startServer, token, userToken } from './helpers.mjs';

const TAG = { system: 'https://fhir.starvit.health/CodeSystem/tags', code: 'starvit-generated' };
const TASK_ID = { system: 'https://fhir.starvit.health/sid/review-task', value: 'review-1' };
const DOCTOR = { system: 'http://snomed.info/sct', code: '158965000' };
let srv, svc, admin, partner, alice, pat, ravi;

async function signIn(user) {
  return client(srv.baseUrl, (await userToken(srv.baseUrl, user)).access_token);
}

before(async () => {
  srv = await startServer();
  svc = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.service)).access_token);
  admin = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.admin)).access_token);
  partner = client(srv.baseUrl, (await token(srv.baseUrl, CLIENTS.partner)).access_token);
  alice = await signIn(USERS.alice);
  pat = await signIn(USERS.pat);
  ravi = await signIn(USERS.ravi);
});
after(async () => {
  await srv?.stop();
});

const role = (practitioner, coding, extra = {}) => ({
  resourceType: 'PractitionerRole',
  active: true,
  practitioner: { reference: practitioner },
  code: [{ coding: [coding] }],
  ...extra,
});

const reviewTask = (status = 'requested', extra = {}) => ({
  resourceType: 'Task',
  meta: { tag: [TAG] },
  identifier: [TASK_ID],
  status,
  intent: 'proposal',
  code: { text: 'Review suggestion' },
  for: { reference: 'Patient/patient-portal-pat' },
  ...extra,
});

describe('who is a clinician cannot be changed by partner, service, patient or researcher', () => {
  const SEEDED = 'PractitionerRole/role-clinician-alice';

  async function seededRole() {
    return (await admin.get(SEEDED)).body;
  }

  for (const [name, who] of [
    ['partner', () => partner],
    ['service', () => svc],
    ['patient', () => pat],
    ['researcher', () => ravi],
  ]) {
    test(`${name}: create, update, patch and delete of a clinician role are refused`, async () => {
      const writer = who();
      const before = await seededRole();
      const created = await writer.post('PractitionerRole', role('Practitioner/ops-olivia', DOCTOR));
      assert.equal(created.status, 403, 'grant by create');
      const demoted = await writer.put(SEEDED, { ...before, code: [{ text: 'Nurse' }] });
      assert.ok([403, 404].includes(demoted.status), `demote by update: ${demoted.status}`);
      const inactive = await writer.put(SEEDED, { ...before, active: false });
      assert.ok([403, 404].includes(inactive.status), `deactivate by update: ${inactive.status}`);
      const patched = await writer.patch('PractitionerRole/role-clinician-alice', [{ op: 'remove', path: '/code' }]);
      assert.ok([403, 404].includes(patched.status), `demote by patch: ${patched.status}`);
      const moved = await writer.patch('PractitionerRole/role-clinician-alice', [
        { op: 'replace', path: '/practitioner/reference', value: 'Practitioner/ops-olivia' },
      ]);
      assert.ok([403, 404].includes(moved.status), `hand over by patch: ${moved.status}`);
      const deleted = await writer.del('PractitionerRole/role-clinician-alice');
      assert.ok([403, 404].includes(deleted.status), `delete: ${deleted.status}`);
      const after = await seededRole();
      assert.equal(after.meta.versionId, before.meta.versionId, 'the seeded role is untouched');
    });
  }

  test('partner: loads roles without the clinician code, never adds it to one', async () => {
    const loaded = await partner.post('PractitionerRole', role('Practitioner/ops-olivia', { system: 'http://nucc.org/provider-taxonomy', code: '208D00000X' }));
    assert.equal(loaded.status, 201, 'a Synthea-like role is loaded');
    const edited = await partner.put(`PractitionerRole/${loaded.body.id}`, { ...loaded.body, active: false });
    assert.equal(edited.status, 200, 'a role without the code may be updated');
    const promoted = await partner.put(`PractitionerRole/${loaded.body.id}`, { ...loaded.body, code: [{ coding: [DOCTOR] }] });
    assert.equal(promoted.status, 403, 'adding the code by update is refused');
    const patched = await partner.patch(`PractitionerRole/${loaded.body.id}`, [
      { op: 'add', path: '/code/-', value: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/practitioner-role', code: 'doctor' }] } },
    ]);
    assert.equal(patched.status, 403, 'adding the code by patch is refused');
    assert.equal((await partner.del(`PractitionerRole/${loaded.body.id}`)).status, 403, 'the partner deletes nothing');
  });

  test('partner: may load Practitioners but not (de)activate an existing one', async () => {
    const alicePerson = (await admin.get('Practitioner/clinician-alice')).body;
    const off = await partner.put('Practitioner/clinician-alice', { ...alicePerson, active: false });
    assert.equal(off.status, 403, 'deactivating a clinician is refused');
    const patched = await partner.patch('Practitioner/clinician-alice', [{ op: 'add', path: '/active', value: false }]);
    assert.equal(patched.status, 403);
    const created = await partner.post('Practitioner', { resourceType: 'Practitioner', active: true, name: [{ family: 'Synthea' }] });
    assert.equal(created.status, 201);
    const renamed = await partner.put(`Practitioner/${created.body.id}`, { ...created.body, name: [{ family: 'Renamed' }] });
    assert.equal(renamed.status, 200, 'other edits are allowed');
    const inactive = await partner.put(`Practitioner/${created.body.id}`, { ...renamed.body, active: false });
    assert.equal(inactive.status, 403);
  });
});

describe('review Tasks: the clinician policy keeps them visible and decided', () => {
  test('an update without the tag or the identifier (a bare Task) is refused', async () => {
    const t = (await svc.post('Task', reviewTask())).body;
    const bare = { resourceType: 'Task', id: t.id, status: 'completed', intent: 'proposal', for: t.for, code: t.code };
    assert.equal((await alice.put(`Task/${t.id}`, bare)).status, 403, 'no tag, no identifier');
    const untagged = { ...t, status: 'completed', meta: { tag: [] } };
    assert.equal((await alice.put(`Task/${t.id}`, untagged)).status, 403, 'no tag');
    const unidentified = { ...t, status: 'completed' };
    delete unidentified.identifier;
    assert.equal((await alice.put(`Task/${t.id}`, unidentified)).status, 403, 'no identifier');
    const other = { ...t, status: 'completed', identifier: [{ ...TASK_ID, value: 'another' }] };
    assert.equal((await alice.put(`Task/${t.id}`, other)).status, 403, 'another identifier');
    const removedByPatch = await alice.patch(`Task/${t.id}`, [{ op: 'remove', path: '/meta/tag' }]);
    assert.equal(removedByPatch.status, 403);
    const decided = await alice.put(`Task/${t.id}`, { ...t, status: 'completed' });
    assert.equal(decided.status, 200, 'the ordinary full PUT of the app keeps both');
    assert.deepEqual(decided.body.meta.tag, [TAG]);
  });

  test('as on Medplum, an update without meta.tag drops the stored tag (an admin is not constrained)', async () => {
    const t = (await svc.post('Task', reviewTask())).body;
    const bare = { ...t };
    delete bare.meta;
    const res = await admin.put(`Task/${t.id}`, { ...bare, status: 'completed' });
    assert.equal(res.status, 200);
    assert.equal(res.body.meta.tag, undefined);
    assert.equal((await admin.get(`Task?_tag=${TAG.system}|${TAG.code}&_id=${t.id}`)).body.entry, undefined);
  });

  test('a decided Task is not reopened; a later decision may still change it', async () => {
    const t = (await svc.post('Task', reviewTask())).body;
    const done = (await alice.put(`Task/${t.id}`, { ...t, status: 'completed' })).body;
    assert.equal((await alice.put(`Task/${t.id}`, { ...done, status: 'requested' })).status, 403);
    assert.equal((await alice.put(`Task/${t.id}`, { ...done, status: 'in-progress' })).status, 403);
    assert.equal((await alice.put(`Task/${t.id}`, { ...done, status: 'rejected' })).status, 200);
  });
});

describe('the service puts back a decision that stands, never decides', () => {
  test('completed over a rejection a person set: allowed; over an open or its own status: refused', async () => {
    const t = (await svc.post('Task', reviewTask())).body;
    assert.equal((await svc.put(`Task/${t.id}`, { ...t, status: 'completed' })).status, 403, 'open -> completed');
    const approved = (await alice.put(`Task/${t.id}`, { ...t, status: 'completed' })).body;
    const rejected = (await alice.put(`Task/${t.id}`, { ...approved, status: 'rejected' })).body;
    const restored = await svc.put(`Task/${t.id}`, { ...rejected, status: 'completed', note: [{ text: 'approved first' }] });
    assert.equal(restored.status, 200, 'completed over a clinician rejection');
    const back = await svc.put(`Task/${t.id}`, { ...restored.body, status: 'rejected' });
    assert.equal(back.status, 403, 'not over its own write');

    const own = (await svc.post('Task', reviewTask())).body;
    const cancelled = (await svc.put(`Task/${own.id}`, { ...own, status: 'cancelled' })).body;
    assert.equal((await svc.put(`Task/${own.id}`, { ...cancelled, status: 'completed' })).status, 403, 'cancel then complete: refused');
    assert.equal((await svc.put(`Task/${own.id}`, { ...cancelled, status: 'accepted' })).status, 403);
  });
});
