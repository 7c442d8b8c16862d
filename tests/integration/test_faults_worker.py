"""The worker against the faults that used to stop it silently: a PostgreSQL restart in the
middle of a burst (it reconnects and processes everything, nothing run by hand), a child of
``--processes 2`` killed mid-burst (the supervisor restarts it and the dead child's jobs are
requeued), and a database that never comes back (it gives up with a non-zero status and says
why at ERROR). In each: every event processed once, one suggestion per patient."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from devtools.devserver import DevServer
from devtools.stack import ServiceProcess
from tests.integration.faults_support import (
    StoppablePostgres,
    assert_each_event_once,
    event_rows,
    log_events,
    query,
    stoppable_postgres,
    wait_until,
)
from tests.integration.pipeline_support import Pipeline, running_pipeline
from tests.integration.test_pipeline import live

pytestmark = pytest.mark.integration

FAST_RECOVERY = {
    # No periodic sweep: everything here must come from notifications and the worker itself.
    "STARVIT_SWEEP_INTERVAL_SECONDS": "0",
    "STARVIT_JOB_STALLED_SECONDS": "4",
    "STARVIT_WORKER_HEARTBEAT_SECONDS": "2",
}


@pytest.fixture
def postgres() -> Iterator[StoppablePostgres]:
    yield from stoppable_postgres()


@pytest.fixture
async def pipeline(devserver: DevServer, postgres: StoppablePostgres) -> AsyncIterator[Pipeline]:
    url = postgres.new_database("starvit_worker_faults")
    async with running_pipeline(devserver, url, **FAST_RECOVERY) as running:
        yield running


def worker_process(pipeline: Pipeline) -> ServiceProcess:
    [worker] = [p for p in pipeline.stack.processes if p.name == "worker"]
    return worker


async def burst(pipeline: Pipeline, patients: int) -> list[str]:
    """``patients`` new patients, each with a height and a weight (one BMI suggestion each)."""
    made = await asyncio.gather(*(pipeline.new_patient() for _ in range(patients)))
    await asyncio.gather(*(pipeline.weight_and_height(p) for p in made))
    return list(made)


async def settled(pipeline: Pipeline, within: float = 120) -> None:
    """``Pipeline.settled``, showing the workers' last log lines when it does not happen."""
    try:
        await pipeline.settled(within=within)
    except AssertionError as error:
        lines = [
            line for p in pipeline.stack.processes if p.name == "worker" for line in p.output[-60:]
        ]
        jobs = query(
            pipeline.database_url,
            "SELECT id, status, lock, worker_id, attempts, scheduled_at FROM procrastinate_jobs "
            "WHERE status <> 'succeeded' ORDER BY id",
        )
        workers = query(pipeline.database_url, "SELECT * FROM procrastinate_workers")
        raise AssertionError(
            f"{error}\nunfinished jobs: {jobs}\nqueue workers: {workers}\nworker log:\n"
            + "\n".join(lines)
        ) from None


async def one_suggestion_each(pipeline: Pipeline, patients: list[str]) -> None:
    for patient in patients:
        tasks = live(await pipeline.tasks_for(patient))
        assert len(tasks) == 1, (patient, [t["id"] for t in tasks])


async def test_the_worker_processes_everything_after_a_database_restart(
    pipeline: Pipeline, postgres: StoppablePostgres
) -> None:
    before = await burst(pipeline, 2)
    await pipeline.settled(within=60)

    # A burst, and the database restarts under it (a failover, a minor-version upgrade).
    during_task = asyncio.create_task(burst(pipeline, 4))
    await asyncio.sleep(0.3)
    postgres.stop()
    await asyncio.sleep(1.5)
    postgres.start()
    restarted_at = datetime.now(UTC)
    during = await during_task
    after = await burst(pipeline, 2)

    await settled(pipeline)
    worker = worker_process(pipeline)
    assert worker.alive(), "\n".join(worker.output[-30:])
    assert log_events(worker, "worker_reconnecting"), "the worker never noticed the outage"
    assert not log_events(worker, "worker_gave_up")
    resumed = [
        datetime.fromisoformat(e["timestamp"])
        for e in log_events(worker, "worker_started")
        if datetime.fromisoformat(e["timestamp"]) >= restarted_at
    ]
    assert resumed, "no new worker session after the restart"
    print(  # noqa: T201 - the figure, for the test log
        f"worker session resumed {(resumed[0] - restarted_at).total_seconds():.2f} s after the "
        f"database restart; reconnect attempts: {len(log_events(worker, 'worker_reconnecting'))}"
    )
    assert all(row[5] == "processed" for row in event_rows(pipeline.database_url))
    await one_suggestion_each(pipeline, before + during + after)
    assert_each_event_once(pipeline.database_url)


async def test_a_killed_child_is_restarted_and_its_jobs_are_recovered(
    pipeline: Pipeline,
) -> None:
    worker_process(pipeline).stop()
    pipeline.stack.processes[:] = [p for p in pipeline.stack.processes if p.name != "worker"]
    supervisor = pipeline.stack.start_worker(processes=2)
    url = pipeline.database_url

    def alive_pids() -> set[int]:
        rows = query(
            url,
            "SELECT pid FROM starvit.worker_heartbeats WHERE last_beat > now() - interval '6 s'",
        )
        return {int(r[0]) for r in rows}

    def two_alive() -> set[int]:
        pids = alive_pids()
        return pids if len(pids) == 2 else set()

    first = await wait_until(two_alive, within=60)
    patients_task = asyncio.create_task(burst(pipeline, 6))
    await wait_until(
        lambda: query(url, "SELECT count(*) FROM starvit.event_keys")[0][0] > 0, within=30
    )
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    patients = await patients_task

    def replaced_alive() -> set[int]:
        pids = two_alive()
        return pids if victim not in pids else set()

    replaced = await wait_until(replaced_alive, within=60)
    assert len(replaced - first) == 1
    assert supervisor.alive()
    assert [e["exit_code"] for e in log_events(supervisor, "worker_child_exited")] == [
        -signal.SIGKILL
    ]
    assert len(log_events(supervisor, "worker_child_restarted")) == 1

    await settled(pipeline)
    assert all(row[5] == "processed" for row in event_rows(url))
    await one_suggestion_each(pipeline, patients)
    assert_each_event_once(url)

    # The liveness check sees both children (the restarted one included) and nothing waiting.
    check = pipeline.stack.run("jobs", "workers")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "alive workers: 2" in check.stdout
    assert "oldest unstarted event: none waiting" in check.stdout


async def test_a_worker_that_must_stop_exits_non_zero_and_says_why(
    devserver: DevServer, postgres: StoppablePostgres
) -> None:
    url = postgres.new_database("starvit_worker_gives_up")
    async with running_pipeline(
        devserver, url, **FAST_RECOVERY, STARVIT_WORKER_RECONNECT_LIMIT_SECONDS="2"
    ) as pipeline:
        worker = worker_process(pipeline)
        postgres.stop()
        began = time.monotonic()
        await wait_until(lambda: not worker.alive(), within=60)
        print(f"worker gave up {time.monotonic() - began:.1f} s after the database stopped")  # noqa: T201
        assert worker.process.returncode == 3
        [gave_up] = log_events(worker, "worker_gave_up")
        assert gave_up["level"] == "error"
        assert gave_up["reason"]
        postgres.start()
        # The liveness check notices once its heartbeat is three intervals old.
        check = await wait_until(
            lambda: (run := pipeline.stack.run("jobs", "workers")).returncode == 1 and run,
            within=30,
        )
        assert "alive workers: 0" in check.stdout
        assert "no worker alive" in check.stderr
