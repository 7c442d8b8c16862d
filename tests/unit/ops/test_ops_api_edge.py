"""The ops routes' edge in process (no database, no Medplum): who gets in, what the sign-in
sends the browser to, and the refusals, all in the error envelope."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI

from app.ops.auth import FLOW_COOKIE, OpsSession
from tests.conftest import Serve

SECRET = "unit-ops-secret"


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app(ops_session_secret=SECRET, metrics_token="scrape-token")


async def test_the_json_api_needs_an_identity(app: FastAPI, serve: Serve) -> None:
    async with serve(app) as client:
        for path in ("/v1/ops/overview", "/v1/ops/me", "/v1/ops/dead-letters", "/v1/ops/actions"):
            answer = await client.get(path)
            assert answer.status_code == 401, path
            body = answer.json()
            assert body["error_code"] == "unauthenticated"
            assert body["details"] == {"reason": "not_signed_in"}
            assert answer.headers["www-authenticate"].startswith("Bearer")
        client.cookies.set("starvit_ops_session", "x.y.z")
        forged = await client.get("/v1/ops/overview")
        assert forged.status_code == 401
        basic = await client.get("/v1/ops/overview", headers={"Authorization": "Basic abc"})
        assert basic.status_code == 401
        action = await client.post("/v1/ops/actions/replay-dead-letter", json={"event_id": 1})
        assert action.status_code == 401


async def test_a_signed_session_passes_and_actions_need_its_csrf_token(
    app: FastAPI, serve: Serve
) -> None:
    async with serve(app) as client:
        await client.get("/v1/ops/me")  # builds the dashboard's sign-in for this process
        auth = app.state.ops_auth
        cookie = auth.dump_session(
            OpsSession("Practitioner/ops-olivia", "login-1", "csrf-1", "token", 4102444800.0)
        )
        client.cookies.set("starvit_ops_session", cookie)
        me = await client.get("/v1/ops/me")
        assert me.status_code == 200
        assert me.json() == {
            "profile": "Practitioner/ops-olivia",
            "role": "ops",
            "csrf_token": "csrf-1",
        }
        # Past the identity, this runtime has no database: the dependency error, not a 401.
        assert (await client.get("/v1/ops/overview")).status_code == 503
        body = {"event_id": 1, "confirm": True}
        no_token = await client.post("/v1/ops/actions/replay-dead-letter", json=body)
        assert no_token.status_code == 403
        assert no_token.json()["details"] == {"reason": "csrf"}
        wrong = await client.post(
            "/v1/ops/actions/replay-dead-letter", json=body, headers={"X-CSRF-Token": "csrf-2"}
        )
        assert wrong.status_code == 403


async def test_sign_in_sends_the_browser_to_medplum_with_pkce(app: FastAPI, serve: Serve) -> None:
    async with serve(app) as client:
        page = await client.get("/ops/")
        assert page.status_code == 303
        assert page.headers["location"] == "/ops/login?next=/ops/"
        login = await client.get("/ops/login", params={"next": "/ops/gaps"})
        assert login.status_code == 303
        target = urlsplit(login.headers["location"])
        assert f"{target.scheme}://{target.netloc}/" == "http://127.0.0.1:8103/"
        assert target.path == "/oauth2/authorize"
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert query["client_id"] == "starvit-ops"
        assert query["response_type"] == "code"
        assert query["code_challenge_method"] == "S256"
        assert len(query["code_challenge"]) == 43
        assert query["redirect_uri"] == "http://testserver/ops/callback"
        flow = login.cookies.get(FLOW_COOKIE)
        assert flow
        set_cookie = login.headers["set-cookie"].lower()
        assert "httponly" in set_cookie
        assert "samesite=lax" in set_cookie
        # A callback whose state is not this browser's sign-in is refused, nothing is set.
        forged = await client.get("/ops/callback", params={"code": "c", "state": "other"})
        assert forged.status_code == 400
        assert "starvit_ops_session" not in forged.cookies
        no_code = await client.get("/ops/callback", params={"error": "access_denied"})
        assert no_code.status_code == 400
        assert no_code.headers["content-security-policy"].startswith("default-src 'none'")


async def test_metrics_need_the_scrape_token(app: FastAPI, serve: Serve) -> None:
    async with serve(app) as client:
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # The right token passes; this runtime has no database to read the figures from.
        right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-token"})
        assert right.status_code == 503


async def test_without_a_session_secret_the_pages_sign_in_is_off(
    make_app: Callable[..., FastAPI], serve: Serve
) -> None:
    async with serve(make_app()) as client:
        answer = await client.get("/v1/ops/overview")
        assert answer.status_code == 401
        login = await client.get("/ops/login")
        assert login.status_code == 503
        assert "STARVIT_OPS_SESSION_SECRET" in login.text
