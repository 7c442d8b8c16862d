"""Every read the ops dashboard makes of the service's own tables (PHI-free by construction:
event keys, refusal counts, watermarks, Subscription health, the job queue, the ops audit).

The figures are computed in PostgreSQL at the moment they are asked for, so they are right
whichever receiver process is asked (the Prometheus collector reads the same queries).

Replayed events (``event_keys.replayed_at``) and deliveries caused by an ops ``$resend``
(a ``resend`` row of ``ops_actions`` for the resource shortly before the delivery) say nothing
about Medplum's delivery or the pipeline's latency: the delivery-health figures leave them out.

The worker heartbeats and the shared quota budget are read through their owners' queries
(:mod:`app.events.heartbeats`, :mod:`app.integrations.medplum.budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.events.heartbeats import list_heartbeats
from app.integrations.medplum.budget import quota_status

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

# A delivery within 15 minutes after an ops $resend of the same resource is the resend's.
_RESENT = """
    EXISTS (
        SELECT 1 FROM starvit.ops_actions AS a
        WHERE a.action = 'resend' AND a.outcome = 'done'
          AND a.target = e.resource_type || '/' || e.resource_id
          AND e.received_at BETWEEN a.at AND a.at + interval '15 minutes'
    )
"""


@dataclass(frozen=True, slots=True)
class HandlerTraffic:
    handler: str
    deliveries_last_15m: int
    deliveries_last_hour: int
    resent_last_hour: int
    last_delivery_at: datetime | None
    sweep_recovered_24h: int
    replayed_24h: int


@dataclass(frozen=True, slots=True)
class SweepState:
    handler: str
    watermark: datetime | None
    lag_seconds: float | None


@dataclass(frozen=True, slots=True)
class HealthRow:
    handler: str
    subscription_id: str | None
    status: str
    has_error_text: bool
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class QueueState:
    depth: int
    oldest_waiting_seconds: float | None
    running: int
    retrying: int
    retried_last_hour: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: int
    handler: str
    reference: str
    version_id: str
    error_code: str | None
    attempts: int
    received_at: datetime
    replays: int


@dataclass(frozen=True, slots=True)
class Latency:
    processed_last_hour: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    round_trips_avg: float | None
    round_trips_p95: float | None
    quota_points_avg: float | None = None


@dataclass(frozen=True, slots=True)
class MinutePoint:
    minute: datetime
    deliveries: int
    refused: int
    failed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    backlog: int
    oldest_waiting_seconds: float | None


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    worker_id: str
    last_heartbeat: datetime
    age_seconds: float
    jobs_done: int = 0


@dataclass(frozen=True, slots=True)
class Budget:
    points_left: int
    window_resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class ActionRow:
    action_id: int
    at: datetime
    actor: str
    action: str
    handler: str | None
    target: str | None
    window_start: datetime | None
    window_end: datetime | None
    outcome: str
    detail: str | None
    affected: int


async def handler_traffic(pool: AsyncConnectionPool, handlers: list[str]) -> list[HandlerTraffic]:
    """Deliveries Medplum made per handler (notifications only; replays and resends apart)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"""
            WITH hour AS (
                SELECT e.handler, e.received_at, {_RESENT} AS resent
                FROM starvit.event_keys AS e
                WHERE e.source = 'notification' AND e.received_at > now() - interval '1 hour'
            ),
            delivered AS (
                SELECT handler,
                    count(*) FILTER (WHERE NOT resent
                        AND received_at > now() - interval '15 minutes') AS last_15m,
                    count(*) FILTER (WHERE NOT resent) AS last_hour,
                    count(*) FILTER (WHERE resent) AS resent
                FROM hour GROUP BY handler
            ),
            swept AS (
                SELECT handler, count(*) AS n FROM starvit.event_keys
                WHERE source = 'sweep' AND received_at > now() - interval '24 hours'
                GROUP BY handler
            ),
            replayed AS (
                SELECT handler, count(*) AS n FROM starvit.event_keys
                WHERE replayed_at > now() - interval '24 hours' GROUP BY handler
            )
            SELECT h.name, coalesce(d.last_15m, 0), coalesce(d.last_hour, 0),
                coalesce(d.resent, 0),
                (SELECT l.received_at FROM starvit.event_keys AS l
                    WHERE l.handler = h.name AND l.source = 'notification'
                    ORDER BY l.received_at DESC LIMIT 1),
                coalesce(s.n, 0), coalesce(r.n, 0)
            FROM unnest(%s::text[]) AS h(name)
            LEFT JOIN delivered AS d ON d.handler = h.name
            LEFT JOIN swept AS s ON s.handler = h.name
            LEFT JOIN replayed AS r ON r.handler = h.name
            ORDER BY h.name
            """,  # noqa: S608 - constants only
            (handlers,),
        )
        rows = await cursor.fetchall()
    return [
        HandlerTraffic(
            handler=str(r[0]),
            deliveries_last_15m=int(r[1]),
            deliveries_last_hour=int(r[2]),
            resent_last_hour=int(r[3]),
            last_delivery_at=r[4],
            sweep_recovered_24h=int(r[5]),
            replayed_24h=int(r[6]),
        )
        for r in rows
    ]


async def refusals(pool: AsyncConnectionPool, hours: int = 1) -> dict[str, dict[str, int]]:
    """Refused (and duplicate) deliveries per handler (``-`` when none was named) and reason."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT handler, reason, sum(count) FROM starvit.rejected_deliveries "
            "WHERE minute > now() - make_interval(hours => %s) GROUP BY handler, reason",
            (hours,),
        )
        out: dict[str, dict[str, int]] = {}
        for handler, reason, count in await cursor.fetchall():
            out.setdefault(str(handler), {})[str(reason)] = int(count)
    return out


async def sweep_states(pool: AsyncConnectionPool) -> dict[str, SweepState]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT handler, since, extract(epoch FROM now() - since) FROM starvit.sweep_watermarks"
        )
        return {
            str(h): SweepState(str(h), since, float(lag) if lag is not None else None)
            for h, since, lag in await cursor.fetchall()
        }


async def recorded_health(pool: AsyncConnectionPool) -> dict[str, HealthRow]:
    """What the worker's periodic check last saw of each Subscription."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT handler, subscription_id, status, has_error_text, checked_at "
            "FROM starvit.subscription_health"
        )
        return {
            str(r[0]): HealthRow(str(r[0]), r[1], str(r[2]), bool(r[3]), r[4])
            for r in await cursor.fetchall()
        }


async def queue_state(pool: AsyncConnectionPool) -> QueueState:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            SELECT
                count(*) FILTER (WHERE status = 'queued'),
                extract(epoch FROM now() - min(received_at) FILTER (WHERE status = 'queued')),
                count(*) FILTER (WHERE status = 'queued' AND error_code IS NOT NULL),
                count(*) FILTER (WHERE status = 'failed')
            FROM starvit.event_keys WHERE status <> 'processed'
            """
        )
        depth, oldest, retrying, dead = await cursor.fetchone() or (0, None, 0, 0)
        cursor = await conn.execute(
            "SELECT count(*) FROM starvit.event_keys WHERE attempts > 1 "
            "AND received_at > now() - interval '1 hour' AND replayed_at IS NULL"
        )
        retried = (await cursor.fetchone() or (0,))[0]
        running = await _running_jobs(conn)
    return QueueState(
        depth=int(depth),
        oldest_waiting_seconds=float(oldest) if oldest is not None else None,
        running=running,
        retrying=int(retrying),
        retried_last_hour=int(retried),
        dead_letters=int(dead),
    )


async def _running_jobs(conn: AsyncConnection) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing' AND queue_name = 'events'"
    )
    return int((await cursor.fetchone() or (0,))[0])


async def dead_letters(pool: AsyncConnectionPool, *, limit: int = 50) -> list[DeadLetter]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, handler, resource_type || '/' || resource_id, version_id, error_code, "
            "attempts, received_at, replays FROM starvit.event_keys WHERE status = 'failed' "
            "ORDER BY id DESC LIMIT %s",
            (limit,),
        )
        return [
            DeadLetter(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], int(r[5]), r[6], int(r[7]))
            for r in await cursor.fetchall()
        ]


async def dead_letter_codes(pool: AsyncConnectionPool) -> dict[str, int]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT coalesce(error_code, 'unknown'), count(*) FROM starvit.event_keys "
            "WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC"
        )
        return {str(code): int(count) for code, count in await cursor.fetchall()}


async def latency(pool: AsyncConnectionPool) -> Latency:
    """End-to-end latency (received to processed) and Medplum round trips per event over the
    last hour, replays left out."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                percentile_cont(0.9) WITHIN GROUP (ORDER BY latency_ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms),
                avg(medplum_requests),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY medplum_requests),
                avg(quota_points)
            FROM starvit.event_keys
            WHERE status = 'processed' AND processed_at > now() - interval '1 hour'
              AND replayed_at IS NULL AND latency_ms IS NOT NULL
            """
        )
        row = await cursor.fetchone() or (0, None, None, None, None, None, None)

    p50, p90, p99, trips_avg, trips_p95, points = (
        float(v) if v is not None else None for v in row[1:7]
    )
    return Latency(int(row[0]), p50, p90, p99, trips_avg, trips_p95, points)


async def minute_series(pool: AsyncConnectionPool, minutes: int = 60) -> list[MinutePoint]:
    """Per minute over the last ``minutes``: deliveries, refused deliveries, events that failed,
    latency percentiles of what finished, and the backlog and its oldest age at the minute's
    end (replays left out)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            WITH m AS (
                SELECT minute, minute + interval '1 minute' AS upto FROM generate_series(
                    date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
                    date_trunc('minute', now()), interval '1 minute') AS minute
            ),
            arrived AS (
                SELECT date_trunc('minute', received_at) AS minute,
                    count(*) FILTER (WHERE source = 'notification') AS deliveries,
                    count(*) FILTER (WHERE status = 'failed') AS failed
                FROM starvit.event_keys
                WHERE received_at >= (SELECT min(minute) FROM m) AND replayed_at IS NULL
                GROUP BY 1
            ),
            finished AS (
                SELECT date_trunc('minute', processed_at) AS minute,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
                FROM starvit.event_keys
                WHERE received_at > now() - interval '1 day'
                  AND processed_at >= (SELECT min(minute) FROM m) AND replayed_at IS NULL
                GROUP BY 1
            ),
            refused AS (
                SELECT minute, sum(count) AS n FROM starvit.rejected_deliveries
                WHERE minute >= (SELECT min(minute) FROM m) AND reason <> 'duplicate'
                GROUP BY minute
            ),
            -- Whatever waited at some point of the window (small unless there is a backlog).
            waiting AS MATERIALIZED (
                SELECT received_at, processed_at FROM starvit.event_keys
                WHERE received_at > now() - interval '1 day' AND status <> 'failed'
                  AND replayed_at IS NULL
                  AND (processed_at IS NULL OR processed_at >= (SELECT min(minute) FROM m))
            ),
            backlog AS (
                SELECT m.minute, count(w.received_at) AS n,
                    extract(epoch FROM m.upto - min(w.received_at)) AS oldest
                FROM m LEFT JOIN waiting AS w ON w.received_at < m.upto
                    AND (w.processed_at IS NULL OR w.processed_at >= m.upto)
                GROUP BY m.minute, m.upto
            )
            SELECT m.minute, coalesce(a.deliveries, 0), coalesce(r.n, 0), coalesce(a.failed, 0),
                f.p50, f.p95, b.n, b.oldest
            FROM m
            LEFT JOIN arrived AS a ON a.minute = m.minute
            LEFT JOIN finished AS f ON f.minute = m.minute
            LEFT JOIN refused AS r ON r.minute = m.minute
            LEFT JOIN backlog AS b ON b.minute = m.minute
            ORDER BY m.minute
            """,
            {"minutes": minutes},
        )
        rows = await cursor.fetchall()
    return [
        MinutePoint(
            minute=r[0],
            deliveries=int(r[1]),
            refused=int(r[2]),
            failed=int(r[3]),
            latency_p50_ms=float(r[4]) if r[4] is not None else None,
            latency_p95_ms=float(r[5]) if r[5] is not None else None,
            backlog=int(r[6]),
            oldest_waiting_seconds=max(0.0, float(r[7])) if r[7] is not None else None,
        )
        for r in rows
    ]


async def worker_heartbeats(pool: AsyncConnectionPool) -> list[WorkerBeat]:
    """Each worker process's last heartbeat (``starvit.worker_heartbeats``, written every
    ``STARVIT_WORKER_HEARTBEAT_SECONDS`` by every worker process), the most recent first."""
    return [
        WorkerBeat(beat.worker_id, beat.last_beat, max(0.0, beat.age_seconds), beat.jobs_done)
        for beat in await list_heartbeats(pool)
    ]


async def budget_left(pool: AsyncConnectionPool) -> Budget | None:
    """The shared Medplum quota budget as Medplum last reported it (``RateLimit``), or None
    before any answer was recorded."""
    status = await quota_status(pool)
    if status.remaining is None:
        return None
    resets = (
        datetime.now(UTC) + timedelta(seconds=status.reset_in_seconds)
        if status.reset_in_seconds is not None
        else None
    )
    return Budget(points_left=status.remaining, window_resets_at=resets)


async def is_known_event(
    pool: AsyncConnectionPool, handler: str, keys: list[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Which (type, id, version) of ``keys`` have an event key for ``handler``."""
    if not keys:
        return set()
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT e.resource_type, e.resource_id, e.version_id FROM starvit.event_keys AS e "
            "JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(t, i, v) "
            "ON e.resource_type = k.t AND e.resource_id = k.i AND e.version_id = k.v "
            "WHERE e.handler = %s",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], handler),
        )
        return {(str(t), str(i), str(v)) for t, i, v in await cursor.fetchall()}


async def swept_in_window(
    pool: AsyncConnectionPool, handler: str, start: datetime, end: datetime
) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM starvit.event_keys WHERE handler = %s AND source = 'sweep' "
            "AND received_at >= %s AND received_at < %s",
            (handler, start, end),
        )
        return int((await cursor.fetchone() or (0,))[0])


async def recent_actions(pool: AsyncConnectionPool, *, limit: int = 20) -> list[ActionRow]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, at, actor, action, handler, target, window_start, window_end, outcome, "
            "detail, affected FROM starvit.ops_actions ORDER BY id DESC LIMIT %s",
            (limit,),
        )
        return [ActionRow(*r) for r in await cursor.fetchall()]  # pyright: ignore[reportArgumentType]


async def event_status(pool: AsyncConnectionPool, event_id: int) -> tuple[str, str | None] | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, error_code FROM starvit.event_keys WHERE id = %s", (event_id,)
        )
        row = await cursor.fetchone()
    return (str(row[0]), row[1]) if row else None
