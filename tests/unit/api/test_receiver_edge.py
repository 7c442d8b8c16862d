"""The receiver's edge on a bare runtime (no database): routing a sender cannot forge, the
failed-signature limit before the body is read, trusted proxies, refusal counts, the body
deadline, client disconnects, security headers and the documentation pages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from fastapi import FastAPI

from app.api.ratelimit import FailureLimiter, client_address, trusted_networks
from app.events.rejections import RejectionCounter
from app.events.signature import subscription_secret
from tests.conftest import LogCapture, Serve

URL = "/v1/medplum/notifications"
SECRET = "s1"  # settings_for_tests' webhook secret


def sign(body: bytes, handler: str = "bmi", secret: str = SECRET) -> str:
    key = subscription_secret(secret, handler).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def weight(resource_id: str = "obs-1") -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": resource_id,
            "meta": {"versionId": "1"},
            "subject": {"reference": "Patient/p-1"},
        }
    )


def headers(body: bytes, handler: str = "bmi", **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/fhir+json",
        "X-Signature": sign(body, handler),
        "X-Starvit-Bot": handler,
        "X-Medplum-Interaction": "create",
        "X-Medplum-Subscription": "sub-1",
        **extra,
    }


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app(bad_signature_limit_per_minute=3, body_read_timeout_seconds=0.2)


@pytest.fixture
async def client(app: FastAPI, serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


def rejections(app: FastAPI) -> dict[tuple[str, str], int]:
    counter = app.state.rejections
    assert isinstance(counter, RejectionCounter)
    totals: dict[tuple[str, str], int] = {}
    for (handler, reason, _), count in counter.snapshot().items():
        totals[handler, reason] = totals.get((handler, reason), 0) + count
    return totals


# --- A: routing is proven by the signature ------------------------------------------------


async def test_a_body_signed_for_one_handler_is_refused_under_another(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    # hba1c's Subscription never signs a weight: its signature cannot be borrowed by bmi's
    # name, nor bmi's by hba1c's.
    body = weight()
    forged = {**headers(body, "bmi"), "X-Starvit-Bot": "hba1c"}
    answer = await client.post(URL, content=body, headers=forged)
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "signature_invalid"
    assert rejections(app) == {("hba1c", "bad_signature"): 1}


async def test_the_configured_secret_itself_no_longer_signs(client: httpx.AsyncClient) -> None:
    body = weight()
    raw = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = await client.post(URL, content=body, headers={**headers(body), "X-Signature": raw})
    assert answer.status_code == 401


async def test_an_unknown_handler_is_refused_before_the_signature(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body = weight()
    answer = await client.post(URL, content=body, headers={**headers(body), "X-Starvit-Bot": "x"})
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "unknown_handler"
    # The name the sender wrote is never recorded.
    assert rejections(app) == {("-", "unknown_handler"): 1}


async def test_a_resource_type_the_handler_does_not_watch_is_400(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body = orjson.dumps({"resourceType": "Task", "id": "t-1", "meta": {"versionId": "1"}})
    answer = await client.post(URL, content=body, headers=headers(body, "bmi"))
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "wrong_resource_type"
    assert rejections(app) == {("bmi", "wrong_resource_type"): 1}


async def test_a_nul_in_the_author_is_400_not_a_database_error(client: httpx.AsyncClient) -> None:
    body = orjson.dumps(
        {
            "resourceType": "Observation",
            "id": "obs-1",
            "meta": {"versionId": "1", "author": {"reference": "Practitioner/a\x00b"}},
        }
    )
    answer = await client.post(URL, content=body, headers=headers(body))
    assert answer.status_code == 400
    assert answer.json()["details"] == {
        "field": "meta.author.reference",
        "problem": "contains non-printable characters or is too long",
    }


# --- C: the failed-signature limit, before the body is read -------------------------------


async def test_a_client_over_the_limit_is_refused_without_its_body_being_read(
    app: FastAPI, serve: Serve
) -> None:
    body = weight()
    bad = {**headers(body), "X-Signature": "f" * 64}
    async with serve(app) as client:
        codes = [(await client.post(URL, content=body, headers=bad)).status_code for _ in range(3)]
        assert codes == [401, 401, 401]

        read = False

        async def never_finishes() -> AsyncIterator[bytes]:
            nonlocal read
            read = True
            yield b"{"
            await asyncio.sleep(3600)

        answer = await client.post(URL, content=never_finishes(), headers=bad)
    assert answer.status_code == 429
    assert answer.json()["error_code"] == "rate_limited"
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert not read
    assert rejections(app)[("-", "rate_limited")] == 1


async def test_another_client_is_not_limited(app: FastAPI) -> None:
    body = weight()
    bad = {**headers(body), "X-Signature": "f" * 64}
    noisy = httpx.ASGITransport(app=app, client=("10.0.0.1", 1000))
    quiet = httpx.ASGITransport(app=app, client=("10.0.0.2", 1000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=noisy, base_url="http://t") as attacker,
        httpx.AsyncClient(transport=quiet, base_url="http://t") as medplum,
    ):
        for _ in range(4):
            await attacker.post(URL, content=body, headers=bad)
        assert (await attacker.post(URL, content=body, headers=bad)).status_code == 429
        # Another address is judged on its own failures: a plain 401, not the attacker's 429.
        answer = await medplum.post(URL, content=body, headers=bad)
        assert answer.status_code == 401


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    trusted = trusted_networks(["10.1.0.0/16"])
    # From an untrusted peer the header is the sender's word: ignored.
    assert client_address("203.0.113.9", "198.51.100.1", trusted) == "203.0.113.9"
    # From a trusted proxy: the nearest address the proxies did not add.
    assert client_address("10.1.0.5", "198.51.100.1, 10.1.0.7", trusted) == "198.51.100.1"
    assert client_address("10.1.0.5", "6.6.6.6, 198.51.100.1", trusted) == "198.51.100.1"
    assert client_address("10.1.0.5", None, trusted) == "10.1.0.5"
    assert client_address("10.1.0.5", "junk", trusted) == "10.1.0.5"
    assert client_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"


async def test_the_limit_follows_the_forwarded_client_behind_a_trusted_proxy(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(bad_signature_limit_per_minute=2, trusted_proxies="10.1.0.0/16")
    body = weight()
    proxy = httpx.ASGITransport(app=app, client=("10.1.0.5", 1000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=proxy, base_url="http://t") as client,
    ):
        bad = {**headers(body), "X-Signature": "f" * 64, "X-Forwarded-For": "198.51.100.1"}
        codes = [(await client.post(URL, content=body, headers=bad)).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        other = {**bad, "X-Forwarded-For": "198.51.100.2"}
        assert (await client.post(URL, content=body, headers=other)).status_code == 401


async def test_the_shared_count_is_what_the_limit_reads() -> None:
    class SharedStore:
        """Another process has already counted this client's failures."""

        async def record_failure(self, client: str, window_start: float) -> int:
            del client, window_start
            return 99

    limiter = FailureLimiter(3, clock=lambda: 120.0, store=SharedStore())
    assert limiter.blocked("c") is None  # never failed here: no I/O, no refusal
    assert await limiter.record_failure("c") == 60
    assert limiter.blocked("c") == 60  # from now on refused before reading


# --- C: body deadline and client disconnects ----------------------------------------------


async def test_a_trickled_body_gets_408_at_the_deadline(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    body = weight()

    async def trickle() -> AsyncIterator[bytes]:
        yield body[:5]
        await asyncio.sleep(5)
        yield body[5:]

    answer = await asyncio.wait_for(
        client.post(URL, content=trickle(), headers=headers(body)), timeout=3
    )
    assert answer.status_code == 408
    assert answer.json()["error_code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert "unhandled_exception" not in logs.text


async def test_a_client_disconnect_is_info_not_a_500(app: FastAPI, logs: LogCapture) -> None:
    body = weight()
    sent: list[dict[str, object]] = []
    messages = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers(body).items()],
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # pyright: ignore[reportArgumentType]
    events = logs.events()
    assert not [e for e in events if e["level"] == "error"]
    assert [e for e in events if e["event"] == "client_disconnected" and e["level"] == "info"]
    [request] = [e for e in events if e["event"] == "request"]
    assert request["status"] == 499


# --- D: security headers, no CDN pages ----------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/nope"])
async def test_security_headers_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in answer.headers  # development serves http
    assert "server" not in answer.headers


async def test_hsts_and_no_schema_in_production(
    make_app: Callable[..., FastAPI], serve: Serve
) -> None:
    async with serve(make_app(environment="production")) as client:
        answer = await client.get("/healthz")
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        assert (await client.get("/openapi.json")).status_code == 404


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_no_documentation_pages_that_load_a_cdn(client: httpx.AsyncClient, page: str) -> None:
    answer = await client.get(page)
    assert answer.status_code == 404
    assert answer.json()["error_code"] == "not_found"
