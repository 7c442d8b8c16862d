"""Worker heartbeats: one PHI-free row per worker process in ``starvit.worker_heartbeats``.

Each worker process writes its row every ``STARVIT_WORKER_HEARTBEAT_SECONDS`` (worker id, host,
pid, when it started, its last beat, the jobs it finished). A worker whose last beat is older
than a few intervals has stopped or hangs: :func:`list_heartbeats` is what the ops dashboard
reads, and :func:`live_workers` what the liveness check (``starvit jobs workers``) counts.
The rows of workers that stopped stay for a day, so a dashboard can show that one went away.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

# A worker is considered alive while its last beat is younger than this many intervals.
STALE_AFTER_INTERVALS = 3
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    worker_id: str
    host: str
    pid: int
    started_at: datetime

    @classmethod
    def of_this_process(cls) -> WorkerIdentity:
        host = socket.gethostname()[:128]
        return cls(
            worker_id=f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=host,
            pid=os.getpid(),
            started_at=datetime.now(UTC),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    host: str
    pid: int
    started_at: datetime
    last_beat: datetime
    jobs_done: int
    age_seconds: float  # now (the database's clock) minus last_beat

    def alive(self, interval_seconds: float) -> bool:
        return self.age_seconds <= interval_seconds * STALE_AFTER_INTERVALS


async def record_heartbeat(
    pool: AsyncConnectionPool[AsyncConnection], worker: WorkerIdentity, jobs_done: int
) -> None:
    """Insert or refresh this worker's row (its ``last_beat`` becomes the database's now)."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO starvit.worker_heartbeats (worker_id, host, pid, started_at, "
            "last_beat, jobs_done) VALUES (%s, %s, %s, %s, now(), %s) "
            "ON CONFLICT (worker_id) DO UPDATE SET last_beat = now(), "
            "jobs_done = EXCLUDED.jobs_done",
            (worker.worker_id, worker.host, worker.pid, worker.started_at, jobs_done),
        )


async def remove_heartbeat(pool: AsyncConnectionPool[AsyncConnection], worker_id: str) -> None:
    """A worker that stops on purpose takes its row away."""
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM starvit.worker_heartbeats WHERE worker_id = %s", (worker_id,)
        )


async def list_heartbeats(
    pool: AsyncConnectionPool[AsyncConnection], *, limit: int = 200
) -> list[Heartbeat]:
    """Every worker heard from in the last day, the most recent beat first."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT worker_id, host, pid, started_at, last_beat, jobs_done, "
            "extract(epoch FROM now() - last_beat) FROM starvit.worker_heartbeats "
            "ORDER BY last_beat DESC LIMIT %s",
            (limit,),
        )
        return [
            Heartbeat(
                str(w),
                str(h),
                int(p),
                s,
                b,
                int(j),
                float(a),  # pyright: ignore[reportArgumentType]
            )
            for w, h, p, s, b, j, a in await cursor.fetchall()
        ]


async def live_workers(
    pool: AsyncConnectionPool[AsyncConnection], interval_seconds: float
) -> list[Heartbeat]:
    """The workers whose last beat is recent enough to count as alive."""
    return [beat for beat in await list_heartbeats(pool) if beat.alive(interval_seconds)]


async def prune_heartbeats(pool: AsyncConnectionPool[AsyncConnection]) -> int:
    """Forget workers not heard from for a day."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "DELETE FROM starvit.worker_heartbeats WHERE last_beat < now() - %s",
            (FORGET_AFTER,),
        )
        return cursor.rowcount
