"""The ops dashboard's figures against a real PostgreSQL with event keys of known times: what
each panel counts, and that replays and $resend deliveries are left out of delivery health."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.ops import queries
from app.persistence.database import Database, ensure_schema
from app.wiring import queue_app

pytestmark = pytest.mark.integration

# (handler, id, source, received minutes ago, processed minutes ago or None, status, latency ms)
ROWS = [
    ("bmi", "a", "notification", 2, 1, "processed", 60_000),
    ("bmi", "b", "notification", 5, 4, "processed", 60_000),
    ("bmi", "c", "notification", 30, 29, "processed", 60_000),
    ("bmi", "d", "sweep", 40, 39, "processed", 60_000),
    ("bmi", "e", "notification", 3, None, "queued", None),
    ("bmi", "f", "notification", 20, None, "failed", None),
    ("obesity", "g", "notification", 90, 89, "processed", 60_000),
]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Database]:
    await ensure_schema(database_url, queue_app(database_url))
    database = Database(database_url, max_size=2)
    await database.open()
    async with database.pool.connection() as conn:
        for handler, ident, source, received, processed, status, latency in ROWS:
            await conn.execute(
                "INSERT INTO starvit.event_keys (handler, resource_type, resource_id, version_id, "
                "interaction, source, received_at, processed_at, status, latency_ms, "
                "medplum_requests, attempts) VALUES (%s, 'Observation', %s, '1', 'create', %s, "
                "now() - make_interval(mins => %s), "
                "now() - make_interval(mins => %s::int), %s, %s, 2, 1)",
                (handler, ident, source, received, processed, status, latency),
            )
    yield database
    await database.aclose()


async def test_deliveries_sweeps_replays_and_resends(pool: Database) -> None:
    traffic = {t.handler: t for t in await queries.handler_traffic(pool.pool, ["bmi", "obesity"])}
    bmi = traffic["bmi"]
    # a, b, e within 15 minutes; c and f within the hour; d came from the sweep.
    assert (bmi.deliveries_last_15m, bmi.deliveries_last_hour) == (3, 5)
    assert bmi.sweep_recovered_24h == 1
    assert bmi.last_delivery_at is not None
    assert traffic["obesity"].deliveries_last_hour == 0  # 90 minutes ago
    assert traffic["obesity"].last_delivery_at is not None

    async with pool.pool.connection() as conn:
        # An ops $resend of "a" just before it arrived: that delivery is the resend's.
        await conn.execute(
            "INSERT INTO starvit.ops_actions (at, actor, action, target, outcome) VALUES "
            "(now() - interval '3 minutes', 'Practitioner/ops', 'resend', 'Observation/a', 'done')"
        )
    bmi = {t.handler: t for t in await queries.handler_traffic(pool.pool, ["bmi"])}["bmi"]
    assert (bmi.deliveries_last_hour, bmi.resent_last_hour) == (4, 1)


async def test_queue_latency_and_the_minute_series(pool: Database) -> None:
    state = await queries.queue_state(pool.pool)
    assert (state.depth, state.dead_letters) == (1, 1)
    assert state.oldest_waiting_seconds is not None
    assert 170 <= state.oldest_waiting_seconds <= 400
    timing = await queries.latency(pool.pool)
    assert timing.processed_last_hour == 4  # a, b, c, d (g finished 89 minutes ago)
    assert timing.p50_ms == 60_000
    assert timing.round_trips_avg == 2
    assert await queries.dead_letter_codes(pool.pool) == {"unknown": 1}

    series = await queries.minute_series(pool.pool, 60)
    assert len(series) == 60
    assert sum(p.deliveries for p in series) == 5  # notifications received in the hour
    assert sum(p.failed for p in series) == 1
    assert series[-1].backlog == 1  # "e" waits now
    assert series[-1].oldest_waiting_seconds is not None
    # At the end of the minute that began 30 minutes ago "c" (received 30, processed 29
    # minutes ago) was waiting; "a", "b", "e" had not arrived yet.
    assert series[-31].backlog == 1

    # A replay takes its event out of the figures (it says nothing about delivery).
    async with pool.pool.connection() as conn:
        await conn.execute(
            "UPDATE starvit.event_keys SET replayed_at = now(), replays = 1 WHERE resource_id = 'a'"
        )
    assert (await queries.latency(pool.pool)).processed_last_hour == 3
    assert sum(p.deliveries for p in await queries.minute_series(pool.pool, 60)) == 4
