"""The cost of procrastinate's job fetch with a backlog of patient-locked event jobs, before and
after the table's statistics are refreshed. Not part of ``make bench``:

    python -m benchmarks.queue_fetch

Each worker process fetches its jobs one query at a time (``procrastinate_fetch_job_v2``); every
event job carries a ``lock`` (its patient), which the fetch checks with a ``NOT EXISTS`` over the
other jobs of that lock. The backlog is recorded through the receiver's own
:func:`app.events.repository.record_events`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import psycopg

from app.events.repository import EventKey, record_events
from app.persistence.database import Database, ensure_schema
from app.wiring import queue_app
from benchmarks.servers import Postgres

STEPS = ((0, 100), (1000, 100), (1000, 100), (2000, 250))  # (jobs added, patients)


def fetch_ms(url: str, *, analyze: bool, samples: int = 20) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        if analyze:
            conn.execute("ANALYZE procrastinate_jobs")
        row = conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
        worker = row.fetchone()
        assert worker is not None
    timings: list[float] = []
    with psycopg.connect(url) as conn:
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute(
                "SELECT * FROM procrastinate_fetch_job_v2(ARRAY['events'], %s)", (worker[0],)
            ).fetchall()
            timings.append((time.perf_counter() - started) * 1000)
            conn.rollback()  # leave the job queued
    return statistics.median(timings)


async def grow(url: str, analyze: bool) -> list[tuple[int, int, float]]:
    queue = queue_app(url)
    await ensure_schema(url, queue)
    database = Database(url)
    await database.open()
    rows: list[tuple[int, int, float]] = []
    total = 0
    try:
        async with queue.open_async():
            for added, patients in STEPS:
                keys = [
                    EventKey(
                        handler="bmi",
                        resource_type="Observation",
                        resource_id=f"o{uuid.uuid4().hex}",
                        version_id="1",
                        interaction="create",
                        source="notification",
                        patient_id=f"p{i % patients}",
                    )
                    for i in range(added)
                ]
                for start in range(0, len(keys), 200):
                    async with database.pool.connection() as conn, conn.transaction():
                        await record_events(conn, queue, keys[start : start + 200])
                total += added
                rows.append(
                    (total, patients, await asyncio.to_thread(fetch_ms, url, analyze=analyze))
                )
    finally:
        await database.aclose()
    return rows


def main() -> None:
    pg = Postgres.start()
    try:
        results: dict[bool, list[tuple[int, int, float]]] = {}
        for analyze in (False, True):
            with pg.fresh_database("fetch") as url:
                results[analyze] = asyncio.run(grow(url, analyze))
    finally:
        pg.stop()
    sys.stdout.write(
        "| Queued event jobs | Patients (locks) of the last batch | Fetch, ms (median): "
        "statistics as autovacuum left them | after ANALYZE |\n|---|---|---|---|\n"
    )
    for (total, patients, stale), (_, _, fresh) in zip(results[False], results[True], strict=True):
        sys.stdout.write(f"| {total:,} | {patients} | {stale:.2f} | {fresh:.2f} |\n")


if __name__ == "__main__":
    main()
