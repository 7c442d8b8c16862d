"""Every way a partner's token can fail answers 401 with the envelope and a stable reason, before
the body is read: no token, a bad signature, another issuer, expired, ``alg: none``, and HS256
"signed" with the published public key. Tokens are signed here with a key served from a local
JWKS endpoint, so each claim can be set exactly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.integrations.medplum.tokens import AccessTokenVerifier
from app.main import create_app
from app.runtime import Runtime
from app.wiring import handler_registry
from tests.conftest import settings_for_tests

ISSUER = "http://medplum.test/"
KID = "test-key-1"
PRIVATE = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = json.loads(ECAlgorithm.to_jwk(PRIVATE.public_key()))
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
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    values: dict[str, object] = {
        "iss": ISSUER,
        "aud": "partner-acme",
        "client_id": "partner-acme",
        "sub": "partner-acme",
        "profile": "ClientApplication/partner-acme",
        "login_id": "login-1",
        "scope": "openid",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    values.update(overrides)
    return values


def es256(payload: dict[str, object], key: ec.EllipticCurvePrivateKey = PRIVATE) -> str:
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": KID})


def unsigned(payload: dict[str, object]) -> str:
    return jwt.encode(payload, key="", algorithm="none", headers={"kid": KID})


def hs256_with_public_key(payload: dict[str, object]) -> str:
    # PyJWT refuses a PEM as an HMAC secret; the attacker builds the token by hand.
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'kid': KID, 'typ': 'JWT'})}.{part(payload)}"
    signature = hmac.new(PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.fixture
async def api(jwks_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    registry = tmp_path / "partners.json"
    registry.write_text(
        json.dumps(
            {
                "partners": [
                    {
                        "client_id": "partner-acme",
                        "name": "ACME",
                        "project": "p1",
                        "resources": {"Patient": ["create"]},
                    }
                ]
            }
        )
    )
    settings = settings_for_tests(partner_registry=registry, medplum_base_url=ISSUER)
    app = create_app(settings)
    runtime = Runtime(settings, registry=handler_registry())
    runtime.token_verifier = AccessTokenVerifier(jwks_url=jwks_url, issuer=ISSUER)
    app.state.runtime = runtime
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        yield client


BODY = b'{"resourceType": "Bundle", "type": "batch", "entry": []}'


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "token_missing"),
        (es256(claims(), OTHER), "token_signature"),
        (es256(claims(iss="http://elsewhere.test/")), "token_issuer"),
        (es256(claims(exp=int(time.time()) - 3600, nbf=int(time.time()) - 7200)), "token_expired"),
        (unsigned(claims()), "token_algorithm"),
        (hs256_with_public_key(claims()), "token_algorithm"),
        (es256(claims(aud="someone-else", client_id="someone-else")), "token_audience"),
        ("not-a-jwt", "token_malformed"),
    ],
    ids=[
        "no-token",
        "bad-signature",
        "wrong-issuer",
        "expired",
        "alg-none",
        "hs256-public-key",
        "not-a-partner",
        "garbage",
    ],
)
async def test_each_authentication_failure_is_401_with_its_reason(
    api: httpx.AsyncClient, token: str | None, reason: str
) -> None:
    headers = {"Content-Type": "application/fhir+json", "Idempotency-Key": "k1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    answer = await api.post("/v1/bundles", content=BODY, headers=headers)

    assert answer.status_code == 401
    envelope = answer.json()
    assert envelope["error_code"] == "unauthenticated"
    assert envelope["details"] == {"reason": reason}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    if token is not None:
        assert token not in answer.text


async def test_a_valid_token_passes_authentication(api: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {es256(claims())}", "Content-Type": "text/plain"}

    answer = await api.post("/v1/bundles", content=BODY, headers=headers)

    # Past authentication and the registry, the content type is the next check.
    assert answer.status_code == 415
    assert answer.json()["error_code"] == "unsupported_media_type"
