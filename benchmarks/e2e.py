"""End to end: Observations written to the Medplum stand-in -> rest-hook notification ->
receiver -> worker -> pending Task, with the production processes (``starvit serve``,
``starvit worker``) and Subscriptions synced by ``sync_subscriptions``.

Two scenarios share this module:

* ``live``: the worker runs while the writer writes at a fixed rate; per-event latency and the
  backlog over time.
* ``backlog``: the writer writes with no worker running; once every event is recorded the
  worker starts and drains the backlog: the worker tier's throughput (used for scale-out).

What is timed: an event's latency is ``event_keys.processed_at`` (PostgreSQL ``now()`` when the
worker records the event as processed, right after Medplum answered the write transaction that
created the Task, so the Task is readable by then) minus the time the writer had *scheduled*
the Observation's write (both read the same machine clock). ``received_at`` (when the receiver
committed the event key) splits it into the notification leg and the queue + processing leg.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.settings import load_settings
from app.subscriptions.service import sync_subscriptions
from app.wiring import medplum_client
from benchmarks.loadgen import percentile
from benchmarks.servers import CpuMeter, close_stack, peak_rss_mb
from benchmarks.writer import EPOCH, HEIGHT_LOINC, vital
from devtools.devserver import (
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    PROJECT_ROOT,
    SERVICE_CLIENT_SECRET,
    DevServer,
)
from devtools.stack import Stack

if TYPE_CHECKING:
    from benchmarks.servers import Postgres

EVENTS_PER_OBSERVATION = 2  # a body weight notifies the `bmi` and the `obesity` Subscriptions
# The latency and scale-out scenarios measure the service, not Medplum's quota: the stand-in's
# FHIR quota is raised far above what they spend (at the default 50,000 points a minute a
# 50 events/s run is throttled within seconds). Everything else is as Medplum does it.
DEVSERVER_EXTRA_ENV: dict[str, str] = {"MEDPLUM_FHIR_QUOTA": "100000000"}
WORKER_CONCURRENCY = 4  # Settings.worker_concurrency's default


@dataclass(frozen=True)
class Scenario:
    name: str
    observations: int
    rate: float  # Observations written per second
    patients: int
    worker_processes: int = 1
    backlog: bool = False  # write everything first, then start the worker(s)
    drain_timeout: float = 240.0


@dataclass
class Sampler:
    """The queued-event count over time (every ``interval`` seconds, in a thread)."""

    database_url: str
    interval: float = 0.5
    samples: list[tuple[float, int, int, int]] = field(
        default_factory=list[tuple[float, int, int, int]]
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'processed'), count(*), "
                    "(SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing' "
                    "AND queue_name = 'events') FROM starvit.event_keys"
                ).fetchone()
                assert row is not None
                self.samples.append((time.time(), int(row[0]), int(row[1]), int(row[2])))
                self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


async def _populate(base_url: str, patients: int) -> list[str]:
    """Patients with a body height (written before the Subscriptions exist: no events)."""
    config = MedplumClientConfig(
        base_url=base_url,
        client_id=PARTNER_CLIENT_ID,
        client_secret=PARTNER_CLIENT_SECRET,
        read_timeout=60.0,
    )
    async with MedplumClient(config) as partner:
        semaphore = asyncio.Semaphore(8)

        async def one(index: int) -> str:
            async with semaphore:
                created = await partner.create(
                    {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01"}
                )
                patient = str(created.reference)
                height = vital(patient, HEIGHT_LOINC, 165, "cm", EPOCH - timedelta(days=50))
                await partner.create(height)
                return patient

        return list(await asyncio.gather(*(one(i) for i in range(patients))))


async def _sync(stack: Stack, devserver: DevServer, database_url: str) -> int:
    settings = load_settings(
        medplum_base_url=devserver.base_url,
        medplum_client_secret=SERVICE_CLIENT_SECRET,
        webhook_secrets=stack.webhook_secret,
        receiver_url=stack.receiver_url,
        database_url=database_url,
    )
    async with medplum_client(settings) as medplum:
        return len(await sync_subscriptions(medplum, settings))


def _park_sweep(database_url: str) -> None:
    """Set every bot's sweep watermark ten minutes ahead: the periodic sweep still runs (its
    searches are counted) but re-discovers neither the set-up data nor the run's Observations,
    so every measured event comes from a notification."""
    from bots import ALL_BOTS  # noqa: PLC0415

    with psycopg.connect(database_url, autocommit=True) as conn:
        for bot in ALL_BOTS:
            conn.execute(
                "INSERT INTO starvit.sweep_watermarks (handler, since) "
                "VALUES (%s, now() + interval '10 minutes') ON CONFLICT (handler) DO UPDATE "
                "SET since = EXCLUDED.since",
                (bot.declaration.name,),
            )


def _stats(devserver: DevServer, reset: bool = False) -> dict[str, Any]:
    with httpx.Client(base_url=devserver.base_url, timeout=10) as http:
        if reset:
            http.post("_devserver/reset-stats").raise_for_status()
            return {}
        return dict(http.get("_devserver/stats").json())


def _write(config: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "benchmarks.writer", json.dumps(config)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError("the writer failed:\n" + done.stderr[-3000:])
    return dict(json.loads(done.stdout))


def _wait_until(probe: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(interval)
    return bool(probe())


def _counts(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FROM starvit.event_keys"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _events(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return list(
            conn.execute(
                "SELECT e.resource_id, e.handler, e.status, e.outcome, "
                "extract(epoch FROM e.received_at), extract(epoch FROM e.processed_at), "
                "e.medplum_requests, e.attempts, e.source, "
                "(SELECT extract(epoch FROM min(v.at)) FROM procrastinate_events v "
                "WHERE v.job_id = e.job_id AND v.type = 'started'), "
                "(SELECT extract(epoch FROM max(v.at)) FROM procrastinate_events v "
                "WHERE v.job_id = e.job_id AND v.type = 'succeeded') "
                "FROM starvit.event_keys e"
            )
        )


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.5) * 1000,
        "p90": percentile(ordered, 0.9) * 1000,
        "p99": percentile(ordered, 0.99) * 1000,
        "max": ordered[-1] * 1000 if ordered else float("nan"),
    }


def run(pg: Postgres, scenario: Scenario) -> dict[str, Any]:
    expected = scenario.observations * EVENTS_PER_OBSERVATION
    with (
        pg.fresh_database(scenario.name) as database_url,
        DevServer.start(
            env={"SUBSCRIPTION_RETRY_BASE_MS": "1000", **DEVSERVER_EXTRA_ENV}
        ) as devserver,
    ):
        stack = Stack(devserver.base_url, database_url)
        try:
            receiver = stack.start_receiver(workers=1)
            patients = asyncio.run(_populate(devserver.base_url, scenario.patients))
            asyncio.run(_sync(stack, devserver, database_url))
            _park_sweep(database_url)
            worker = None
            if not scenario.backlog:
                worker = stack.start_worker(WORKER_CONCURRENCY, scenario.worker_processes)
            _stats(devserver, reset=True)
            pids = {"receiver": receiver.process.pid, "devserver": devserver.process.pid}
            if pg.pid():
                pids["postgres"] = pg.pid() or 0
            if worker is not None:
                pids["worker"] = worker.process.pid
            meter = CpuMeter(pids)
            sampler = Sampler(database_url)
            meter.start()
            cpu_started = time.time()
            sampler.start()
            written = _write(
                {
                    "base_url": devserver.base_url,
                    "patients": patients,
                    "count": scenario.observations,
                    "rate": scenario.rate,
                }
            )
            write_end = time.time()
            drain_started = write_end
            if scenario.backlog:
                _wait_until(lambda: _counts(database_url)[1] >= expected, 60)
                meter.stop()
                receive_meter = dict(meter.used)
                worker = stack.start_worker(WORKER_CONCURRENCY, scenario.worker_processes)
                drain_started = time.time()
                meter = CpuMeter({**pids, "worker": worker.process.pid})
                meter.start()
                # Every worker process has started (its imports are not in the figures); the
                # events processed before this moment are left out of the CPU per event.
                cpu_started = time.time()
            else:
                receive_meter = {}
            drained = _wait_until(
                lambda: _counts(database_url)[0] >= expected, scenario.drain_timeout
            )
            drained_at = time.time()
            meter.stop()
            sampler.stop()
            stats = _stats(devserver)
            assert worker is not None
            rss = {
                "receiver": max(peak_rss_mb(receiver.process.pid).values(), default=0.0),
                "worker": max(peak_rss_mb(worker.process.pid).values(), default=0.0),
            }
            events = _events(database_url)
        finally:
            close_stack(stack)
    return summarise(
        scenario,
        written=written,
        events=events,
        stats=stats,
        meter=meter,
        receive_meter=receive_meter,
        rss=rss,
        samples=sampler.samples,
        times={
            "write_end": write_end,
            "drain_started": drain_started,
            "drained_at": drained_at,
            "cpu_started": cpu_started,
        },
        drained=drained,
    )


def summarise(
    scenario: Scenario,
    *,
    written: dict[str, Any],
    events: list[tuple[Any, ...]],
    stats: dict[str, Any],
    meter: CpuMeter,
    receive_meter: dict[str, float],
    rss: dict[str, float],
    samples: list[tuple[float, int, int, int]],
    times: dict[str, float],
    drained: bool,
) -> dict[str, Any]:
    records: list[list[Any]] = written["records"]
    scheduled = {r[4]: r[0] for r in records if r[3] == 201 and r[4]}
    write_ms = [(r[2] - r[0]) for r in records if r[3] == 201]
    processed = [e for e in events if e[2] == "processed"]
    outcomes: dict[str, int] = {}
    for e in events:
        key = str(e[3] or e[2])
        outcomes[key] = outcomes.get(key, 0) + 1
    latency: list[float] = []
    proposed: list[float] = []
    notify_leg: list[float] = []
    work_leg: list[float] = []
    for resource_id, _bot, _status, outcome, received, done, *_ in processed:
        start = scheduled.get(resource_id)
        if start is None or done is None:
            continue
        latency.append(float(done) - start)
        if outcome == "proposed":
            proposed.append(float(done) - start)
        notify_leg.append(float(received) - start)
        work_leg.append(float(done) - float(received))
    done_times = sorted(float(e[5]) for e in processed if e[5] is not None)
    first_done = done_times[0] if done_times else float("nan")
    last_done = done_times[-1] if done_times else float("nan")
    start_wall = float(written["start"])
    count = len(processed)
    fhir = stats.get("fhir", {})
    routes: dict[str, int] = dict(fhir.get("by_route", {}))
    writes_by_generator = sum(1 for r in records if r[3] in (200, 201))
    service_requests = int(fhir.get("total", 0)) - writes_by_generator
    routes["POST create"] = routes.get("POST create", 0) - writes_by_generator
    tokens = int(stats.get("token", {}).get("requests", 0)) - int(written["token_requests"])
    peak_backlog = max((total - done for _, done, total, _ in samples), default=0)
    running = [doing for t, done, total, doing in samples if total > done]
    worker_cpu = meter.used.get("worker", 0.0)
    # The events the CPU meter saw processed (all of them, but in a backlog drain those done
    # while a second worker process was still starting).
    cpu_events = sum(1 for t in done_times if t >= times["cpu_started"])
    window = meter.wall
    # The job's run as procrastinate recorded it (started -> succeeded, the last attempt's),
    # and the wait before it (event key committed -> job started).
    durations = [float(e[10]) - float(e[9]) for e in processed if e[9] and e[10]]
    waits = [float(e[9]) - float(e[4]) for e in processed if e[9]]
    by_outcome: dict[str, list[int]] = {}
    for e in processed:
        by_outcome.setdefault(str(e[3]), []).append(int(e[6] or 0))
    result: dict[str, Any] = {
        "processing_ms": _ms(durations),
        "queue_wait_ms": _ms(waits),
        "requests_by_outcome": {
            outcome: {"events": len(v), "mean": sum(v) / len(v), "max": max(v)}
            for outcome, v in sorted(by_outcome.items())
        },
        "scenario": scenario.name,
        "observations": scenario.observations,
        "rate": scenario.rate,
        "patients": scenario.patients,
        "worker_processes": scenario.worker_processes,
        "worker_concurrency": WORKER_CONCURRENCY,
        "backlog_mode": scenario.backlog,
        "writes_ok": writes_by_generator,
        "write_duration_s": max(r[0] for r in records) - start_wall if records else 0.0,
        "write_ms": _ms(write_ms),
        "events_expected": scenario.observations * EVENTS_PER_OBSERVATION,
        "events_recorded": len(events),
        "events_processed": count,
        "outcomes": outcomes,
        "retried_events": sum(1 for e in events if (e[7] or 0) > 1),
        "drained": drained,
        "latency_ms": _ms(latency),
        "latency_samples": len(latency),
        "latency_proposed_ms": _ms(proposed),
        "notification_leg_ms": _ms(notify_leg),
        "queue_and_processing_ms": _ms(work_leg),
        "peak_backlog_events": peak_backlog,
        "drain_after_writes_s": max(0.0, last_done - times["write_end"]) if done_times else None,
        "processing_span_s": last_done - first_done,
        "throughput_events_per_s": (count - 1) / (last_done - first_done)
        if count > 1 and last_done > first_done
        else 0.0,
        "drain_from_worker_start_s": times["drained_at"] - times["drain_started"],
        "medplum_requests_total": service_requests,
        "medplum_requests_by_route": {k: v for k, v in sorted(routes.items()) if v},
        "medplum_requests_per_event": service_requests / count if count else float("nan"),
        # The worker sends each event's reads and writes as bundles (POST batch at the
        # stand-in); plain searches (GET search-type) come from the periodic sweep.
        "event_path_requests_per_event": (
            routes.get("POST batch", 0) / count if count else float("nan")
        ),
        "sweep_requests": routes.get("GET search-type", 0),
        "worker_counted_requests_per_event": (
            sum(int(e[6] or 0) for e in processed) / count if count else float("nan")
        ),
        "token_requests": tokens,
        "measured_window_s": window,
        "cpu_s": dict(meter.used),
        "receive_phase_cpu_s": receive_meter,
        "cpu_events": cpu_events,
        "worker_cpu_ms_per_event": worker_cpu / cpu_events * 1000 if cpu_events else float("nan"),
        "peak_rss_mb": rss,
        "jobs_running_while_backlogged": sum(running) / len(running) if running else 0.0,
        "backlog_samples": [
            (round(t - start_wall, 2), total - done)
            for t, done, total, _ in samples
            if t >= start_wall
        ],
    }
    return result
