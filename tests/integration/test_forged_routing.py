"""The receiver and the worker against a real PostgreSQL, replaying the attacks on the receiver:

* a captured signed body re-routed to another handler is refused (the signature is the
  handler's own);
* a forged delete never occupies the dedupe key: the genuine delete that follows is processed,
  once, and its redeliveries are duplicates;
* processed event keys are pruned after the retention, failed and queued ones stay;
* one bad row never fails the rows committed with it;
* the failed-signature limit is shared by every receiver process;
* refused deliveries are counted, PHI-free, where the ops dashboard reads them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import orjson
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from app.events import jobs
from app.events.repository import (
    EventIntake,
    EventKey,
    EventRepository,
    IntakeRefused,
    rejected_deliveries,
)
from app.events.signature import subscription_secret
from app.handlers.protocol import DELETED_VERSION, Processed, StoredEvent
from app.integrations.medplum import MedplumNotFound
from app.main import create_app
from app.settings import Settings, load_settings
from app.wiring import open_database
from devtools.devserver import DevServer
from tests.integration.pipeline_support import Pipeline, eventually, running_pipeline

pytestmark = pytest.mark.integration

SECRET = "forged-routing-secret"
URL = "/v1/medplum/notifications"


def sign(body: bytes, handler: str) -> str:
    key = subscription_secret(SECRET, handler).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def weight(resource_id: str = "obs-1", author: str | None = None) -> bytes:
    meta: dict[str, object] = {"versionId": "1"}
    if author is not None:
        meta["author"] = {"reference": author}
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": resource_id,
            "meta": meta,
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


def delete_headers(reference: str, handler: str = "bmi") -> dict[str, str]:
    return headers(
        b"{}",
        handler,
        **{"X-Medplum-Interaction": "delete", "X-Medplum-Deleted-Resource": reference},
    )


def settings_for(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "webhook_secrets": SECRET,
        "environment": "test",
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def receiver(
    settings: Settings, peer: str = "127.0.0.1"
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=(peer, 1000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield app, http


def rows(database_url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchall()  # pyright: ignore[reportArgumentType]


# --- A(1): routing the sender cannot forge ------------------------------------------------


async def test_a_signed_body_rerouted_to_another_handler_is_refused(database_url: str) -> None:
    async with receiver(settings_for(database_url)) as (_, http):
        body = weight()
        for handler in ("hba1c", "egfr", "review"):
            forged = {**headers(body, "bmi"), "X-Starvit-Bot": handler}
            answer = await http.post(URL, content=body, headers=forged)
            assert answer.status_code == 401, handler
        assert (await http.post(URL, content=body, headers=headers(body))).status_code == 202
    assert rows(database_url, "SELECT handler FROM starvit.event_keys") == [("bmi",)]


# --- A(2): a forged delete cannot pre-empt the genuine one --------------------------------


@dataclass
class FakeMedplum:
    """Medplum's answer to the worker's confirmation read."""

    deleted: set[str] = field(default_factory=set[str])
    reads: int = 0

    async def read(self, resource_type: str, resource_id: str) -> object:
        self.reads += 1
        if f"{resource_type}/{resource_id}" in self.deleted:
            raise MedplumNotFound("gone", status_code=410)
        return object()


@dataclass
class RecordingProcessor:
    events: list[StoredEvent] = field(default_factory=list[StoredEvent])

    async def process(self, event: StoredEvent, *, trace_id: str | None = None) -> Processed:
        del trace_id
        self.events.append(event)
        return Processed("retracted", 2, writes=3)


class FakeContext:
    job: Any = None


@asynccontextmanager
async def worker(
    database_url: str, medplum: FakeMedplum, processor: RecordingProcessor
) -> AsyncIterator[EventRepository]:
    settings = settings_for(database_url)
    database, queue = await open_database(settings)
    repo = EventRepository(database.pool)
    state = jobs.WorkerState(
        settings,
        database,
        queue,
        cast("Any", medplum),
        repo,
        cast("Any", processor),
        cast("Any", None),
    )
    jobs.install_state(state)
    try:
        yield repo
    finally:
        jobs.install_state(None)
        await database.aclose()


async def run_jobs(database_url: str, medplum: FakeMedplum, processor: RecordingProcessor) -> None:
    """Run every queued event's job once, in order, as the worker would."""
    queued = rows(database_url, "SELECT id FROM starvit.event_keys WHERE status = 'queued'")
    async with worker(database_url, medplum, processor):
        for (event_id,) in sorted(queued):
            await jobs.process_event.func(  # pyright: ignore[reportUnknownMemberType]
                cast("Any", FakeContext()), event_id=event_id
            )


async def test_a_forged_delete_does_not_burn_the_key_of_the_genuine_one(
    database_url: str,
) -> None:
    medplum, processor = FakeMedplum(), RecordingProcessor()
    target = "Observation/o-live"
    async with receiver(settings_for(database_url)) as (_, http):
        # The forged delete (a replayed "{}" with its signature) of a resource that exists.
        forged = await http.post(URL, content=b"{}", headers=delete_headers(target))
        assert forged.status_code == 202
        # A flood of them waits as one unconfirmed delete, not one row each.
        floods = [
            await http.post(URL, content=b"{}", headers=delete_headers(target)) for _ in range(20)
        ]
        assert {a.json()["status"] for a in floods} == {"duplicate"}
        await run_jobs(database_url, medplum, processor)
        assert processor.events == []  # nothing withdrawn: Medplum still has it
        assert rows(
            database_url,
            "SELECT count(*) FROM starvit.event_keys WHERE version_id = %s",
            DELETED_VERSION,
        ) == [(0,)]

        # Later the resource really is deleted: its notification is accepted and processed.
        medplum.deleted.add(target)
        genuine = await http.post(URL, content=b"{}", headers=delete_headers(target))
        assert genuine.status_code == 202
        await run_jobs(database_url, medplum, processor)
        assert [(e.reference, e.version_id) for e in processor.events] == [
            (target, DELETED_VERSION)
        ]

        # Medplum's redelivery of the same delete makes no second set of effects.
        again = await http.post(URL, content=b"{}", headers=delete_headers(target))
        assert again.status_code == 202
        await run_jobs(database_url, medplum, processor)
        assert len(processor.events) == 1
    outcomes = rows(database_url, "SELECT status, outcome FROM starvit.event_keys ORDER BY id")
    assert outcomes == [
        ("processed", "delete_not_confirmed"),
        ("processed", "retracted"),
        ("processed", "duplicate"),
    ]


# --- A(4): pruning ------------------------------------------------------------------------


async def test_processed_event_keys_are_pruned_after_the_retention(database_url: str) -> None:
    settings = settings_for(database_url)
    database, _ = await open_database(settings)
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        recent = datetime.now(UTC) - timedelta(days=2)
        with psycopg.connect(database_url) as conn:
            for resource_id, status, received in (
                ("old-done", "processed", old),
                ("old-failed", "failed", old),
                ("old-queued", "queued", old),
                ("new-done", "processed", recent),
            ):
                conn.execute(
                    "INSERT INTO starvit.event_keys (handler, resource_type, resource_id, "
                    "version_id, interaction, source, status, received_at) VALUES "
                    "('bmi', 'Observation', %s, '1', 'create', 'notification', %s, %s)",
                    (resource_id, status, received),
                )
        repo = EventRepository(database.pool)
        assert settings.event_key_retention == 31  # never shorter than the Task expiry + 1
        assert await repo.prune_processed(settings.event_key_retention) == 1
    finally:
        await database.aclose()
    left = rows(database_url, "SELECT resource_id FROM starvit.event_keys ORDER BY resource_id")
    assert left == [("new-done",), ("old-failed",), ("old-queued",)]


# --- B: one bad row never fails its neighbours --------------------------------------------


def key(resource_id: str, author: str | None = None) -> EventKey:
    return EventKey(
        handler="bmi",
        resource_type="Observation",
        resource_id=resource_id,
        version_id="1",
        interaction="create",
        source="notification",
        subscription_id="sub-1",
        patient_id="p-1",
        author=author,
    )


async def test_a_row_the_database_refuses_fails_alone(database_url: str) -> None:
    # Past the edge checks (as a bug might let through): PostgreSQL refuses NUL in text.
    settings = settings_for(database_url)
    database, queue = await open_database(settings)
    try:
        async with queue.open_async():
            intake = EventIntake(database.pool, queue)
            results = await asyncio.gather(
                intake.submit(key("good-1")),
                intake.submit(key("bad", author="Practitioner/a\x00b")),
                intake.submit(key("good-2")),
                return_exceptions=True,
            )
    finally:
        await database.aclose()
    assert isinstance(results[1], IntakeRefused)
    for result in (results[0], results[2]):
        assert not isinstance(result, BaseException)
        assert not result.duplicate
    left = rows(database_url, "SELECT resource_id FROM starvit.event_keys ORDER BY resource_id")
    assert left == [("good-1",), ("good-2",)]


async def test_a_nul_in_a_signed_body_is_400_and_its_neighbours_are_accepted(
    database_url: str,
) -> None:
    async with receiver(settings_for(database_url)) as (_, http):
        bad = weight("obs-bad", author="Practitioner/a\x00b")
        answers = await asyncio.gather(
            *(
                http.post(URL, content=body, headers=headers(body))
                for body in (weight("obs-a"), bad, weight("obs-b"))
            )
        )
    assert [a.status_code for a in answers] == [202, 400, 202]
    left = rows(database_url, "SELECT resource_id FROM starvit.event_keys ORDER BY resource_id")
    assert left == [("obs-a",), ("obs-b",)]


# --- C: the failed-signature limit is shared by every receiver process ----------------------


async def test_the_limit_is_shared_by_receiver_processes(database_url: str) -> None:
    settings = settings_for(database_url, bad_signature_limit_per_minute=3)
    body = weight()
    bad = {**headers(body), "X-Signature": "0" * 64}
    async with (
        receiver(settings, peer="198.51.100.7") as (_, first),
        receiver(settings, peer="198.51.100.7") as (_, second),
    ):
        # The limit counts per clock minute: start well inside one, so that all four failures
        # fall in the same window.
        into_minute = time.time() % 60
        if into_minute > 50:
            await asyncio.sleep(61 - into_minute)
        assert [
            (await first.post(URL, content=body, headers=bad)).status_code for _ in range(3)
        ] == [
            401,
            401,
            401,
        ]
        # The other process has never seen this client fail, but the shared count has.
        assert (await second.post(URL, content=body, headers=bad)).status_code == 429
        # ...and from then on it refuses the client before reading its body.
        assert (await second.post(URL, content=body, headers=headers(body))).status_code == 429


# --- D: refused deliveries, counted for the ops dashboard ----------------------------------


async def test_refused_deliveries_are_counted_without_phi(database_url: str) -> None:
    async with receiver(settings_for(database_url)) as (app, http):
        body = weight()
        await http.post(URL, content=body, headers={**headers(body), "X-Signature": "0" * 64})
        await http.post(URL, content=body, headers={**headers(body), "X-Starvit-Bot": "Canary"})
        task = b'{"resourceType":"Task","id":"t","meta":{"versionId":"1"}}'
        await http.post(URL, content=task, headers=headers(task))
        await http.post(URL, content=b"[1]", headers=headers(b"[1]"))
        del app
    # The lifespan's last flush wrote them.
    database, _ = await open_database(settings_for(database_url))
    try:
        counted = await rejected_deliveries(
            cast("AsyncConnectionPool", database.pool), datetime.now(UTC) - timedelta(hours=1)
        )
    finally:
        await database.aclose()
    assert sorted((c.handler, c.reason, c.count) for c in counted) == [
        ("-", "unknown_handler", 1),
        ("bmi", "bad_signature", 1),
        ("bmi", "malformed", 1),
        ("bmi", "wrong_resource_type", 1),
    ]
    everything = rows(database_url, "SELECT * FROM starvit.rejected_deliveries")
    assert "Canary" not in repr(everything)


# --- A(2) end to end: the stand-in, the receiver process and the worker process ----------


@pytest.fixture
async def pipeline(devserver: DevServer, database_url: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        devserver, database_url, STARVIT_SWEEP_INTERVAL_SECONDS="0"
    ) as running:
        yield running


async def post_signed(pipeline: Pipeline, body: bytes, **routing: str) -> httpx.Response:
    """What a sender holding a body signed for bmi's Subscription can post to the receiver."""
    key = subscription_secret(pipeline.stack.webhook_secret, "bmi").encode()
    async with httpx.AsyncClient() as http:
        return await http.post(
            pipeline.stack.receiver_url,
            content=body,
            headers={
                "Content-Type": "application/fhir+json",
                "X-Signature": hmac.new(key, body, hashlib.sha256).hexdigest(),
                "X-Starvit-Bot": "bmi",
                **routing,
            },
        )


def pending_bmi(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pending suggestion a weight of 95 kg makes: the obesity referral (BMI 34.9)."""
    return [
        t
        for t in tasks
        if t["status"] == "requested" and t["code"]["coding"][0]["code"].startswith("obesity.")
    ]


async def test_the_genuine_delete_withdraws_after_a_forged_one(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    _height, weight_json = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    assert len(pending_bmi(await pipeline.tasks_for(patient))) == 1
    reference = f"Observation/{weight_json['id']}"

    # The attacker replays a delete body signed for bmi, naming the live weight.
    forged = await post_signed(
        pipeline,
        b"{}",
        **{
            "X-Medplum-Interaction": "delete",
            "X-Medplum-Subscription": "forged",
            "X-Medplum-Deleted-Resource": reference,
        },
    )
    assert forged.status_code == 202
    await pipeline.settled()
    assert len(pending_bmi(await pipeline.tasks_for(patient))) == 1  # nothing withdrawn

    # The real delete, notified by Medplum, is not a duplicate of the forged one.
    await pipeline.admin.delete("Observation", str(weight_json["id"]))
    await eventually(
        lambda: pipeline.tasks_for(patient),
        lambda tasks: not pending_bmi(tasks),
    )
    outcomes = rows(
        pipeline.database_url,
        "SELECT outcome, version_id FROM starvit.event_keys WHERE handler = 'bmi' "
        "AND interaction = 'delete' ORDER BY id",
    )
    assert outcomes[0][0] == "delete_not_confirmed"
    assert ("retracted", DELETED_VERSION) in outcomes


async def test_a_version_medplum_never_had_leaves_no_audit_event(pipeline: Pipeline) -> None:
    """A signed body naming a version that does not exist (replayed with a made-up versionId)
    is not an event: nothing is written, and no AuditEvent claims a suggestion was made."""
    patient = await pipeline.new_patient()
    _height, weight_json = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    audits_before = await pipeline.search("AuditEvent", _count="200")

    fake = {**weight_json, "meta": {**weight_json["meta"], "versionId": "no-such-version"}}
    answer = await post_signed(
        pipeline,
        orjson.dumps(fake),
        **{"X-Medplum-Interaction": "update", "X-Medplum-Subscription": "replayed"},
    )
    assert answer.status_code == 202
    await pipeline.settled()
    outcomes = rows(
        pipeline.database_url,
        "SELECT outcome FROM starvit.event_keys WHERE handler = 'bmi' "
        "AND version_id = 'no-such-version'",
    )
    assert outcomes == [("unknown_version",)]
    assert len(await pipeline.search("AuditEvent", _count="200")) == len(audits_before)
