"""The ops dashboard's writes: the audit of every ops action, and replays of failed events.

A replay puts a failed event back on the queue with a fresh job and marks it
(``replayed_at``, ``replays``) so the delivery-health figures leave it out
(:mod:`app.ops.queries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from procrastinate.jobs import Job

from app.events.repository import EVENTS_QUEUE, PROCESS_EVENT_TASK, job_lock

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg_pool import AsyncConnectionPool

# At most this many failed events are replayed by one window replay.
MAX_WINDOW_REPLAY = 1000


@dataclass(frozen=True, slots=True)
class ActionRecord:
    actor: str
    action: str
    outcome: str
    login_id: str | None = None
    handler: str | None = None
    target: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    detail: str | None = None
    affected: int = 0
    correlation_id: str | None = None


async def record_action(pool: AsyncConnectionPool, record: ActionRecord) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO starvit.ops_actions (actor, login_id, action, handler, target, "
            "window_start, window_end, outcome, detail, affected, correlation_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                record.actor[:140],
                record.login_id,
                record.action,
                record.handler,
                record.target,
                record.window_start,
                record.window_end,
                record.outcome,
                record.detail,
                record.affected,
                record.correlation_id,
            ),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def replay_failed(
    pool: AsyncConnectionPool,
    queue: App,
    *,
    event_id: int | None = None,
    window: tuple[datetime, datetime] | None = None,
    handler: str | None = None,
) -> list[int]:
    """Re-queue failed events: one by id, or every failed one received in ``window`` (of one
    handler, or all). Only ``failed`` events move (a replay of one that is queued or processed
    does nothing). The ids replayed."""
    start, end = window if window is not None else (None, None)
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "SELECT id, handler, resource_type, resource_id, patient_id FROM starvit.event_keys "
            "WHERE status = 'failed' AND (%(id)s::bigint IS NULL OR id = %(id)s) "
            "AND (%(start)s::timestamptz IS NULL OR received_at >= %(start)s) "
            "AND (%(end)s::timestamptz IS NULL OR received_at < %(end)s) "
            "AND (%(handler)s::text IS NULL OR handler = %(handler)s) "
            "ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
            {
                "id": event_id,
                "start": start,
                "end": end,
                "handler": handler,
                "limit": MAX_WINDOW_REPLAY,
            },
        )
        rows = await cursor.fetchall()
        if not rows:
            return []
        jobs = [
            Job(
                id=None,
                queue=EVENTS_QUEUE,
                lock=job_lock(str(h), p, f"{t}/{i}"),
                queueing_lock=None,
                task_name=PROCESS_EVENT_TASK,
                task_kwargs={"event_id": int(ident)},  # pyright: ignore[reportArgumentType]
            )
            for ident, h, t, i, p in rows
        ]
        deferred = await queue.job_manager.batch_defer_jobs_async(jobs, connection=conn)
        ids = [int(r[0]) for r in rows]
        await conn.execute(
            "UPDATE starvit.event_keys AS e SET status = 'queued', error_code = NULL, "
            "attempts = 0, job_id = v.job_id, replayed_at = now(), replays = e.replays + 1 "
            "FROM unnest(%s::bigint[], %s::bigint[]) AS v(event_id, job_id) "
            "WHERE e.id = v.event_id",
            (ids, [job.id for job in deferred]),
        )
    return ids
