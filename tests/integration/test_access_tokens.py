"""The token verifier against the stand-in's real ES256 tokens and its published key set."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api.auth import authenticate
from app.api.errors import install_error_handlers
from app.integrations.medplum.tokens import AccessTokenVerifier, TokenRejected, jwks_url_for
from app.runtime import Runtime
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET, DevServer
from tests.conftest import Serve, settings_for_tests


async def partner_token(devserver: DevServer) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            devserver.base_url + "oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": PARTNER_CLIENT_ID,
                "client_secret": PARTNER_CLIENT_SECRET,
            },
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])


async def test_a_stand_in_token_verifies_and_names_its_client(devserver: DevServer) -> None:
    token = await partner_token(devserver)
    verifier = AccessTokenVerifier(
        jwks_url=jwks_url_for(devserver.base_url), issuer=devserver.base_url
    )

    verified = await verifier.verify(token, audiences=[PARTNER_CLIENT_ID])

    assert verified.client_id == PARTNER_CLIENT_ID
    assert verified.profile_type == "ClientApplication"
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(token, audiences=["some-other-client"])
    assert caught.value.code == "token_audience"


async def test_the_bearer_dependency_answers_401_with_a_reason(
    devserver: DevServer, serve: Serve
) -> None:
    settings = settings_for_tests(medplum_base_url=devserver.base_url)
    app = FastAPI()
    install_error_handlers(app)
    runtime = Runtime(settings)
    app.state.runtime = runtime

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        token = await authenticate(request, runtime, audiences=[PARTNER_CLIENT_ID])
        return {"client": token.client_id}

    token = await partner_token(devserver)
    async with serve(app) as client:
        ok = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
        missing = await client.get("/whoami")
        tampered = await client.get(
            "/whoami", headers={"Authorization": f"Bearer {token[:-4]}AAAA"}
        )

    assert ok.json() == {"client": PARTNER_CLIENT_ID}
    assert missing.status_code == 401
    assert missing.json()["details"] == {"reason": "token_missing"}
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert tampered.status_code == 401
    assert tampered.json()["details"] == {"reason": "token_signature"}
    assert token not in tampered.text
