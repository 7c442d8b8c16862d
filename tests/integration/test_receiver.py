"""The receiver against a real PostgreSQL: every rejection path answers with the envelope and
enqueues nothing; duplicates and own writes are acknowledged without a second job."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import psycopg
import pytest

from app.events.repository import PENDING_DELETE_VERSION
from app.events.signature import subscription_secret
from app.main import create_app
from app.settings import load_settings

pytestmark = pytest.mark.integration

SECRET = "receiver-test-secret"
OLD_SECRET = "receiver-old-secret"


def sign(body: bytes, secret: str = SECRET, handler: str = "bmi") -> str:
    """Signed as the handler's Subscription signs: with the secret derived for it."""
    key = subscription_secret(secret, handler).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def weight(resource_id: str = "obs-1", version: str = "v1", author: str | None = None) -> bytes:
    meta: dict[str, object] = {"versionId": version, "lastUpdated": "2026-01-01T00:00:00Z"}
    if author:
        meta["author"] = {"reference": author}
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": resource_id,
            "meta": meta,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p-1", "display": "Canary Zebedee Quux"},
            "valueQuantity": {"value": 80, "unit": "kg"},
        }
    )


def headers(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/fhir+json",
        "X-Signature": sign(body),
        "X-Medplum-Interaction": "create",
        "X-Medplum-Subscription": "sub-1",
        "X-Starvit-Bot": "bmi",
        **extra,
    }


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(
        database_url=database_url,
        webhook_secrets=f"{SECRET},{OLD_SECRET}",
        bad_signature_limit_per_minute=3,
        environment="test",
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield http


def counts(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        events = conn.execute("SELECT count(*) FROM starvit.event_keys").fetchone()
        jobs = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'starvit:process_event'"
        ).fetchone()
    assert events is not None
    assert jobs is not None
    return int(events[0]), int(jobs[0])


URL = "/v1/medplum/notifications"


async def test_accepts_then_acknowledges_duplicates(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = weight()
    first = await client.post(URL, content=body, headers=headers(body))
    assert first.status_code == 202
    assert first.json()["status"] == "accepted"
    again = await client.post(URL, content=body, headers=headers(body))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert counts(database_url) == (1, 1)


async def test_five_concurrent_deliveries_make_one_job(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = weight("obs-concurrent")
    answers = await asyncio.gather(
        *(client.post(URL, content=body, headers=headers(body)) for _ in range(5))
    )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 202]
    assert counts(database_url) == (1, 1)


async def test_an_old_rotation_secret_is_accepted(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = weight("obs-rotated")
    answer = await client.post(
        URL, content=body, headers={**headers(body), "X-Signature": sign(body, OLD_SECRET)}
    )
    assert answer.status_code == 202
    assert counts(database_url) == (1, 1)


async def test_delete_is_keyed_by_the_deleted_resource(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = b"{}"
    answer = await client.post(
        URL,
        content=body,
        headers=headers(
            body,
            **{"X-Medplum-Interaction": "delete", "X-Medplum-Deleted-Resource": "Observation/o9"},
        ),
    )
    assert answer.status_code == 202
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT resource_type, resource_id, version_id, interaction FROM starvit.event_keys"
        ).fetchone()
    # Provisional until the worker has Medplum's word that the resource is gone.
    assert row == ("Observation", "o9", PENDING_DELETE_VERSION, "delete")


async def test_own_writes_are_ignored(client: httpx.AsyncClient, database_url: str) -> None:
    body = weight(author="ClientApplication/starvit-service")
    answer = await client.post(URL, content=body, headers=headers(body))
    assert answer.status_code == 200
    assert answer.json() == {"status": "ignored", "event_id": None, "reason": "own_write"}
    assert counts(database_url) == (0, 0)


def _without_signature(body: bytes, sent: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body, {k: v for k, v in sent.items() if k != "X-Signature"}


type Mutation = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


def _with(**changes: str) -> Mutation:
    def mutate(body: bytes, sent: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body, {**sent, **{k.replace("_", "-"): v for k, v in changes.items()}}

    return mutate


def _signed_body(new_body: bytes, **changes: str) -> Mutation:
    def mutate(_body: bytes, sent: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        extra = {k.replace("_", "-"): v for k, v in changes.items()}
        return new_body, {**sent, "X-Signature": sign(new_body), **extra}

    return mutate


def _tampered(body: bytes, sent: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body + b" ", sent


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (_without_signature, 401, "signature_missing"),
        (_with(X_Signature="0" * 64), 401, "signature_invalid"),
        (_with(X_Signature="not-hex"), 401, "signature_invalid"),
        (_tampered, 401, "signature_invalid"),
        (_with(Content_Type="text/plain"), 415, "unsupported_media_type"),
        (_signed_body(b"{not json"), 400, "malformed_body"),
        (_signed_body(b"[1]"), 400, "malformed_body"),
        (_with(X_Starvit_Bot="nope"), 400, "unknown_handler"),
        (_with(X_Starvit_Bot="hba1c"), 401, "signature_invalid"),
        (_with(X_Medplum_Subscription=""), 400, "malformed_body"),
        (_with(X_Medplum_Interaction="patch"), 400, "malformed_body"),
        (_signed_body(b"{}", X_Medplum_Interaction="delete"), 400, "malformed_body"),
        (_signed_body(b'{"resourceType":"Observation","id":"x"}'), 400, "malformed_body"),
        (
            _signed_body(b'{"resourceType":"Task","id":"x","meta":{"versionId":"1"}}'),
            400,
            "wrong_resource_type",
        ),
    ],
)
async def test_bad_input_is_refused_with_the_envelope_and_nothing_enqueued(
    client: httpx.AsyncClient,
    database_url: str,
    mutate: Mutation,
    status: int,
    code: str,
) -> None:
    body = weight()
    new_body, new_headers = mutate(body, headers(body))
    answer = await client.post(URL, content=new_body, headers=new_headers)
    assert answer.status_code == status
    envelope = answer.json()
    assert envelope["error_code"] == code
    assert envelope["correlation_id"] == answer.headers["X-Request-ID"]
    assert "Canary" not in answer.text
    assert counts(database_url) == (0, 0)


async def test_oversized_body_is_413(client: httpx.AsyncClient, database_url: str) -> None:
    body = b'{"resourceType":"Observation","pad":"' + b"x" * 1_100_000 + b'"}'
    answer = await client.post(URL, content=body, headers=headers(body))
    assert answer.status_code == 413
    assert answer.json()["error_code"] == "payload_too_large"
    assert counts(database_url) == (0, 0)


async def test_repeated_bad_signatures_are_rate_limited(
    client: httpx.AsyncClient, database_url: str
) -> None:
    body = weight()
    bad = {**headers(body), "X-Signature": "f" * 64}
    codes = [(await client.post(URL, content=body, headers=bad)).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    limited = await client.post(URL, content=body, headers=bad)
    assert limited.json()["error_code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # Refused before the body is read, so a client over the limit is refused even when it
    # signs (Medplum retries such a delivery later); the count is shared through PostgreSQL.
    assert (await client.post(URL, content=body, headers=headers(body))).status_code == 429
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT client, failures FROM starvit.signature_failures").fetchone()
    assert row == ("127.0.0.1", 3)
