"""Medplum's FHIR quota end to end, against the quota-enforcing stand-in (which charges as the
real server does: 140 for a conditional create inside a bundle, 1 per ``_include``d resource):

* the client's own point count equals what the server charged;
* what an event spends, by outcome (proposed, unchanged, no result);
* workers sharing one budget drain a backlog under a small quota without a single 429.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.integrations.medplum import BundleRequest
from app.integrations.medplum.budget import quota_status
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, DevServer
from tests.integration.pipeline_support import (
    Pipeline,
    days_ago,
    fhir_client,
    observation,
    running_pipeline,
)

pytestmark = [pytest.mark.integration]
SERVICE = "pm-starvit-service"


async def charged(devserver: DevServer, membership: str) -> int:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(devserver.base_url + "_devserver/stats")).json()
    return int(stats["fhir_quota"]["by_membership"].get(membership, 0))


async def throttled(devserver: DevServer) -> int:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(devserver.base_url + "_devserver/stats")).json()
    return int(stats["fhir_quota"]["throttled"])


def processed_lines(pipeline: Pipeline) -> dict[int, dict[str, Any]]:
    """The worker's ``event_processed`` log lines by event id."""
    lines: dict[int, dict[str, Any]] = {}
    for process in pipeline.stack.processes:
        for line in process.output:
            if '"event_processed"' not in line:
                continue
            record = json.loads(line[line.index("{") :])
            lines[int(record["event_id"])] = record
    return lines


async def test_the_clients_point_count_is_what_medplum_charged(devserver: DevServer) -> None:
    async with fhir_client(devserver.base_url, ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET) as admin:
        patient = await admin.create({"resourceType": "Patient", "gender": "male"})
        assert patient.reference
        before_server = await charged(devserver, "pm-ops-admin")
        before_client = admin.estimated_points
        key = uuid.uuid4().hex
        weight = observation(patient.reference, "29463-7", 80, "kg", "2025-03-01T09:00:00Z")
        weight["identifier"] = [{"system": "urn:test:points", "value": key}]
        created = await admin.create(weight, if_none_exist=f"identifier=urn:test:points|{key}")
        await admin.create(weight, if_none_exist=f"identifier=urn:test:points|{key}")  # a match
        await admin.create(observation(patient.reference, "8302-2", 180, "cm", "2025-01-01"))
        obs_id = str(created.resource.get("id"))
        version = str(created.version_id)
        await admin.batch(
            [
                BundleRequest.read("Patient", patient.reference.split("/")[1]),
                BundleRequest.vread("Observation", obs_id, version),
                BundleRequest.search(
                    "Observation", f"subject={patient.reference}&_include=Observation:subject"
                ),
                BundleRequest("GET", f"Observation/{obs_id}/_history?_count=5"),
                BundleRequest.search("Task", f"subject={patient.reference}"),
            ]
        )
        other = uuid.uuid4().hex
        tagged = {**weight, "identifier": [{"system": "urn:test:points", "value": other}]}
        await admin.transaction(
            [
                BundleRequest.create(tagged, if_none_exist=f"identifier=urn:test:points|{other}"),
                BundleRequest.create(weight, if_none_exist=f"identifier=urn:test:points|{key}"),
                BundleRequest.create(observation(patient.reference, "8302-2", 181, "cm", "2025")),
            ]
        )
        spent_client = admin.estimated_points - before_client
        spent_server = await charged(devserver, "pm-ops-admin") - before_server
    assert spent_server == spent_client
    # 120 + 20 + 100 (standalone creates), 1 + 1 + (20 + 1) + 10 + 20 (the batch),
    # 140 + 40 + 100 (the transaction: a new and a matched conditional create, a plain create).
    assert spent_client == 240 + 53 + 280


@pytest.fixture
async def pipeline(devserver: DevServer, database_url: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        devserver, database_url, STARVIT_SWEEP_INTERVAL_SECONDS="0"
    ) as running:
        yield running


async def test_what_an_event_spends_by_outcome(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    # A height alone: both BMI bots have no weight (no result).
    await pipeline.partner.create(observation(patient, "8302-2", 165, "cm", days_ago(60)))
    await pipeline.settled()
    # A weight: both propose.
    await pipeline.partner.create(observation(patient, "29463-7", 95, "kg", days_ago(5)))
    await pipeline.settled()
    # An older weight arriving late: both still rest on the newest weight (unchanged).
    await pipeline.partner.create(observation(patient, "29463-7", 90, "kg", days_ago(30)))
    await pipeline.settled()
    # Another patient with a normal BMI: the BMI is listed, the obesity bot looks for a
    # referral to withdraw and never reads the problem list (a deferred search).
    slim = await pipeline.new_patient()
    await pipeline.partner.create(observation(slim, "8302-2", 165, "cm", days_ago(60)))
    await pipeline.settled()
    await pipeline.partner.create(observation(slim, "29463-7", 60, "kg", days_ago(5)))
    await pipeline.settled()
    lines = processed_lines(pipeline)
    spent: dict[tuple[str, str], list[int]] = {}
    for event in pipeline.events():
        record = lines[int(event[0])]
        spent.setdefault((str(event[1]), str(event[6])), []).append(int(record["quota_points"]))
    # The first batch: the current version 1, the Patient 1, the merged weight-and-height
    # search 20. An obesity event with a BMI of 30 or more adds the problem list (20); a
    # proposal the review Tasks (20) and three plain creates (300); no AuditEvent.
    assert spent[("bmi", "insufficient_evidence")] == [22, 22], spent
    assert spent[("obesity", "insufficient_evidence")] == [22, 22], spent
    assert spent[("bmi", "proposed")] == [342, 342], spent
    assert spent[("obesity", "proposed")] == [362], spent
    assert spent[("bmi", "unchanged")] == [22], spent
    assert spent[("obesity", "unchanged")] == [42], spent
    # The slim patient: the obesity bot's Retract reads the review Tasks and finds nothing.
    [(_, slim_outcome)] = [
        k
        for k in spent
        if k[0] == "obesity" and k[1] not in ("insufficient_evidence", "proposed", "unchanged")
    ]
    assert spent[("obesity", slim_outcome)] == [42], spent
    # The service wrote exactly one suggestion per bot: the BMI as an item of the results-review
    # list, the obesity referral as its own Task.
    tasks = await pipeline.tasks_for(patient)
    kinds = sorted(t["code"]["coding"][0]["code"].split(".")[0] for t in tasks)
    assert kinds == ["obesity", "results-review"], kinds


async def test_paced_workers_drain_a_backlog_without_a_429(
    devserver: DevServer, database_url: str
) -> None:
    # A small quota in short windows: the backlog needs several windows to drain.
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            devserver.base_url + "_devserver/config",
            json={"fhirQuota": 4000, "fhirQuotaWindowMs": 8000},
        )
        answer.raise_for_status()
        await http.post(devserver.base_url + "_devserver/reset-quota")
    async with running_pipeline(
        devserver,
        database_url,
        STARVIT_SWEEP_INTERVAL_SECONDS="0",
        STARVIT_MEDPLUM_QUOTA_RESERVE="0.15",
    ) as pipeline:
        before = await throttled(devserver)
        patients = [await pipeline.new_patient() for _ in range(6)]
        for patient in patients:
            await pipeline.weight_and_height(patient)
        await pipeline.settled(within=120)
        proposed = [e for e in pipeline.events() if e[6] == "proposed"]
        assert len(proposed) == 2 * len(patients)
        assert all(e[5] == "processed" for e in pipeline.events())
        spent = await charged(devserver, SERVICE)
        assert spent > 4000, "the backlog needed more than one window"
        assert await throttled(devserver) == before, "no 429: the workers slowed down in time"
        retried = [e for e in pipeline.events() if int(e[8]) > 1]
        assert retried == [], "no job attempt failed"
        # What ops see: the budget as Medplum last reported it, and an empty queue.
        pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            database_url, min_size=1, max_size=1, open=False, connection_class=AsyncConnection
        )
        async with pool:
            status = await quota_status(pool)
        assert status.limit is not None
        assert 0 < status.limit <= 4000
        assert status.queued_events == 0
        assert status.oldest_queued_age_seconds is None
