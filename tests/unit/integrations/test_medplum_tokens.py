"""Local verification of Medplum access tokens against a JWKS served over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.integrations.medplum.tokens import (
    AccessTokenVerifier,
    KeySetUnavailable,
    TokenRejected,
    jwks_url_for,
)

ISSUER = "http://medplum.test/"
CLIENT = "partner-lab"


class KeyServer:
    """A JWKS endpoint whose keys a test can change (rotation) and whose fetches it counts."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.failing = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def ec_key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "ES256", "use": "sig"}


def rsa_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "RS256", "use": "sig"}


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    values: dict[str, object] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "c0ffee",
        "client_id": CLIENT,
        "profile": "ClientApplication/c0ffee",
        "login_id": "l-1",
        "scope": "system/*.write openid",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def verifier(server: KeyServer, **options: Any) -> AccessTokenVerifier:
    return AccessTokenVerifier(
        jwks_url=jwks_url_for(server.base_url), issuer=ISSUER, fetch_timeout=2, **options
    )


async def rejected(verifier_: AccessTokenVerifier, token: str | None) -> str:
    with pytest.raises(TokenRejected) as caught:
        await verifier_.verify(token, audiences=[CLIENT])
    return caught.value.code


async def test_a_medplum_token_is_verified_with_its_claims(key_server: KeyServer) -> None:
    private, public = ec_key("k1")
    key_server.keys = [public]
    token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})

    verified = await verifier(key_server).verify(token, audiences=[CLIENT])

    assert verified.client_id == CLIENT
    assert verified.profile == "ClientApplication/c0ffee"
    assert verified.profile_type == "ClientApplication"
    assert verified.scopes == frozenset({"system/*.write", "openid"})
    assert verified.login_id == "l-1"


async def test_rs256_keys_are_accepted(key_server: KeyServer) -> None:
    private, public = rsa_key("r1")
    key_server.keys = [public]
    token = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "r1"})
    assert (await verifier(key_server).verify(token, audiences=[CLIENT])).subject == "c0ffee"


async def test_each_failure_has_its_own_code(key_server: KeyServer) -> None:
    private, public = ec_key("k1")
    other, _ = ec_key("k1")
    key_server.keys = [public]
    check = verifier(key_server, leeway_seconds=5)
    now = int(time.time())

    def sign(key: Any = private, **overrides: object) -> str:
        return jwt.encode(claims(**overrides), key, algorithm="ES256", headers={"kid": "k1"})

    assert await rejected(check, None) == "token_missing"
    assert await rejected(check, "not.a.jwt") == "token_malformed"
    assert await rejected(check, sign(other)) == "token_signature"
    assert await rejected(check, sign(iss="http://elsewhere.test/")) == "token_issuer"
    assert await rejected(check, sign(aud="another-client")) == "token_audience"
    assert await rejected(check, sign(exp=now - 60)) == "token_expired"
    assert await rejected(check, sign(nbf=now + 600)) == "token_not_yet_valid"
    # An ID token (same key and audience, no profile) is not an access token.
    assert await rejected(check, sign(profile=None)) == "token_malformed"
    # Inside the leeway, a just-expired token still passes.
    assert (await check.verify(sign(exp=now - 2), audiences=[CLIENT])).client_id == CLIENT


async def test_alg_none_and_hmac_with_the_public_key_are_refused(key_server: KeyServer) -> None:
    private, public = ec_key("k1")
    key_server.keys = [public]
    check = verifier(key_server)
    unsigned = jwt.encode(claims(), "", algorithm="none", headers={"kid": "k1"})
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion attack: HS256 "signed" with the verifier's public key as the secret.
    forged = _hs256(claims(), public_pem, kid="k1")

    assert await rejected(check, unsigned) == "token_algorithm"
    assert await rejected(check, forged) == "token_algorithm"
    assert key_server.fetches == 0  # refused before any key is looked up


async def test_a_token_naming_another_family_than_its_key_is_refused(
    key_server: KeyServer,
) -> None:
    _, ec_public = ec_key("k1")
    rsa_private, _ = rsa_key("k1")
    key_server.keys = [ec_public]
    token = jwt.encode(claims(), rsa_private, algorithm="RS256", headers={"kid": "k1"})
    assert await rejected(verifier(key_server), token) == "token_algorithm"


async def test_an_unknown_kid_refreshes_the_key_set_once(key_server: KeyServer) -> None:
    old_private, old_public = ec_key("old")
    new_private, new_public = ec_key("new")
    key_server.keys = [old_public]
    check = verifier(key_server, refresh_interval=0)
    await check.verify(
        jwt.encode(claims(), old_private, algorithm="ES256", headers={"kid": "old"}),
        audiences=[CLIENT],
    )
    await check.verify(
        jwt.encode(claims(), old_private, algorithm="ES256", headers={"kid": "old"}),
        audiences=[CLIENT],
    )
    assert key_server.fetches == 1  # cached

    key_server.keys = [old_public, new_public]  # Medplum rotated its signing key
    token = jwt.encode(claims(), new_private, algorithm="ES256", headers={"kid": "new"})
    assert (await check.verify(token, audiences=[CLIENT])).client_id == CLIENT
    assert key_server.fetches == 2


async def test_unknown_kids_cannot_drive_fetches(key_server: KeyServer) -> None:
    private, public = ec_key("k1")
    key_server.keys = [public]
    check = verifier(key_server, refresh_interval=3600)
    await check.verify(
        jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"}), audiences=[CLIENT]
    )
    for attempt in range(5):
        token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": f"x{attempt}"})
        assert await rejected(check, token) == "token_key_unknown"
    assert key_server.fetches == 1


async def test_an_unreachable_key_set_is_a_dependency_failure(key_server: KeyServer) -> None:
    private, _ = ec_key("k1")
    key_server.failing = True
    token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "k1"})
    with pytest.raises(KeySetUnavailable):
        await verifier(key_server).verify(token, audiences=[CLIENT])


def _hs256(payload: dict[str, object], secret: bytes, *, kid: str) -> str:
    """An HS256 token built by hand (PyJWT itself refuses a PEM key as an HMAC secret)."""

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = part(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(signature)}"
