"""The ops dashboard's sign-in pieces on their own: the role rule, the signed session cookie, the
CSRF and origin checks, the redirect target, the sign-in rate limit and what ``/auth/me`` is
read for."""

from __future__ import annotations

import time

import pytest

from app.integrations.medplum.tokens import AccessTokenVerifier
from app.integrations.medplum.user_sign_in import Membership, authorize_url, membership_of
from app.ops.auth import (
    FixedWindowLimiter,
    OpsAuth,
    OpsSession,
    csrf_matches,
    is_ops,
    safe_next,
    same_origin,
)
from tests.conftest import settings_for_tests

SETTINGS = settings_for_tests(ops_session_secret="unit-secret")
VERIFIER = AccessTokenVerifier(
    jwks_url="http://127.0.0.1:9/.well-known/jwks.json", issuer="http://127.0.0.1:9/"
)


def membership(profile: str, *policies: str, admin: bool = False) -> Membership:
    return Membership(profile, "pm-1", admin, frozenset(policies))


def session(**overrides: object) -> OpsSession:
    values: dict[str, object] = {
        "profile": "Practitioner/ops-olivia",
        "login_id": "login-1",
        "csrf": "csrf-token-1",
        "access_token": "token",
        "expires_at": time.time() + 600,
    }
    values.update(overrides)
    return OpsSession(**values)  # pyright: ignore[reportArgumentType]


def test_ops_are_practitioners_holding_an_ops_policy() -> None:
    assert is_ops(membership("Practitioner/a", "AccessPolicy/ops-policy"), SETTINGS)
    assert not is_ops(membership("Practitioner/a", "AccessPolicy/clinician-policy"), SETTINGS)
    # A project admin without the ops policy is not ops; nor is a client with the policy.
    assert not is_ops(membership("Practitioner/a", admin=True), SETTINGS)
    assert not is_ops(membership("ClientApplication/c", "AccessPolicy/ops-policy"), SETTINGS)
    assert not is_ops(membership("Patient/p", "AccessPolicy/ops-policy"), SETTINGS)
    by_id = settings_for_tests(ops_access_policies="night-ops,AccessPolicy/day-ops")
    assert is_ops(membership("Practitioner/a", "AccessPolicy/night-ops"), by_id)
    assert is_ops(membership("Practitioner/a", "AccessPolicy/day-ops"), by_id)
    assert not is_ops(membership("Practitioner/a", "AccessPolicy/ops-policy"), by_id)


def test_the_role_is_read_from_auth_me_and_nothing_else() -> None:
    me = {
        "user": {"resourceType": "User", "id": "u1", "email": "someone@example.org"},
        "profile": {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "X"}]},
        "membership": {
            "resourceType": "ProjectMembership",
            "id": "pm-1",
            "profile": {"reference": "Practitioner/p1"},
            "admin": True,
            "access": [{"policy": {"reference": "AccessPolicy/extra"}}],
        },
        "accessPolicy": {
            "resourceType": "AccessPolicy",
            "basedOn": [{"reference": "AccessPolicy/ops-policy"}],
            "resource": [{"resourceType": "*"}],
        },
    }
    found = membership_of(me)
    assert found == Membership(
        "Practitioner/p1",
        "pm-1",
        True,
        frozenset({"AccessPolicy/ops-policy", "AccessPolicy/extra"}),
    )
    assert membership_of({}) == Membership(None, None, False, frozenset())


def test_the_authorize_url_asks_for_a_code_with_an_s256_challenge() -> None:
    url = authorize_url(
        "https://medplum.example/",
        client_id="starvit-ops",
        redirect_uri="https://ops.example/ops/callback",
        state="st",
        code_challenge="ch",
    )
    assert url.startswith("https://medplum.example/oauth2/authorize?")
    for part in (
        "response_type=code",
        "client_id=starvit-ops",
        "redirect_uri=https%3A%2F%2Fops.example%2Fops%2Fcallback",
        "state=st",
        "code_challenge=ch",
        "code_challenge_method=S256",
    ):
        assert part in url


def test_the_session_cookie_is_signed_and_expires() -> None:
    auth = OpsAuth(SETTINGS, "unit-secret", VERIFIER)
    original = session()
    cookie = auth.dump_session(original)
    loaded = auth.load_session(cookie)
    assert loaded is not None
    assert (loaded.profile, loaded.login_id, loaded.csrf) == (
        "Practitioner/ops-olivia",
        "login-1",
        "csrf-token-1",
    )
    assert loaded.via == "cookie"
    assert auth.load_session(cookie[:-2] + "xx") is None
    assert OpsAuth(SETTINGS, "another-secret", VERIFIER).load_session(cookie) is None
    assert auth.load_session(auth.dump_session(session(expires_at=time.time() - 1))) is None
    assert auth.load_session(None) is None
    args = auth.cookie_args(60)
    assert args["httponly"] is True
    assert args["samesite"] == "lax"
    assert args["secure"] is False
    https = OpsAuth(
        settings_for_tests(ops_session_secret="s", ops_public_url="https://ops.example"),
        "s",
        VERIFIER,
    )
    assert https.cookie_args(60)["secure"] is True
    assert https.redirect_uri("http://internal:8000") == "https://ops.example/ops/callback"


def test_csrf_and_origin() -> None:
    cookie_session = session()
    assert csrf_matches(cookie_session, "csrf-token-1")
    assert not csrf_matches(cookie_session, "csrf-token-2")
    assert not csrf_matches(cookie_session, None)
    assert not csrf_matches(cookie_session, "")
    # A bearer token is no ambient credential: nothing to forge.
    assert csrf_matches(session(via="bearer"), None)
    base = "http://127.0.0.1:8000"
    assert same_origin(None, base)
    assert same_origin("http://127.0.0.1:8000", base)
    assert not same_origin("http://127.0.0.1:8001", base)
    assert not same_origin("https://evil.example", base)
    assert not same_origin("null", base)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/ops/gaps", "/ops/gaps"),
        ("/ops/", "/ops/"),
        ("https://evil.example/ops/", "/ops/"),
        ("//evil.example/ops/", "/ops/"),
        ("/v1/ops/overview", "/ops/"),
        ("/ops/\\evil", "/ops/"),
        (None, "/ops/"),
    ],
)
def test_only_dashboard_paths_are_followed_after_sign_in(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected


def test_sign_ins_are_limited_per_client_and_minute() -> None:
    limiter = FixedWindowLimiter(3)
    assert [limiter.allow("a", now=60.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=60.0)
    assert limiter.allow("a", now=120.0)
