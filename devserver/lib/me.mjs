// GET /auth/me, as Medplum's server answers it to a signed-in user (packages/server/src/auth/me.ts):
// the user, the project, the membership the login uses (id, user, profile, admin), the profile
// resource and the effective AccessPolicy. The effective policy lists the AccessPolicies it was
// built from in `basedOn`, which is what a service reads to decide a user's role.
import { authenticate, buildAccessPolicy } from './auth.mjs';

function basedOn(membership) {
  const refs = [];
  if (membership.accessPolicy?.reference) {
    refs.push({ reference: membership.accessPolicy.reference });
  }
  for (const access of membership.access ?? []) {
    if (access.policy?.reference) {
      refs.push({ reference: access.policy.reference });
    }
  }
  return refs;
}

/** @returns the /auth/me body for the bearer token (throws Medplum's 401 outcome otherwise). */
export function authMe(app, authorization) {
  const ctx = authenticate(app, authorization);
  const membership = ctx.membership;
  const [profileType, profileId] = ctx.profile.split('/');
  const profile = app.store.get(profileType, profileId) ?? { resourceType: profileType, id: profileId };
  const userRef = membership.user?.reference ?? '';
  const [userType, userId] = userRef.split('/');
  const user = userType === 'User' ? app.store.get('User', userId) : undefined;
  const project = app.store.get('Project', ctx.projectId);
  const policy = buildAccessPolicy(app.store, membership);
  const refs = basedOn(membership);
  return {
    user: user ? { resourceType: 'User', id: user.id, email: user.email } : { reference: userRef },
    project: project ? { resourceType: 'Project', id: project.id, name: project.name } : { id: ctx.projectId },
    membership: {
      resourceType: 'ProjectMembership',
      id: membership.id,
      user: membership.user,
      profile: membership.profile,
      admin: Boolean(membership.admin),
    },
    profile,
    accessPolicy: refs.length ? { ...policy, basedOn: refs } : policy,
  };
}
