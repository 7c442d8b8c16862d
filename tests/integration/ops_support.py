"""Helpers for the ops dashboard's tests: the receiver's ops settings, the ops app's redirect
URI registered in the stand-in, and the seeded users' sign-ins (the browser's redirects
followed by hand, or the Medplum app's own JSON sign-in for an API token)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from app.integrations.medplum import MedplumClient
from app.integrations.medplum.auth import pkce_pair

OPS_SESSION_SECRET = "ops-test-session-secret-0123456789"
METRICS_TOKEN = "ops-test-metrics-token"
OPS_CLIENT_ID = "starvit-ops"
OPS_USER = ("olivia.ops@starvit.example", "olivia-dev-password")
CLINICIAN = ("alice.clinician@starvit.example", "alice-dev-password")
RESEARCHER = ("ravi.researcher@starvit.example", "ravi-dev-password")

# The receiver's environment for the dashboard. No periodic sweep: it would pick the dead
# letters' resources up again on its own.
OPS_ENV = {
    "STARVIT_OPS_SESSION_SECRET": OPS_SESSION_SECRET,
    "STARVIT_METRICS_TOKEN": METRICS_TOKEN,
    "STARVIT_SWEEP_INTERVAL_SECONDS": "0",
}


async def register_redirect(admin: MedplumClient, receiver_base: str) -> str:
    """The ops app in Medplum accepts ``<receiver>/ops/callback`` (as a Medplum admin sets a
    ClientApplication's redirect URIs); the URI."""
    redirect = receiver_base.rstrip("/") + "/ops/callback"
    current = (await admin.read("ClientApplication", OPS_CLIENT_ID)).resource
    listed = current.get("redirectUris")
    uris = [u for u in listed if u != redirect] if isinstance(listed, list) else []
    uris.append(redirect)
    await admin.update({**current, "redirectUri": redirect, "redirectUris": uris}, idempotent=True)
    return redirect


async def sign_in_session(receiver_base: str, email: str, password: str) -> httpx.Response:
    """What a browser does: /ops/login, Medplum's authorize and sign-in page, the callback.
    The last answer (the callback's); the dashboard's cookies are in its ``cookies``."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
        login = await http.get(receiver_base + "/ops/login")
        assert login.status_code == 303, login.text
        authorize = await http.get(login.headers["location"])
        assert authorize.status_code == 302, authorize.text
        page_url = authorize.headers["location"]
        page = await http.get(page_url)
        assert page.status_code == 200
        params = {k: v[0] for k, v in parse_qs(urlsplit(page_url).query).items()}
        posted = await http.post(
            page_url.split("?")[0], data={**params, "email": email, "password": password}
        )
        assert posted.status_code == 302, posted.text
        callback = posted.headers["location"]
        assert callback.startswith(receiver_base + "/ops/callback?")
        return await http.get(callback)


def session_cookies(answer: httpx.Response) -> dict[str, str]:
    value = answer.cookies.get("starvit_ops_session")
    assert value, "no session cookie"
    return {"starvit_ops_session": value}


async def medplum_token(medplum_base: str, email: str, password: str, redirect: str) -> str:
    """An access token of the ops app for a user, the way the Medplum app signs in (JSON
    ``/auth/login`` with a PKCE challenge, then the code exchange)."""
    verifier, challenge = pkce_pair()
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            medplum_base + "auth/login",
            json={
                "email": email,
                "password": password,
                "clientId": OPS_CLIENT_ID,
                "scope": "openid profile",
                "codeChallenge": challenge,
                "codeChallengeMethod": "S256",
            },
        )
        answer.raise_for_status()
        code = answer.json()["code"]
        token = await http.post(
            medplum_base + "oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "client_id": OPS_CLIENT_ID,
                "redirect_uri": redirect,
            },
        )
        token.raise_for_status()
        body: dict[str, Any] = token.json()
        return str(body["access_token"])
