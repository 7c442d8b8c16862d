// GET /auth/me (Medplum's packages/server/src/auth/me.ts): who a signed-in user is in the project:
// the membership the login uses, the profile and the effective AccessPolicy with the policies it
// is built from (`basedOn`); 401 without a valid token. The ops dashboard reads a user's role here.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { USERS, startServer, userToken } from './helpers.mjs';

let srv;
before(async () => {
  srv = await startServer();
});
after(async () => {
  await srv?.stop();
});

async function me(token) {
  const res = await fetch(srv.baseUrl + 'auth/me', { headers: token ? { Authorization: 'Bearer ' + token } : {} });
  return { status: res.status, body: await res.json() };
}

describe('/auth/me', () => {
  test('the ops user: membership, profile and the ops policy the effective policy is based on', async () => {
    const { access_token } = await userToken(srv.baseUrl, USERS.olivia);
    const { status, body } = await me(access_token);
    assert.equal(status, 200);
    assert.equal(body.membership.resourceType, 'ProjectMembership');
    assert.equal(body.membership.id, 'pm-ops-olivia');
    assert.deepEqual(body.membership.profile, { reference: 'Practitioner/ops-olivia' });
    assert.equal(body.membership.admin, true);
    assert.equal(body.profile.resourceType, 'Practitioner');
    assert.equal(body.profile.id, 'ops-olivia');
    assert.equal(body.user.email, USERS.olivia[0]);
    assert.equal(body.user.passwordHash, undefined);
    assert.deepEqual(body.accessPolicy.basedOn, [{ reference: 'AccessPolicy/ops-policy' }]);
    assert.ok(body.accessPolicy.resource.some((r) => r.resourceType === 'Subscription'));
  });

  test('a clinician is based on the clinician policy', async () => {
    const { access_token } = await userToken(srv.baseUrl, USERS.alice);
    const { status, body } = await me(access_token);
    assert.equal(status, 200);
    assert.equal(body.membership.admin, false);
    assert.deepEqual(body.accessPolicy.basedOn, [{ reference: 'AccessPolicy/clinician-policy' }]);
  });

  test('401 without a valid token', async () => {
    assert.equal((await me()).status, 401);
    assert.equal((await me('not-a-token')).status, 401);
  });
});
