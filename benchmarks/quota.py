"""Medplum quota per clinical event: a scripted clinic day against a stand-in that enforces
and charges the FHIR quota as Medplum does (140 for a conditional create inside a bundle, 1 per
``_include``d resource, an internal transaction retry charged again; ``RateLimit`` on every
answer), with the production receiver and worker.

Phases, each drained before the next (``patients`` patients with a height written before the
Subscriptions exist, so they cause no events):

1. ``proposed``: a body weight per patient (both BMI bots propose);
2. ``unchanged``: an older weight arriving late (both bots: the suggestion stands);
3. ``no result``: a weight for patients without a height (both bots: insufficient evidence);
4. ``decision``: a clinician approves the results-review list (the BMI) of ``approvals``
   patients (the review loop);
5. ``burst``: ``burst`` newer weights per patient written back to back: coalesced per
   patient (``STARVIT_COALESCE_BY_PATIENT=bmi,obesity``, ``STARVIT_COALESCE_WINDOW_MS=500``),
   one computation superseding the pending Task.

Points per event come from the worker's own count (logged per event, ``quota_points``); the
stand-in's charge for the service membership is reported beside it (they should agree; the
worker's periodic Subscription health check adds a search now and then). Under the default
quota (50,000 points a minute) the run needs more than one quota minute: the workers pace to
the shared budget, and the 429 answers show whether they did so in time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str
from app.integrations.medplum import MedplumClient, MedplumClientConfig
from benchmarks.e2e import _stats, _sync
from benchmarks.servers import close_stack, peak_rss_mb
from benchmarks.writer import EPOCH, HEIGHT_LOINC, WEIGHT_LOINC, vital
from devtools.clinician import approve, login
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET, DevServer
from devtools.stack import Stack

if TYPE_CHECKING:
    from benchmarks.servers import Postgres

SERVICE_MEMBERSHIP = "pm-starvit-service"
DEFAULT_QUOTA = 50_000


@dataclass(frozen=True)
class QuotaScenario:
    name: str
    patients: int
    quota: int  # the service membership's FHIR points per minute
    approvals: int
    burst: int = 3
    phase_timeout: float = 300.0


def _partner(base_url: str) -> MedplumClient:
    return MedplumClient(
        MedplumClientConfig(
            base_url=base_url,
            client_id=PARTNER_CLIENT_ID,
            client_secret=PARTNER_CLIENT_SECRET,
            read_timeout=60.0,
        )
    )


async def _patients(base_url: str, count: int, *, height: bool) -> list[str]:
    async with _partner(base_url) as partner:
        out: list[str] = []
        for _ in range(count):
            created = await partner.create(
                {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01"}
            )
            patient = str(created.reference)
            if height:
                when = EPOCH - timedelta(days=50)
                await partner.create(vital(patient, HEIGHT_LOINC, 165, "cm", when))
            out.append(patient)
        return out


async def _weights(base_url: str, rows: list[tuple[str, float, Any]]) -> None:
    async with _partner(base_url) as partner:
        semaphore = asyncio.Semaphore(4)

        async def one(patient: str, kg: float, when: Any) -> None:
            async with semaphore:
                await partner.create(vital(patient, WEIGHT_LOINC, kg, "kg", when))

        await asyncio.gather(*(one(*row) for row in rows))


async def _approve(base_url: str, patients: list[str]) -> int:
    session = await login(base_url, "clinician-alice")
    done = 0
    try:
        for patient in patients:
            tasks, _ = await session.search(
                "Task", [("subject", patient), ("status", "requested"), ("_count", "50")]
            )
            for task in tasks:
                # The BMI is an item of the patient's results-review list: one decision.
                if task_code(task).startswith("results-review"):
                    await approve(session, str(task.get("id")))
                    done += 1
                    break
    finally:
        await session.aclose()
    return done


def task_code(task: JSONObject) -> str:
    for coding in get_objects(get_object(task, "code") or {}, "coding"):
        return get_str(coding, "code") or ""
    return ""


def _events(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return list(
            conn.execute(
                "SELECT id, handler, status, outcome, attempts FROM starvit.event_keys ORDER BY id"
            )
        )


def _settle(database_url: str, devserver: DevServer, timeout: float) -> bool:
    """Every delivered notification recorded and every event processed (quiet for 0.6 s)."""
    deadline = time.monotonic() + timeout
    quiet: float | None = None
    while time.monotonic() < deadline:
        stats = _stats(devserver)
        pending = stats.get("notifications", {})
        busy = int(pending.get("queued", 0)) + int(pending.get("in_flight", 0))
        open_events = [e for e in _events(database_url) if e[2] == "queued"]
        if busy == 0 and not open_events:
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet > 0.6:
                return True
        else:
            quiet = None
        time.sleep(0.2)
    return False


def _logged_points(stack: Stack) -> dict[int, int]:
    points: dict[int, int] = {}
    for process in stack.processes:
        for line in process.output:
            if '"event_processed"' not in line or "{" not in line:
                continue
            try:
                record = json.loads(line[line.index("{") :])
            except ValueError:
                continue
            points[int(record["event_id"])] = int(record.get("quota_points", 0))
    return points


def coalescing_stack(
    devserver: DevServer, database_url: str, *, by_patient: str, window_ms: int
) -> Stack:
    """The production receiver and worker with coalescing on (``by_patient``: the handlers
    coalesced per patient) and the periodic sweep off (every event comes from a
    notification)."""
    return Stack(
        devserver.base_url,
        database_url,
        extra_env={
            "STARVIT_SWEEP_INTERVAL_SECONDS": "0",
            "STARVIT_COALESCE_BY_PATIENT": by_patient,
            "STARVIT_COALESCE_WINDOW_MS": str(window_ms),
        },
    )


def run(pg: Postgres, scenario: QuotaScenario) -> dict[str, Any]:
    phases: dict[int, str] = {}
    started = time.monotonic()
    with (
        pg.fresh_database(scenario.name) as database_url,
        DevServer.start(
            env={"SUBSCRIPTION_RETRY_BASE_MS": "1000", "MEDPLUM_FHIR_QUOTA": str(scenario.quota)}
        ) as devserver,
    ):
        # A burst written back to back arrives within half a second.
        stack = coalescing_stack(devserver, database_url, by_patient="bmi,obesity", window_ms=500)
        try:
            stack.start_receiver(workers=1)
            base = devserver.base_url
            with_height = asyncio.run(_patients(base, scenario.patients, height=True))
            without_height = asyncio.run(
                _patients(base, max(1, scenario.patients // 3), height=False)
            )
            asyncio.run(_sync(stack, devserver, database_url))
            worker = stack.start_worker(4, 1)
            with httpx.Client(base_url=base, timeout=10) as http:
                http.post("_devserver/reset-quota").raise_for_status()
            _stats(devserver, reset=True)
            settled = True

            def phase(name: str) -> None:
                nonlocal settled
                settled = _settle(database_url, devserver, scenario.phase_timeout) and settled
                for event in _events(database_url):
                    phases.setdefault(int(event[0]), name)

            asyncio.run(_weights(base, [(p, 95.0, EPOCH) for p in with_height]))
            phase("proposed")
            older = EPOCH - timedelta(days=365)
            asyncio.run(_weights(base, [(p, 90.0, older) for p in with_height]))
            phase("unchanged")
            asyncio.run(_weights(base, [(p, 80.0, EPOCH) for p in without_height]))
            phase("no result")
            approved = asyncio.run(_approve(base, with_height[: scenario.approvals]))
            phase("decision")
            burst = [
                (p, 96.0 + i, EPOCH + timedelta(days=1 + i))
                for p in with_height
                for i in range(scenario.burst)
            ]
            asyncio.run(_weights(base, burst))
            phase("burst")
            stats = _stats(devserver)
            events = _events(database_url)
            logged = _logged_points(stack)
            rss = max(peak_rss_mb(worker.process.pid).values(), default=0.0)
        finally:
            close_stack(stack)
    elapsed = time.monotonic() - started
    by_outcome: dict[str, list[int]] = {}
    by_phase: dict[str, list[int]] = {}
    for event_id, handler, _status, outcome, _attempts in events:
        points = logged.get(int(event_id), 0)
        name = str(outcome)
        if handler == "review":
            name = f"decision ({outcome})"
        elif outcome == "proposed" and phases.get(int(event_id)) == "burst":
            # A newer suggestion cancelling the pending Task and withdrawing its proposal.
            name = "proposed (superseding)"
        by_outcome.setdefault(name, []).append(points)
        by_phase.setdefault(phases.get(int(event_id), "?"), []).append(points)
    quota = stats.get("fhir_quota", {})
    service_points = int(quota.get("by_membership", {}).get(SERVICE_MEMBERSHIP, 0))
    clinical = len([e for e in events if e[2] == "processed"])
    return {
        "scenario": scenario.name,
        "quota_per_minute": scenario.quota,
        "patients": scenario.patients,
        "approvals": approved,
        "events": len(events),
        "settled": settled,
        "points_by_outcome": {
            k: {"events": len(v), "mean": sum(v) / len(v), "max": max(v)}
            for k, v in sorted(by_outcome.items())
        },
        "points_by_phase": {
            k: {"events": len(v), "total": sum(v)} for k, v in sorted(by_phase.items())
        },
        "service_points_charged": service_points,
        "service_points_counted": sum(logged.values()),
        "events_per_quota_minute": clinical / (service_points / DEFAULT_QUOTA)
        if service_points
        else float("nan"),
        "throttled_429": int(quota.get("throttled", 0)),
        "job_retries": sum(max(0, int(e[4] or 0) - 1) for e in events),
        "coalesced": sum(1 for e in events if e[3] == "coalesced"),
        "elapsed_s": elapsed,
        "worker_peak_rss_mb": rss,
    }
