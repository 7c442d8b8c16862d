"""Token sources other than the service's client credentials: a user signed in the way the
Medplum app does (POST /auth/login + PKCE, then the authorization-code exchange), renewed before
expiry, and a static token. Also the client's generic operation call."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import (
    AuthorizationCodeTokenSource,
    MedplumClient,
    MedplumForbidden,
    MedplumSignInRefused,
    MedplumUnavailable,
    PasswordSignIn,
    StaticTokenSource,
    TokenSource,
    pkce_challenge,
    pkce_pair,
    unverified_claims,
)
from tests.unit.integrations.conftest import (
    BASE,
    FHIR,
    TOKEN_URL,
    FakeClock,
    RecordingSleep,
    make_config,
    outcome,
    patient,
)

LOGIN_URL = BASE + "auth/login"
PROFILE_URL = BASE + "auth/profile"
APP = "starvit-clinician-app"
EMAIL = "alice.clinician@starvit.example"
PASSWORD = "correct horse battery staple"


def fake_jwt(**claims: Any) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part(claims)}.c2ln"


ALICE_TOKEN = fake_jwt(profile="Practitioner/alice", aud=APP, login_id="l1")
ALICE_TOKEN_2 = fake_jwt(profile="Practitioner/alice", aud=APP, login_id="l2")


def body_of(request: httpx.Request) -> Any:
    return orjson.loads(request.content)


def form_of(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}


def add_login(httpx_mock: HTTPXMock, code: str = "code-1", **extra: Any) -> None:
    httpx_mock.add_response(
        method="POST", url=LOGIN_URL, json={"login": "login-1", "code": code, **extra}
    )


def add_exchange(
    httpx_mock: HTTPXMock,
    token: str = ALICE_TOKEN,
    *,
    expires_in: int = 3600,
    refresh_token: str | None = None,
) -> None:
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "access_token": token,
        "expires_in": expires_in,
        "scope": "openid",
        "project": {"reference": "Project/starvit-dev"},
        "profile": {"reference": "Practitioner/alice", "display": "Alice Clinician"},
    }
    if refresh_token:
        body["refresh_token"] = refresh_token
    httpx_mock.add_response(method="POST", url=TOKEN_URL, json=body)


def user_client(
    clock: FakeClock, sleeps: RecordingSleep, **sign_in: Any
) -> tuple[MedplumClient, AuthorizationCodeTokenSource]:
    medplum = MedplumClient(
        make_config(client_id=APP, client_secret=""),
        token_source=PasswordSignIn(email=EMAIL, password=PASSWORD, **sign_in),
        clock=clock,
        sleep=sleeps,
    )
    source = medplum.token_source
    assert isinstance(source, AuthorizationCodeTokenSource)
    return medplum, source


def requests_to(httpx_mock: HTTPXMock, url: str) -> list[httpx.Request]:
    return [r for r in httpx_mock.get_requests() if str(r.url) == url]


# --- PKCE ------------------------------------------------------------------------------------


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_pair_is_a_fresh_s256_pair() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set(string.ascii_letters + string.digits + "-._~")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert "=" not in challenge
    assert pkce_pair()[0] != verifier


def test_unverified_claims() -> None:
    assert unverified_claims(ALICE_TOKEN)["profile"] == "Practitioner/alice"
    assert unverified_claims("not-a-jwt") == {}
    assert unverified_claims("a.%%%.c") == {}


# --- signing in ------------------------------------------------------------------------------


async def test_sign_in_posts_login_then_exchanges_the_code_with_the_verifier(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock)
    add_exchange(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        await medplum.read("Patient", "p1")

    [login] = requests_to(httpx_mock, LOGIN_URL)
    assert login.headers["content-type"] == "application/json"
    sent = body_of(login)
    assert sent["email"] == EMAIL
    assert sent["password"] == PASSWORD
    assert sent["clientId"] == APP
    assert sent["scope"] == "openid"
    assert sent["codeChallengeMethod"] == "S256"
    [exchange] = requests_to(httpx_mock, TOKEN_URL)
    assert exchange.headers["content-type"] == "application/x-www-form-urlencoded"
    form = form_of(exchange)
    assert form.keys() == {"grant_type", "code", "code_verifier", "client_id"}
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "code-1"
    assert form["client_id"] == APP
    # The verifier sent with the code is the one whose S256 hash went with the password.
    assert pkce_challenge(form["code_verifier"]) == sent["codeChallenge"]
    [read] = requests_to(httpx_mock, FHIR + "Patient/p1")
    assert read.headers["authorization"] == f"Bearer {ALICE_TOKEN}"
    assert source.profile == "Practitioner/alice"
    assert source.project == "Project/starvit-dev"
    assert source.claims["aud"] == APP
    assert medplum.request_count == {"read": 1, "token": 2}


async def test_sign_in_options_are_sent(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock)
    add_exchange(httpx_mock)
    medplum, _ = user_client(
        clock,
        sleeps,
        client_id="other-app",
        scope="openid offline_access",
        project_id="starvit-dev",
        redirect_uri="http://127.0.0.1:8765/callback",
    )
    async with medplum:
        await medplum.token_source.get_token()
    sent = body_of(requests_to(httpx_mock, LOGIN_URL)[0])
    assert (sent["clientId"], sent["scope"], sent["projectId"]) == (
        "other-app",
        "openid offline_access",
        "starvit-dev",
    )
    form = form_of(requests_to(httpx_mock, TOKEN_URL)[0])
    assert form["client_id"] == "other-app"
    assert form["redirect_uri"] == "http://127.0.0.1:8765/callback"


def memberships(*profiles: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"pm-{index}",
            "project": {"reference": "Project/starvit-dev"},
            "profile": {"reference": profile},
        }
        for index, profile in enumerate(profiles)
    ]


async def test_a_user_with_several_profiles_chooses_one_through_auth_profile(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=LOGIN_URL,
        json={"login": "login-1", "memberships": memberships("Patient/p", "Practitioner/alice")},
    )
    httpx_mock.add_response(
        method="POST", url=PROFILE_URL, json={"login": "login-1", "code": "code-9"}
    )
    add_exchange(httpx_mock)
    medplum, source = user_client(clock, sleeps, profile="Practitioner/alice")
    async with medplum:
        assert await source.get_token() == ALICE_TOKEN
    [chosen] = requests_to(httpx_mock, PROFILE_URL)
    assert body_of(chosen) == {"login": "login-1", "profile": "pm-1"}
    assert form_of(requests_to(httpx_mock, TOKEN_URL)[0])["code"] == "code-9"
    assert source.token_requests == 3


async def test_a_single_listed_profile_is_chosen_without_asking(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=LOGIN_URL,
        json={"login": "login-1", "memberships": memberships("Practitioner/alice")},
    )
    httpx_mock.add_response(
        method="POST", url=PROFILE_URL, json={"login": "login-1", "code": "code-9"}
    )
    add_exchange(httpx_mock)
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        await source.get_token()
    assert body_of(requests_to(httpx_mock, PROFILE_URL)[0])["profile"] == "pm-0"


async def test_several_profiles_without_a_choice_is_a_clear_refusal(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=LOGIN_URL,
        json={"login": "login-1", "memberships": memberships("Patient/p", "Practitioner/a")},
    )
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        with pytest.raises(MedplumSignInRefused, match="2 profiles; choose one with profile="):
            await source.get_token()
    assert requests_to(httpx_mock, PROFILE_URL) == []
    assert sleeps.waits == []


async def test_refused_sign_in_is_not_retried_and_hides_the_password(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=LOGIN_URL,
        status_code=400,
        json=outcome("invalid", "Email or password is invalid"),
    )
    medplum, _ = user_client(clock, sleeps)
    async with medplum:
        with pytest.raises(MedplumSignInRefused) as caught:
            await medplum.read("Patient", "p1")

    error = caught.value
    assert isinstance(error, MedplumForbidden)
    assert error.status_code == 400
    assert error.operation == "sign-in"
    assert "Email or password is invalid" in str(error)
    assert "HTTP 400" in str(error)
    for secret in (PASSWORD, EMAIL):
        assert secret not in str(error)
        assert secret not in repr(error)
    assert len(requests_to(httpx_mock, LOGIN_URL)) == 1
    assert requests_to(httpx_mock, TOKEN_URL) == []
    assert sleeps.waits == []
    assert PASSWORD not in repr(PasswordSignIn(email=EMAIL, password=PASSWORD))


async def test_refused_code_exchange_names_the_oauth_error(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock)
    httpx_mock.add_response(
        method="POST",
        url=TOKEN_URL,
        status_code=400,
        json={"error": "invalid_request", "error_description": "Invalid code verifier"},
    )
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        with pytest.raises(MedplumSignInRefused, match="invalid_request: Invalid code verifier"):
            await source.get_token()


async def test_a_second_factor_is_refused_clearly(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(
        method="POST", url=LOGIN_URL, json={"login": "login-1", "mfaRequired": True}
    )
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        with pytest.raises(MedplumSignInRefused, match="MFA"):
            await source.get_token()


async def test_an_unavailable_step_restarts_the_whole_sign_in(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    # An authorization code is single-use: after a failed exchange the sign-in starts over.
    httpx_mock.add_response(method="POST", url=LOGIN_URL, status_code=503)
    add_login(httpx_mock, "code-1")
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=502)
    add_login(httpx_mock, "code-2")
    add_exchange(httpx_mock)
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        assert await source.get_token() == ALICE_TOKEN

    codes = [form_of(r)["code"] for r in requests_to(httpx_mock, TOKEN_URL)]
    assert codes == ["code-1", "code-2"]
    challenges = {body_of(r)["codeChallenge"] for r in requests_to(httpx_mock, LOGIN_URL)}
    assert len(challenges) == 3  # a fresh PKCE pair for every attempt
    assert len(sleeps.waits) == 2
    assert source.token_requests == 5


async def test_sign_in_gives_up_after_the_retry_policy(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(method="POST", url=LOGIN_URL, status_code=503, is_reusable=True)
    medplum, _ = user_client(clock, sleeps)
    async with medplum:
        with pytest.raises(MedplumUnavailable) as caught:
            await medplum.read("Patient", "p1")
    assert caught.value.operation == "sign-in"
    # Retried by the token source only, not once more per FHIR attempt.
    assert len(requests_to(httpx_mock, LOGIN_URL)) == 5


# --- renewal ---------------------------------------------------------------------------------


async def test_the_token_is_renewed_by_signing_in_again_before_it_expires(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock, "code-1")
    add_exchange(httpx_mock, ALICE_TOKEN, expires_in=3600)
    add_login(httpx_mock, "code-2")
    add_exchange(httpx_mock, ALICE_TOKEN_2, expires_in=3600)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)
    medplum, _ = user_client(clock, sleeps)
    async with medplum:
        await medplum.read("Patient", "p1")
        clock.advance(3600 - 300 - 1)
        await medplum.read("Patient", "p1")
        assert len(requests_to(httpx_mock, LOGIN_URL)) == 1
        clock.advance(2)  # inside the 300 s margin
        await medplum.read("Patient", "p1")

    assert len(requests_to(httpx_mock, LOGIN_URL)) == 2
    reads = requests_to(httpx_mock, FHIR + "Patient/p1")
    assert [r.headers["authorization"] for r in reads] == [
        f"Bearer {ALICE_TOKEN}",
        f"Bearer {ALICE_TOKEN}",
        f"Bearer {ALICE_TOKEN_2}",
    ]


async def test_a_refresh_token_renews_without_the_password(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock)
    add_exchange(httpx_mock, ALICE_TOKEN, expires_in=600, refresh_token="refresh-1")
    add_exchange(httpx_mock, ALICE_TOKEN_2, expires_in=600, refresh_token="refresh-2")
    medplum, source = user_client(clock, sleeps, scope="openid offline_access")
    async with medplum:
        assert await source.get_token() == ALICE_TOKEN
        clock.advance(301)  # a 600 s token is renewed half-way at the latest
        assert await source.get_token() == ALICE_TOKEN_2

    assert len(requests_to(httpx_mock, LOGIN_URL)) == 1
    refresh = form_of(requests_to(httpx_mock, TOKEN_URL)[1])
    assert refresh == {
        "grant_type": "refresh_token",
        "client_id": APP,
        "refresh_token": "refresh-1",
    }


async def test_a_refused_refresh_token_falls_back_to_signing_in(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock, "code-1")
    add_exchange(httpx_mock, ALICE_TOKEN, expires_in=600, refresh_token="refresh-1")
    httpx_mock.add_response(
        method="POST",
        url=TOKEN_URL,
        status_code=400,
        json={"error": "invalid_grant", "error_description": "Token revoked"},
    )
    add_login(httpx_mock, "code-2")
    add_exchange(httpx_mock, ALICE_TOKEN_2, expires_in=600)
    medplum, source = user_client(clock, sleeps)
    async with medplum:
        await source.get_token()
        clock.advance(600)  # expired
        assert await source.get_token() == ALICE_TOKEN_2
    assert len(requests_to(httpx_mock, LOGIN_URL)) == 2


async def test_a_401_signs_in_again_and_resends(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    add_login(httpx_mock, "code-1")
    add_exchange(httpx_mock, ALICE_TOKEN)
    add_login(httpx_mock, "code-2")
    add_exchange(httpx_mock, ALICE_TOKEN_2)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1", status_code=401, json=outcome("login", "Unauthorized")
    )
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())
    medplum, _ = user_client(clock, sleeps)
    async with medplum:
        result = await medplum.read("Patient", "p1")
    assert result.id == "p1"
    reads = requests_to(httpx_mock, FHIR + "Patient/p1")
    assert reads[-1].headers["authorization"] == f"Bearer {ALICE_TOKEN_2}"


# --- static token ----------------------------------------------------------------------------


async def test_static_token_is_sent_and_a_401_is_not_resent(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())
    httpx_mock.add_response(
        url=FHIR + "Patient/p2", status_code=401, json=outcome("login", "Unauthorized")
    )
    source = StaticTokenSource("fixed-token")
    assert isinstance(source, TokenSource)
    assert "fixed-token" not in repr(source)
    async with MedplumClient(
        make_config(), token_source=source, clock=clock, sleep=sleeps
    ) as medplum:
        await medplum.read("Patient", "p1")
        with pytest.raises(MedplumForbidden):
            await medplum.read("Patient", "p2")
        assert medplum.token_request_count == 0
        assert medplum.request_count == {"read": 2}
    assert [r.headers["authorization"] for r in httpx_mock.get_requests()] == [
        "Bearer fixed-token",
        "Bearer fixed-token",
    ]
    with pytest.raises(ValueError, match="empty"):
        StaticTokenSource("")


# --- operations ------------------------------------------------------------------------------


async def test_operation_posts_its_parameters(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    ok = outcome("informational", "All OK")
    httpx_mock.add_response(method="POST", url=FHIR + "Observation/o1/$resend", json=ok)
    async with MedplumClient(
        make_config(), token_source=StaticTokenSource("t"), clock=clock, sleep=sleeps
    ) as medplum:
        answer = await medplum.operation("Observation", "o1", "resend", {"interaction": "update"})
        assert answer == ok
        assert medplum.request_count == {"operation": 1}
        with pytest.raises(ValueError, match="operation name"):
            await medplum.operation("Observation", "o1", "re/send")
    [request] = httpx_mock.get_requests()
    assert body_of(request) == {"interaction": "update"}
    assert re.match(r"application/fhir\+json", request.headers["content-type"])
