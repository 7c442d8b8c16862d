"""A partner authenticating with a ``private_key_jwt`` client assertion (SMART Backend Services)
posts through the partner API: its key set is served here, a project admin points the
ClientApplication's ``jwksUri`` at it, and the token Medplum issues for the assertion is accepted
by the service."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, DevServer
from tests.integration.partner_support import (
    bundle,
    partner_app,
    patient_entry,
    post_headers,
    registry_file,
    running,
    urn,
    weight_entry,
)
from tests.integration.pipeline_support import fhir_client

pytestmark = pytest.mark.integration

KEY = ec.generate_private_key(ec.SECP256R1())
KID = "keyed-partner-1"


@pytest.fixture
def jwks_url() -> Iterator[str]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}).encode()

    class KeySet(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeySet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


async def test_a_keyed_partner_posts_with_a_client_assertion_token(
    devserver: DevServer, database_url: str, jwks_url: str, tmp_path: Path
) -> None:
    async with fhir_client(devserver.base_url, ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET) as admin:
        current = await admin.read("ClientApplication", "partner-keyed")
        await admin.update({**current.resource, "jwksUri": jwks_url})
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": "partner-keyed",
            "sub": "partner-keyed",
            "aud": devserver.base_url + "oauth2/token",
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 300,
        },
        KEY,
        algorithm="ES256",
        headers={"kid": KID},
    )
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            devserver.base_url + "oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
    assert answer.status_code == 200, answer.text
    token = str(answer.json()["access_token"])
    patient_url = urn()
    body = bundle([patient_entry(patient_url, uuid.uuid4().hex), weight_entry(urn(), patient_url)])

    app = partner_app(devserver.base_url, database_url, registry_file(tmp_path))
    async with running(app) as api:
        posted = await api.post("/v1/bundles", json=body, headers=post_headers(token, "k1"))

    assert posted.status_code == 200, posted.text
    assert [e["action"] for e in posted.json()["entries"]] == ["created", "created"]
