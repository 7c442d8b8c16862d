"""The reconciliation sweep after a busy window with delivery off: 5,000 weights written within
one minute and no Subscription to deliver them. Runs with a small budget (at most 4 pages of
250 per handler) must each make progress and, together, recover every one of them exactly once,
with a lag figure ops can read. The old sweep reread the same 2,000 resources of the window on
every run and never moved its watermark."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from procrastinate import App

from app.events.repository import EventRepository
from app.events.sweep import RESUME_SLACK, sweep
from app.persistence.database import Database
from app.settings import load_settings
from app.wiring import handler_registry, medplum_client, open_database
from devtools.devserver import (
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    SERVICE_CLIENT_ID,
    SERVICE_CLIENT_SECRET,
    DevServer,
)
from devtools.resources import vital_sign
from tests.integration.faults_support import query
from tests.integration.pipeline_support import fhir_client

pytestmark = pytest.mark.integration

EVENTS = 5_000
PATIENTS = 50
CHUNK = 500  # one transaction Bundle: under Medplum's 1 MB JSON limit
PAGE_SIZE, PAGES_PER_RUN = 250, 4
WEIGHT_HANDLERS = ("bmi", "obesity")  # both sweep weights (and heights)


async def write_burst(devserver: DevServer) -> list[dict[str, Any]]:
    """``EVENTS`` weights for ``PATIENTS`` patients, written in transaction Bundles."""
    async with httpx.AsyncClient() as http:
        # The burst is 500,000 quota points of writes: a project that expects one raises its
        # FHIR quota (as a super admin does on a real server).
        answer = await http.post(
            devserver.base_url + "_devserver/config", json={"fhirQuota": 10_000_000}
        )
        answer.raise_for_status()
    partner = fhir_client(devserver.base_url, PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET)
    try:
        patients: list[str] = []
        for _ in range(PATIENTS):
            created = await partner.create(
                {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01"}
            )
            assert created.reference
            patients.append(created.reference)
        written: list[dict[str, Any]] = []
        for start in range(0, EVENTS, CHUNK):
            entries = [
                {
                    "resource": vital_sign(
                        patients[i % PATIENTS],
                        "29463-7",
                        60 + (i % 50),
                        "kg",
                        f"2025-03-01T09:{i % 60:02d}:00Z",
                    ),
                    "request": {"method": "POST", "url": "Observation"},
                }
                for i in range(start, min(EVENTS, start + CHUNK))
            ]
            response = await partner.transaction(entries)
            response.raise_for_failed()
            written.extend(e.resource for e in response.entries if e.resource is not None)
    finally:
        await partner.aclose()
    assert len(written) == EVENTS
    return written


def recorded(url: str, handler: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in query(
            url,
            "SELECT resource_id, version_id FROM starvit.event_keys WHERE handler = %s",
            handler,
        )
    ]


async def test_the_sweep_recovers_every_event_of_a_busy_window_in_bounded_runs(
    devserver: DevServer, database_url: str
) -> None:
    written = await write_burst(devserver)
    stamps = sorted(datetime.fromisoformat(r["meta"]["lastUpdated"]) for r in written)
    assert stamps[-1] - stamps[0] < timedelta(minutes=1), "the burst must fit in one minute"
    expected = {(str(r["id"]), str(r["meta"]["versionId"])) for r in written}

    settings = load_settings(
        medplum_base_url=devserver.base_url,
        medplum_client_id=SERVICE_CLIENT_ID,
        medplum_client_secret=SERVICE_CLIENT_SECRET,
        database_url=database_url,
        webhook_secrets="unused-here",
        sweep_page_size=PAGE_SIZE,
        sweep_max_pages=PAGES_PER_RUN,
        # The burst is complete before the sweep starts: nothing can commit late here.
        sweep_settle_seconds=0,
        environment="test",
    )
    database, queue = await open_database(settings)
    medplum = medplum_client(settings)
    repo = EventRepository(database.pool)
    progress: dict[str, list[int]] = {h: [] for h in WEIGHT_HANDLERS}
    lags: dict[str, list[float]] = {h: [] for h in WEIGHT_HANDLERS}
    try:
        runs = 0
        bound = EVENTS // (PAGE_SIZE * PAGES_PER_RUN) + 2
        while True:
            runs += 1
            results = {r.handler: r for r in await run_once(settings, medplum, database, queue)}
            for handler in WEIGHT_HANDLERS:
                progress[handler].append(len(recorded(database_url, handler)))
                # Bounded work per run, whatever the window holds.
                assert results[handler].pages <= PAGES_PER_RUN
            for lag in await repo.sweep_lag():
                if lag.handler in lags:
                    lags[lag.handler].append(lag.lag_seconds)
            if all(results[h].caught_up for h in WEIGHT_HANDLERS):
                break
            assert runs < bound, f"the sweep stalled: {progress}"
    finally:
        await medplum.aclose()
        await database.aclose()

    for handler in WEIGHT_HANDLERS:
        counts = progress[handler]
        # Every run recovered something new: none reread the window in place.
        assert counts[0] > 0
        assert all(b > a for a, b in itertools.pairwise(counts)), counts
        # 100 %: every written version, once.
        assert set(recorded(database_url, handler)) == expected
        assert len(recorded(database_url, handler)) == EVENTS
        # The lag figure (how far behind now the sweep has looked) grew while runs were behind
        # and fell to the moment of the last run once caught up.
        assert lags[handler][0] > lags[handler][-1]
        assert lags[handler][-1] < timedelta(hours=1).total_seconds()
    jobs = query(
        database_url,
        "SELECT count(*), count(DISTINCT (args->>'event_id')) FROM procrastinate_jobs "
        "WHERE task_name = 'starvit:process_event'",
    )
    assert jobs == [(EVENTS * 2, EVENTS * 2)]
    print(  # noqa: T201 - the figures, for the test log
        f"runs: {runs}; recovered per run (bmi): {progress['bmi']}; lag (bmi): "
        f"{[round(v, 1) for v in lags['bmi']]}; burst span {stamps[-1] - stamps[0]}"
    )


async def run_once(settings: Any, medplum: Any, database: Database, queue: App) -> list[Any]:
    return await sweep(
        settings=settings,
        medplum=medplum,
        pool=database.pool,
        queue=queue,
        registry=handler_registry(),
    )


class CrowdedMedplum:
    """Medplum's search semantics for the sweep's query over resources that share one
    ``_lastUpdated`` (a bulk import commits thousands in the same millisecond): ``ge`` on
    ``_lastUpdated``, sorted by ``_lastUpdated`` then ``_id``, ``_count`` and ``_offset``. The
    stand-in stamps each write with its own clock reading, so it cannot produce this."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources
        self.searches = 0

    def move(self, resource_id: str, last_updated: str) -> None:
        """A resource updated again: a new version, a later ``_lastUpdated``."""
        for resource in self.resources:
            if resource["id"] == resource_id:
                version = int(resource["meta"]["versionId"]) + 1
                resource["meta"] = {"versionId": str(version), "lastUpdated": last_updated}

    async def search(
        self, resource_type: str, params: list[tuple[str, str]], *, extended: bool = False
    ) -> Any:
        del extended
        self.searches += 1
        if resource_type != "Observation" or "29463-7" not in dict(params).get("code", ""):
            return _Page([])
        since = datetime.fromisoformat(dict(params)["_lastUpdated"].removeprefix("ge"))
        matches = sorted(
            (
                r
                for r in self.resources
                if datetime.fromisoformat(r["meta"]["lastUpdated"]) >= since
            ),
            key=lambda r: (datetime.fromisoformat(r["meta"]["lastUpdated"]), r["id"]),
        )
        offset = int(dict(params).get("_offset", "0"))
        count = int(dict(params)["_count"])
        return _Page([dict(r) for r in matches[offset : offset + count]])


class _Page:
    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources


def crowded(count: int, instant: str) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Observation",
            "id": f"obs-{i:05d}",
            "meta": {"versionId": "1", "lastUpdated": instant},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": f"Patient/p-{i % 7}"},
        }
        for i in range(count)
    ]


async def test_the_sweep_walks_through_one_crowded_instant_even_as_it_shrinks(
    database_url: str,
) -> None:
    hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    instant = hour_ago.isoformat().replace("+00:00", ".000Z")
    later = (hour_ago + timedelta(minutes=5)).isoformat().replace("+00:00", ".000Z")
    medplum = CrowdedMedplum(crowded(1_000, instant))
    settings = load_settings(
        database_url=database_url,
        webhook_secrets="unused-here",
        sweep_page_size=100,
        sweep_max_pages=2,
        sweep_settle_seconds=0,
        environment="test",
    )
    database, queue = await open_database(settings)
    try:
        counts: list[int] = []
        caught_up = False
        for run in range(12):
            if run == 3:
                # Between runs, resources the cursor has passed and ones it has not leave the
                # instant (updated again): none may be skipped because of the shift.
                for moved in ("obs-00010", "obs-00100", "obs-00250", "obs-00399", "obs-00700"):
                    medplum.move(moved, later)
            if run == 4:
                # More of them than the sweep's resume slack: it must re-read the instant.
                for index in range(20, 20 + RESUME_SLACK + 10):
                    medplum.move(f"obs-{index:05d}", later)
            [bmi] = [
                r
                for r in await sweep(
                    settings=settings,
                    medplum=medplum,  # pyright: ignore[reportArgumentType]
                    pool=database.pool,
                    queue=queue,
                    registry=handler_registry(),
                )
                if r.handler == "bmi"
            ]
            counts.append(len(recorded(database_url, "bmi")))
            assert bmi.pages <= 2
            if bmi.caught_up:
                caught_up = True
                break
    finally:
        await database.aclose()
    versions = set(recorded(database_url, "bmi"))
    current = {(r["id"], r["meta"]["versionId"]) for r in medplum.resources}
    assert current <= versions, sorted(current - versions)[:5]
    assert caught_up, counts
    # Until the instant shrank by more than the slack, every run moved on; after that, the
    # runs re-read the instant from its start (bounded, a budget at a time) and moved on again.
    assert all(b > a for a, b in itertools.pairwise(counts[:4])), counts
    assert all(b >= a for a, b in itertools.pairwise(counts)), counts
