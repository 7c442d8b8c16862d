"""The dead letter end to end: an event that cannot succeed by retrying is failed at once with a
stable error code, ``starvit jobs list --status failed`` shows it to ops, and once the cause is
fixed ``starvit jobs retry`` replays it to the outcome it should have had."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import main as cli_main
from devtools.devserver import DevServer
from tests.integration.pipeline_support import Pipeline, days_ago, observation, running_pipeline

pytestmark = pytest.mark.integration

runner = CliRunner()
# Columns of Pipeline.events().
ID, HANDLER, RESOURCE_ID, STATUS, OUTCOME, ERROR_CODE, ATTEMPTS = 0, 1, 3, 5, 6, 7, 8


@dataclass(frozen=True)
class Listed:
    """One row of ``starvit jobs list``."""

    id: int
    handler: str
    reference: str
    status: str
    attempts: int
    result: str


def listed_rows(output: str) -> list[Listed]:
    lines = output.splitlines()
    assert lines[0].startswith("events: ")
    assert lines[1].split()[:2] == ["id", "handler"]
    rows: list[Listed] = []
    for line in lines[2:]:
        parts = line.split()
        rows.append(
            Listed(
                int(parts[0]),
                parts[1],
                parts[2],
                parts[3],
                int(parts[4]),
                parts[5] if len(parts) > 5 else "",
            )
        )
    return rows


def _starvit(*args: str) -> tuple[int, str, str]:
    # ``register_subcommands`` extends the one module-level Typer: only once per process.
    if not any(group.name == "jobs" for group in cli_main.cli.registered_groups):
        cli_main.register_subcommands()
    result = runner.invoke(cli_main.cli, list(args))
    return result.exit_code, result.stdout, result.stderr


async def starvit(*args: str) -> tuple[int, str, str]:
    """``starvit ARGS`` in this process. The commands run their own event loop (``asyncio.run``),
    so they run in a thread while the test's loop waits."""
    return await asyncio.to_thread(_starvit, *args)


@pytest.fixture
async def pipeline(
    devserver: DevServer, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Pipeline]:
    # The ops commands read the same database as the running service.
    monkeypatch.setenv("STARVIT_DATABASE_URL", database_url)
    # No periodic sweep: it would enqueue the failed resources again on its own.
    async with running_pipeline(
        devserver, database_url, STARVIT_SWEEP_INTERVAL_SECONDS="0"
    ) as running:
        yield running


async def clear_faults(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.delete(pipeline.devserver.base_url + "_devserver/fault")
        answer.raise_for_status()


def worker_log(pipeline: Pipeline, event: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for process in pipeline.stack.processes:
        if process.name != "worker":
            continue
        for line in process.output:
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and parsed.get("event") == event:
                found.append(parsed)
    return found


async def test_a_refused_event_is_dead_lettered_listed_and_replayed(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    height = (
        await pipeline.partner.create(observation(patient, "8302-2", 165, "cm", days_ago(60)))
    ).resource
    await pipeline.settled()
    [height_event, *_] = [e for e in pipeline.events() if e[RESOURCE_ID] == height["id"]]
    assert height_event[STATUS] == "processed"

    # Medplum refuses the worker's reads (an AccessPolicy changed under the service): a 403
    # does not heal by retrying, so the events of the new weight must fail at once.
    await pipeline.fault(
        status=403, count=100, method="POST", pathPattern="^/fhir/R4/?$", scope="fhir"
    )
    created = await pipeline.partner.create(observation(patient, "29463-7", 95, "kg", days_ago(30)))
    weight = created.resource
    await pipeline.settled(within=60)
    failed = [e for e in pipeline.events() if e[RESOURCE_ID] == weight["id"]]
    assert "bmi" in {e[HANDLER] for e in failed}
    for event in failed:
        assert event[STATUS] == "failed"
        assert event[ERROR_CODE] == "medplum_forbidden"
        assert event[ATTEMPTS] == 1  # dead-lettered on the first run, no backoff wasted
    failed_ids = sorted(e[ID] for e in failed)
    dead_lettered = {line["event_id"]: line for line in worker_log(pipeline, "event_failed")}
    for event_id in failed_ids:
        assert dead_lettered[event_id]["dead_lettered"] is True
        assert dead_lettered[event_id]["error_code"] == "medplum_forbidden"
    assert not await pipeline.tasks_for(patient)

    # What ops sees: the failed events with their reference, attempts and error code.
    code, out, err = await starvit("jobs", "list", "--status", "failed")
    assert (code, err) == (0, "")
    rows = listed_rows(out)
    assert sorted(r.id for r in rows) == failed_ids
    version = created.version_id
    for row in rows:
        assert row.reference == f"Observation/{weight['id']}/_history/{version}"
        assert (row.status, row.attempts, row.result) == ("failed", 1, "medplum_forbidden")
    assert f"failed={len(failed_ids)}" in out.splitlines()[0]

    # The cause is fixed; the dead letter is replayed. An event that did not fail is left alone.
    await clear_faults(pipeline)
    code, out, err = await starvit("jobs", "retry", *map(str, failed_ids), str(height_event[ID]))
    assert (code, err) == (0, "")
    for event_id in failed_ids:
        assert f"event {event_id}: queued again as job" in out
    assert f"event {height_event[ID]}: processed, not dead-lettered: left as is" in out
    await pipeline.settled(within=60)

    replayed = [e for e in pipeline.events() if e[ID] in failed_ids]
    for event in replayed:
        assert event[STATUS] == "processed", event
        assert event[ERROR_CODE] is None
    assert {e[HANDLER]: e[OUTCOME] for e in replayed}["bmi"] == "proposed"
    assert [e for e in pipeline.events() if e[ID] == height_event[ID]] == [height_event]
    # The outcome a clinician sees: the BMI suggestion waiting for review.
    pending = [
        t
        for t in await pipeline.tasks_for(patient)
        if t["status"] == "requested" and t["code"]["coding"][0]["code"].startswith("obesity.")
    ]
    assert len(pending) == 1
    assert "BMI 34.9" in pending[0]["code"]["text"]

    code, out, _ = await starvit("jobs", "list", "--status", "failed")
    assert code == 0
    assert listed_rows(out) == []


async def test_retrying_an_unknown_event_fails(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STARVIT_DATABASE_URL", database_url)
    code, _, err = await starvit("jobs", "retry", "987654")
    assert code == 1
    assert "event 987654: no such event" in err
