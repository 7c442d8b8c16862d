"""What a real Medplum server did differently from the stand-in, now shown by the stand-in in
its strict mode (5.0 compatibility, the FHIR quota, RateLimit on every answer), and the service
doing the right thing against it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools.devserver import DevServer
from tests.integration.pipeline_support import Pipeline, running_pipeline

pytestmark = pytest.mark.integration

SUPPORTED_INTERACTION = (
    "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"
)


@pytest.fixture
async def pipeline(devserver: DevServer, database_url: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        devserver, database_url, STARVIT_SWEEP_INTERVAL_SECONDS="0"
    ) as running:
        yield running


def events_of(pipeline: Pipeline, handler: str, resource_id: str) -> list[tuple[Any, ...]]:
    return [e for e in pipeline.events() if e[1] == handler and e[3] == resource_id]


def client_retries(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The worker's ``medplum_retry`` log lines (the client's own retries and their waits)."""
    found: list[dict[str, Any]] = []
    for process in pipeline.stack.processes:
        for line in process.output:
            if '"medplum_retry"' in line:
                found.append(json.loads(line))
    return found


async def test_an_update_and_a_delete_reach_the_bot_on_medplum_5_0(pipeline: Pipeline) -> None:
    settings = (await pipeline.configure_standin())["settings"]
    assert settings["compat"] == "5.0"
    bmi_subscriptions = [
        s
        for s in await pipeline.search("Subscription")
        if "X-Starvit-Bot: bmi" in s["channel"].get("header", [])
    ]
    assert [
        e
        for s in bmi_subscriptions
        for e in s.get("extension", [])
        if e["url"] == SUPPORTED_INTERACTION
    ] == []

    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient, weight=95.0)
    await pipeline.settled()
    [created] = events_of(pipeline, "bmi", weight["id"])
    assert created[5] == "processed"  # proposed, or unchanged when the height's event was first

    corrected = {**weight, "valueQuantity": {**weight["valueQuantity"], "value": 96.0}}
    updated = await pipeline.partner.update(corrected)
    await pipeline.settled()
    versions = {e[4] for e in events_of(pipeline, "bmi", weight["id"])}
    assert updated.version_id in versions

    await pipeline.admin.delete("Observation", weight["id"])
    await pipeline.settled()
    deleted = [e for e in events_of(pipeline, "bmi", weight["id"]) if e[4] == "deleted"]
    assert len(deleted) == 1
    assert deleted[0][5] == "processed"
    assert deleted[0][6] == "retracted"
    # The BMI was an item of the results-review list, the referral a Task of its own: the
    # delete withdraws both.
    tasks = [
        t
        for t in await pipeline.tasks_for(patient)
        if t["code"]["coding"][0]["code"] in ("results-review", "obesity.weight-management")
    ]
    assert {t["code"]["coding"][0]["code"] for t in tasks} == {
        "results-review",
        "obesity.weight-management",
    }
    assert all(t["status"] != "requested" for t in tasks)


async def test_a_transaction_conflict_is_retried_by_the_client_not_the_job_queue(
    pipeline: Pipeline,
) -> None:
    # Every serializable transaction that starts within half a second of another one's commit
    # on the same patient fails Medplum's internal attempts and answers 409. The service's
    # writes carry no conditional entries, so Medplum runs none of them serializable: the bmi
    # and obesity jobs of one weight, writing side by side, never conflict.
    await pipeline.configure_standin(
        transactionConflicts={"enabled": True, "every": 1, "attempts": 2, "windowMs": 500}
    )
    patients = [await pipeline.new_patient() for _ in range(3)]
    weights = []
    for patient in patients:
        _height, weight = await pipeline.weight_and_height(patient, weight=97.0)
        weights.append(weight["id"])
    await pipeline.settled(within=60)

    stats = await pipeline.stats()
    assert stats["transactions"]["conflicts"] == 0
    mine = [e for e in pipeline.events() if e[3] in weights]
    assert {e[1] for e in mine} == {"bmi", "obesity"}
    assert all(e[5] == "processed" for e in mine)
    assert all(e[8] == 1 for e in mine)

    # A 409 Medplum still answers after its own retries (a conflict with another writer) is
    # retried promptly by the client: no job fails and waits for the queue's backoff (2 s).
    patient = await pipeline.new_patient()
    await pipeline.fault(status=409, count=1, method="POST", pathPattern="^/fhir/R4/?$")
    _height, weight = await pipeline.weight_and_height(patient, weight=97.0)
    await pipeline.settled(within=60)
    late = [e for e in pipeline.events() if e[3] == weight["id"]]
    assert late
    assert all(e[5] == "processed" and e[8] == 1 and e[7] is None for e in late)
    conflicts = [r for r in client_retries(pipeline) if r["status_code"] == 409]
    assert conflicts
    # Medplum's RateLimit `t` (seconds to the quota window's reset) is no wait for a 409.
    assert all(r["wait_seconds"] < 1.0 for r in conflicts)


async def test_ordinary_ratelimit_headers_cost_no_wait_and_the_quota_is_charged(
    pipeline: Pipeline,
) -> None:
    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient, weight=88.0)
    # A 503 on the worker's next request: with RateLimit on every answer, a client that took
    # `t` as a wait would pause for the rest of the quota window; this one backs off briefly.
    await pipeline.fault(status=503, count=1, method="POST", pathPattern="^/fhir/R4/?$")
    await pipeline.settled()
    mine = events_of(pipeline, "bmi", weight["id"])
    assert [e[5] for e in mine] == ["processed"]
    assert mine[0][8] == 1  # retried inside the client, not by the job queue
    unavailable = [r for r in client_retries(pipeline) if r["status_code"] == 503]
    assert unavailable
    assert all(r["wait_seconds"] < 1.0 for r in unavailable)

    stats = await pipeline.stats()
    charged = stats["fhir_quota"]["by_membership"]
    assert charged, "the stand-in charges every membership's FHIR requests"
