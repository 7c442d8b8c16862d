"""Dead letters that heal: events that failed during a Medplum outage (every attempt answered
503) are dead-lettered as transient, retried by the worker on its own slow, bounded schedule
while the outage lasts, and processed once it ends, with nothing run by hand. A permanent
failure (403) stays failed with its error code until ``starvit jobs retry --status failed``.

Time is compressed through the settings: a job gets 2 attempts a second apart, a dead letter is
retried 2 s after it failed, then 4 s, 8 s... (the production defaults are 8 attempts over
about 4.5 minutes and 10 minutes doubling, 6 times), so the outage here spans several rounds
of automatic retries, as a 10-minute outage does with the defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.devserver import DevServer
from tests.integration.faults_support import (
    assert_each_event_once,
    log_events,
    query,
    wait_until,
)
from tests.integration.pipeline_support import Pipeline, running_pipeline
from tests.integration.test_dead_letter import starvit
from tests.integration.test_pipeline import live

pytestmark = pytest.mark.integration

COMPRESSED_SCHEDULE = {
    "STARVIT_SWEEP_INTERVAL_SECONDS": "0",  # the sweep never re-enqueues failed events anyway
    "STARVIT_JOB_MAX_ATTEMPTS": "2",
    "STARVIT_JOB_RETRY_BASE_SECONDS": "0.5",
    "STARVIT_MEDPLUM_MAX_RETRY_WAIT": "0.2",
    "STARVIT_DEAD_LETTER_RETRY_INTERVAL_SECONDS": "1",
    "STARVIT_DEAD_LETTER_RETRY_AFTER_SECONDS": "2",
    "STARVIT_DEAD_LETTER_MAX_AUTO_RETRIES": "12",
}
# The worker's Medplum calls: batch reads and transaction writes are Bundles posted to the base.
BUNDLES = "^/fhir/R4/?$"


@pytest.fixture
async def pipeline(
    devserver: DevServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pipeline]:
    monkeypatch.setenv("STARVIT_DATABASE_URL", database_url)  # for `starvit jobs retry`
    async with running_pipeline(devserver, database_url, **COMPRESSED_SCHEDULE) as running:
        yield running


def dead_letters(url: str) -> list[tuple[Any, ...]]:
    """(id, resource_id, error_code, transient, auto_retries) of every failed event."""
    return query(
        url,
        "SELECT id, resource_id, error_code, transient, auto_retries FROM starvit.event_keys "
        "WHERE status = 'failed' ORDER BY id",
    )


async def clear_faults(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient() as http:
        (await http.delete(pipeline.devserver.base_url + "_devserver/fault")).raise_for_status()


async def test_dead_letters_of_a_medplum_outage_heal_once_it_ends(pipeline: Pipeline) -> None:
    url = pipeline.database_url
    # A permanent failure first: Medplum refuses the first Bundle of one event (403).
    refused_patient = await pipeline.new_patient()
    await pipeline.fault(status=403, count=1, pathPattern=BUNDLES)
    await pipeline.weight_and_height(refused_patient)
    await wait_until(lambda: dead_letters(url), within=60)
    [permanent] = dead_letters(url)
    assert permanent[2] == "medplum_forbidden"
    assert permanent[3] is False
    await pipeline.settled(within=60)

    # The outage: every Bundle the worker posts is answered 503.
    await pipeline.fault(status=503, count=1_000_000, pathPattern=BUNDLES)
    patients = [await pipeline.new_patient() for _ in range(3)]
    for patient in patients:
        await pipeline.weight_and_height(patient)

    def transient_letters() -> list[tuple[Any, ...]]:
        return [row for row in dead_letters(url) if row[0] != permanent[0]]

    # Each dead letter is given another chance on its own while the outage lasts, and fails
    # again: the schedule neither gives up after one round nor spins.
    await wait_until(
        lambda: (
            (rows := transient_letters())
            and len(rows) >= 2 * len(patients)
            and all(r[4] >= 2 for r in rows)
        ),
        within=120,
    )
    during = transient_letters()
    assert {r[2] for r in during} == {"medplum_unavailable"}
    assert all(r[3] is True for r in during)
    assert all(
        r[4] < int(COMPRESSED_SCHEDULE["STARVIT_DEAD_LETTER_MAX_AUTO_RETRIES"]) for r in during
    )
    for patient in patients:
        assert live(await pipeline.tasks_for(patient)) == []

    # The outage ends. Nothing is run by hand.
    await clear_faults(pipeline)
    await wait_until(lambda: not transient_letters(), within=120)
    await pipeline.settled(within=60)
    for patient in patients:
        assert len(live(await pipeline.tasks_for(patient))) == 1
    healed = query(
        url,
        "SELECT status, auto_retries FROM starvit.event_keys WHERE id = ANY(%s)",
        [r[0] for r in during],
    )
    assert {status for status, _ in healed} == {"processed"}
    assert all(retries >= 2 for _, retries in healed)

    # The permanent failure is still there, with its error code, untouched by the schedule.
    assert dead_letters(url) == [permanent]
    worker = next(p for p in pipeline.stack.processes if p.name == "worker")
    assert log_events(worker, "dead_letters_retried")

    # Someone acts on it: the bulk retry replays every dead letter.
    code, out, err = await starvit("jobs", "retry", "--status", "failed")
    assert code == 0, out + err
    assert "dead-lettered events to retry: 1" in out
    await pipeline.settled(within=60)
    assert dead_letters(url) == []
    assert query(url, "SELECT status FROM starvit.event_keys WHERE id = %s", permanent[0]) == [
        ("processed",)
    ]
    # The patient's other event had made the suggestion already: the replay adds none.
    assert len(live(await pipeline.tasks_for(refused_patient))) == 1
    assert_each_event_once(url)
