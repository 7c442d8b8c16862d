"""Event keys (PHI-free) and the group-commit intake that makes a notification durable.

A notification is acknowledged only after its event key and its claim-check job are committed.
Doing that with one transaction per request caps a receiver at about an eighth of bare FastAPI
on these machines (docs/benchmarks.md); :class:`EventIntake` instead commits every notification
that arrived while the previous commit was in flight in *one* transaction (group commit), so a
single request is never delayed by a timer and concurrent requests share the cost.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import psycopg
from procrastinate.jobs import Job
from psycopg_pool import PoolTimeout

from app.handlers.protocol import DELETED_VERSION, StoredEvent
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.events.rejections import Counts

log = get_logger("app.events.repository")

PROCESS_EVENT_TASK = "starvit:process_event"
EVENTS_QUEUE = "events"

# A delete notification is recorded under this provisional version: at most one unconfirmed
# delete per handler and resource waits in the queue (later copies are duplicates of it). The
# worker renames it to ``deleted:checking:<event id>`` before it asks Medplum (so a delete that
# arrives after that question gets a row of its own), and to ``deleted``
# (:data:`~app.handlers.protocol.DELETED_VERSION`) only once Medplum answers 404/410. A forged
# delete of a live resource therefore never occupies the ``deleted`` key.
PENDING_DELETE_VERSION = "deleted:pending"
CHECKING_DELETE_PREFIX = "deleted:checking:"

Source = Literal["notification", "sweep", "replay"]


@dataclass(frozen=True, slots=True)
class EventKey:
    handler: str
    resource_type: str
    resource_id: str
    version_id: str
    interaction: str
    source: Source
    subscription_id: str | None = None
    patient_id: str | None = None
    author: str | None = None  # meta.author of the notified version (a reference, not PHI)
    trace_id: str | None = None  # correlation id carried into the job (not stored)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    def lock(self) -> str:
        return job_lock(self.handler, self.patient_id, self.reference)


def job_lock(handler: str, patient_id: str | None, reference: str) -> str:
    """One job at a time per patient and handler: a bot's suggestions for one patient are
    planned against each other (supersession), so they never race; different bots touch
    different Tasks and may run side by side (a clinician's concurrent edit of a Task is caught
    by the If-Match on every update)."""
    subject = f"patient:{patient_id}" if patient_id else f"resource:{reference}"
    return f"{subject}:{handler}"


class IntakeUnavailable(Exception):
    """The event key could not be made durable (the database is unreachable or refused): the
    notification must not be acknowledged."""


class IntakeRefused(Exception):
    """The database refused this one key's data (a data exception): retrying cannot help, and
    the keys committed with it were not affected."""


# The database (or the way to it) is down: every key of the group fails alike, and retrying
# them one by one would only wait longer for the same answer.
_UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, OSError, PoolTimeout)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    event_id: int | None
    duplicate: bool


def _job_for(key: EventKey, event_id: int) -> Job:
    kwargs: dict[str, str | int | None] = {"event_id": event_id}
    if key.trace_id:
        kwargs["trace_id"] = key.trace_id
    return Job(
        id=None,
        queue=EVENTS_QUEUE,
        lock=key.lock(),
        queueing_lock=None,
        task_name=PROCESS_EVENT_TASK,
        task_kwargs=kwargs,  # pyright: ignore[reportArgumentType]
    )


_INSERT_COLUMNS = (
    "handler, subscription_id, resource_type, resource_id, version_id, interaction, source, "
    "patient_id, author"
)


async def record_events(
    conn: AsyncConnection, queue: App, keys: list[EventKey]
) -> list[IntakeResult]:
    """Insert the keys (``ON CONFLICT DO NOTHING``) and defer one job per new key, on ``conn``
    inside the caller's transaction. Results are in the order of ``keys``."""
    if not keys:
        return []
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(keys))
    params: list[object] = []
    for index, key in enumerate(keys):
        params.extend(
            (
                index,
                key.handler,
                key.subscription_id,
                key.resource_type,
                key.resource_id,
                key.version_id,
                key.interaction,
                key.source,
                key.patient_id,
                key.author,
            )
        )
    # Duplicates inside one batch are collapsed by ON CONFLICT as well; the first wins.
    query = f"""
        WITH incoming (ord, {_INSERT_COLUMNS}) AS (VALUES {rows})
        INSERT INTO starvit.event_keys ({_INSERT_COLUMNS})
        SELECT {_INSERT_COLUMNS} FROM incoming ORDER BY ord
        ON CONFLICT ON CONSTRAINT event_keys_unique DO NOTHING
        RETURNING id, handler, resource_type, resource_id, version_id
    """  # noqa: S608 - only placeholders are interpolated
    cursor = await conn.execute(query, params)  # pyright: ignore[reportArgumentType]
    inserted = {
        (str(r[1]), str(r[2]), str(r[3]), str(r[4])): int(r[0]) for r in await cursor.fetchall()
    }
    results: list[IntakeResult] = []
    new_jobs: list[tuple[int, Job]] = []
    claimed: set[int] = set()
    for key in keys:
        ident = (key.handler, key.resource_type, key.resource_id, key.version_id)
        event_id = inserted.get(ident)
        if event_id is None or event_id in claimed:
            results.append(IntakeResult(event_id=event_id, duplicate=True))
            continue
        claimed.add(event_id)
        results.append(IntakeResult(event_id=event_id, duplicate=False))
        new_jobs.append((event_id, _job_for(key, event_id)))
    if new_jobs:
        deferred = await queue.job_manager.batch_defer_jobs_async(
            [job for _, job in new_jobs], connection=conn
        )
        await conn.execute(
            "UPDATE starvit.event_keys AS e SET job_id = v.job_id FROM "
            "unnest(%s::bigint[], %s::bigint[]) AS v(event_id, job_id) WHERE e.id = v.event_id",
            ([event_id for event_id, _ in new_jobs], [job.id for job in deferred]),
        )
    return results


class EventIntake:
    """Group commit of event keys and jobs for concurrent receivers in one process.

    It fails fast while the database is unreachable: a commit waits at most
    ``acquire_timeout`` seconds for a connection, and once one failed because the database is
    unreachable the intake is *down*: notifications are refused at once (503, which Medplum
    redelivers) while a probe checks the database every ``probe_interval`` seconds; the first
    probe that gets an answer brings the intake back up.
    """

    name = "event_intake"

    def __init__(
        self,
        pool: AsyncConnectionPool,
        queue: App,
        max_batch: int = 256,
        *,
        acquire_timeout: float = 0.5,
        probe_interval: float = 0.2,
    ) -> None:
        self.pool = pool
        self.queue = queue
        self.max_batch = max_batch
        self.acquire_timeout = acquire_timeout
        self.probe_interval = probe_interval
        self._pending: list[tuple[EventKey, asyncio.Future[IntakeResult]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def _mark_down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("intake_database_unreachable")
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while self._down_since is not None:
            await asyncio.sleep(self.probe_interval)
            try:
                async with self.pool.connection(timeout=self.acquire_timeout) as conn:
                    await conn.execute("SELECT 1")
            except Exception:  # noqa: S112 - still down: probe again
                continue
            down_for = time.monotonic() - self._down_since
            self._down_since = None
            log.warning("intake_database_back", down_seconds=round(down_for, 3))

    async def submit(self, key: EventKey) -> IntakeResult:
        if self._down_since is not None:
            raise IntakeUnavailable("database_unreachable")
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._pending.append((key, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())
        return await future

    async def _flush_all(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            try:
                results = await self._commit([k for k, _ in batch])
            except _UNREACHABLE as error:
                self._mark_down()
                # Everything waiting behind this batch would meet the same database.
                batch, self._pending = batch + self._pending, []
                for _, future in batch:
                    if not future.done():
                        future.set_exception(IntakeUnavailable(type(error).__name__))
                continue
            except Exception:
                # One bad key must not fail its neighbours: commit each on its own, so only
                # the key the database refuses fails.
                await self._commit_one_by_one(batch)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _commit(self, keys: list[EventKey]) -> list[IntakeResult]:
        async with (
            self.pool.connection(timeout=self.acquire_timeout) as conn,
            conn.transaction(),
        ):
            return await record_events(conn, self.queue, keys)

    async def _commit_one_by_one(
        self, batch: list[tuple[EventKey, asyncio.Future[IntakeResult]]]
    ) -> None:
        for key, future in batch:
            if self._down_since is not None:
                if not future.done():
                    future.set_exception(IntakeUnavailable("database_unreachable"))
                continue
            try:
                [result] = await self._commit([key])
            except _UNREACHABLE as error:
                self._mark_down()
                outcome: IntakeResult | BaseException = IntakeUnavailable(type(error).__name__)
            except psycopg.DataError as error:
                outcome = IntakeRefused(type(error).__name__)
            except Exception as error:
                outcome = IntakeUnavailable(type(error).__name__)
            else:
                outcome = result
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def check(self) -> str | None:
        return "intake_database_unreachable" if self._down_since is not None else None

    async def aclose(self) -> None:
        self._down_since = None
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)


_EVENT_COLUMNS = (
    "id, handler, subscription_id, resource_type, resource_id, version_id, interaction, source, "
    "patient_id, author, received_at, status, outcome, error_code, job_id, attempts"
)


def _stored(row: tuple[object, ...]) -> StoredEvent:
    return StoredEvent(*row)  # pyright: ignore[reportArgumentType]


class _NotFailedAnymore(Exception):
    """The event left the dead letter meanwhile (retried by someone else)."""


@dataclass(frozen=True, slots=True)
class SweepCursor:
    """Where a handler's sweep stands: the ``_lastUpdated`` of the last resource it passed,
    that resource's id, and how many resources with exactly that ``_lastUpdated`` (in id
    order) it has passed."""

    since: datetime
    after_id: str | None = None
    bucket_offset: int = 0


@dataclass(frozen=True, slots=True)
class SweepLag:
    handler: str
    since: datetime
    scanned_to: datetime | None
    updated_at: datetime
    lag_seconds: float


class EventRepository:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def get(self, event_id: int) -> StoredEvent | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM starvit.event_keys WHERE id = %s",  # noqa: S608
                (event_id,),
            )
            row = await cursor.fetchone()
        return _stored(row) if row else None

    async def start_attempt(self, event_id: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE starvit.event_keys SET attempts = attempts + 1 WHERE id = %s", (event_id,)
            )

    async def finish(
        self,
        event_id: int,
        *,
        outcome: str,
        medplum_requests: int,
        quota_points: int | None = None,
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE starvit.event_keys SET status = 'processed', outcome = %s, "
                "error_code = NULL, processed_at = now(), medplum_requests = %s, "
                "quota_points = %s, "
                "latency_ms = extract(epoch FROM now() - received_at) * 1000 WHERE id = %s",
                (outcome, medplum_requests, quota_points, event_id),
            )

    async def fail(
        self, event_id: int, *, error_code: str, final: bool, transient: bool = False
    ) -> None:
        """Record a failed attempt; ``final`` dead-letters the event (``transient``: the cause
        heals by itself, so the worker's dead-letter retry will give it another chance)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE starvit.event_keys SET status = %s, error_code = %s, transient = %s, "
                "failed_at = CASE WHEN %s THEN now() ELSE failed_at END WHERE id = %s",
                ("failed" if final else "queued", error_code, transient, final, event_id),
            )

    async def begin_delete_check(self, event_id: int) -> None:
        """Free the pending-delete key before Medplum is asked: a delete notified from now on
        gets a row (and a check) of its own instead of being a duplicate of this one."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE starvit.event_keys SET version_id = %s WHERE id = %s AND version_id = %s",
                (f"{CHECKING_DELETE_PREFIX}{event_id}", event_id, PENDING_DELETE_VERSION),
            )

    async def confirm_delete(self, event_id: int) -> bool:
        """Give a delete Medplum confirmed the ``deleted`` key; False when another delivery of
        the same delete holds it already (this one is then a duplicate)."""
        async with self.pool.connection() as conn:
            try:
                cursor = await conn.execute(
                    "UPDATE starvit.event_keys AS e SET version_id = %s WHERE e.id = %s AND NOT "
                    "EXISTS (SELECT 1 FROM starvit.event_keys AS o WHERE o.handler = e.handler "
                    "AND o.resource_type = e.resource_type AND o.resource_id = e.resource_id "
                    "AND o.version_id = %s)",
                    (DELETED_VERSION, event_id, DELETED_VERSION),
                )
            except psycopg.errors.UniqueViolation:
                return False
            return cursor.rowcount == 1

    async def prune_processed(self, older_than_days: int, *, batch: int = 10_000) -> int:
        """Delete up to ``batch`` processed event keys received more than ``older_than_days``
        ago. Failed keys (the dead letter) and queued ones are never pruned."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM starvit.event_keys WHERE id IN (SELECT id FROM starvit.event_keys "
                "WHERE status = 'processed' AND received_at < now() - make_interval(days => %s) "
                "ORDER BY id LIMIT %s)",
                (older_than_days, batch),
            )
            return cursor.rowcount

    async def list(self, *, status: str | None = None, limit: int = 50) -> list[StoredEvent]:
        async with self.pool.connection() as conn:
            if status:
                cursor = await conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM starvit.event_keys WHERE status = %s "  # noqa: S608
                    "ORDER BY id DESC LIMIT %s",
                    (status, limit),
                )
            else:
                cursor = await conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM starvit.event_keys "  # noqa: S608
                    "ORDER BY id DESC LIMIT %s",
                    (limit,),
                )
            return [_stored(row) for row in await cursor.fetchall()]

    async def counts(self) -> dict[str, int]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT status, count(*) FROM starvit.event_keys GROUP BY status"
            )
            return {str(status): int(count) for status, count in await cursor.fetchall()}

    async def oldest_unstarted_seconds(self) -> float | None:
        """How long the oldest event that no worker has started yet has waited (None when
        none waits): a worker that is alive but stuck shows here."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT extract(epoch FROM now() - min(received_at)) FROM starvit.event_keys "
                "WHERE status = 'queued' AND attempts = 0"
            )
            row = await cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def patient_for(self, resource_type: str, resource_id: str) -> str | None:
        """The patient an earlier version of this resource was about (for deletes, whose
        notification carries no body)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT patient_id FROM starvit.event_keys WHERE resource_type = %s AND "
                "resource_id = %s AND patient_id IS NOT NULL ORDER BY id DESC LIMIT 1",
                (resource_type, resource_id),
            )
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def failed_ids(self, *, since: datetime | None = None, limit: int = 10_000) -> list[int]:
        """Dead-lettered events (oldest first), received at or after ``since`` when given."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM starvit.event_keys WHERE status = 'failed' "
                "AND (%s::timestamptz IS NULL OR received_at >= %s::timestamptz) "
                "ORDER BY id LIMIT %s",
                (since, since, limit),
            )
            return [int(row[0]) for row in await cursor.fetchall()]

    async def due_dead_letters(
        self, *, after_seconds: float, max_auto_retries: int, limit: int = 500
    ) -> list[StoredEvent]:
        """Dead letters whose cause was transient and whose turn has come: failed at least
        ``after_seconds`` x 2^(automatic retries so far) ago, retried automatically fewer than
        ``max_auto_retries`` times. Permanent failures are never returned."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM starvit.event_keys WHERE status = 'failed' "  # noqa: S608
                "AND transient AND auto_retries < %s AND failed_at <= now() - "
                "make_interval(secs => %s * power(2, auto_retries)) ORDER BY failed_at LIMIT %s",
                (max_auto_retries, after_seconds, limit),
            )
            return [_stored(row) for row in await cursor.fetchall()]

    async def redefer(self, queue: App, event: StoredEvent, *, automatic: bool = False) -> int:
        """A fresh job for a failed (dead-lettered) event; attempts start again. ``automatic``
        (the worker's own dead-letter retry) counts one more automatic retry; a retry by hand
        starts that count again. Only a row still ``failed`` is re-queued (a concurrent retry
        of the same event is a no-op: the job is deferred inside the same transaction and
        rolled back with it)."""
        key = EventKey(
            handler=event.handler,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            version_id=event.version_id,
            interaction=event.interaction,
            source="replay",
            patient_id=event.patient_id,
        )
        async with self.pool.connection() as conn, conn.transaction():
            [job] = await queue.job_manager.batch_defer_jobs_async(
                [_job_for(key, event.id)], connection=conn
            )
            cursor = await conn.execute(
                "UPDATE starvit.event_keys SET status = 'queued', error_code = NULL, "
                "attempts = 0, job_id = %s, auto_retries = CASE WHEN %s THEN auto_retries + 1 "
                "ELSE 0 END WHERE id = %s AND status = 'failed'",
                (job.id, automatic, event.id),
            )
            if cursor.rowcount != 1:
                raise _NotFailedAnymore
        assert job.id is not None
        return job.id

    async def retry_failed(
        self, queue: App, event: StoredEvent, *, automatic: bool = False
    ) -> int | None:
        """:meth:`redefer`, or None when the event is no longer dead-lettered."""
        try:
            return await self.redefer(queue, event, automatic=automatic)
        except _NotFailedAnymore:
            return None

    async def sweep_cursor(self, handler: str) -> SweepCursor | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT since, after_id, bucket_offset FROM starvit.sweep_watermarks "
                "WHERE handler = %s",
                (handler,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return SweepCursor(row[0], row[1], int(row[2]))  # pyright: ignore[reportArgumentType]

    async def save_sweep_cursor(
        self, handler: str, position: SweepCursor, *, scanned_to: datetime | None = None
    ) -> None:
        """Persist the sweep's place: (``since``, ``after_id``) only ever moves forwards (its
        ``bucket_offset`` may be corrected either way after a re-read); ``scanned_to``:
        everything last updated before it has been looked at (the run reached the end)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO starvit.sweep_watermarks AS w (handler, since, after_id, "
                "bucket_offset, scanned_to, lag_seconds) VALUES (%s, %s, %s, %s, %s, "
                "extract(epoch FROM now() - coalesce(%s, %s))) "
                "ON CONFLICT (handler) DO UPDATE SET since = EXCLUDED.since, "
                "after_id = EXCLUDED.after_id, bucket_offset = EXCLUDED.bucket_offset, "
                "scanned_to = GREATEST(w.scanned_to, EXCLUDED.scanned_to), "
                "lag_seconds = extract(epoch FROM now() - "
                "GREATEST(EXCLUDED.since, w.scanned_to, EXCLUDED.scanned_to)), updated_at = now() "
                "WHERE (EXCLUDED.since, coalesce(EXCLUDED.after_id, '')) >= "
                "(w.since, coalesce(w.after_id, ''))",
                (
                    handler,
                    position.since,
                    position.after_id,
                    position.bucket_offset,
                    scanned_to,
                    scanned_to,
                    position.since,
                ),
            )

    async def sweep_lag(self) -> list[SweepLag]:
        """Per handler: the sweep's watermark, how far it has looked, and how many seconds
        behind now that is (live, not as of the last run): what ops watch."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT handler, since, scanned_to, updated_at, extract(epoch FROM now() - "
                "GREATEST(since, coalesce(scanned_to, since))) FROM starvit.sweep_watermarks "
                "ORDER BY handler"
            )
            return [
                SweepLag(str(h), s, t, u, float(lag))  # pyright: ignore[reportArgumentType]
                for h, s, t, u, lag in await cursor.fetchall()
            ]

    async def watermark(self, handler: str) -> datetime | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT since FROM starvit.sweep_watermarks WHERE handler = %s", (handler,)
            )
            row = await cursor.fetchone()
        return row[0] if row else None  # pyright: ignore[reportUnknownVariableType]

    async def set_watermark(self, handler: str, since: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO starvit.sweep_watermarks (handler, since) VALUES (%s, %s) "
                "ON CONFLICT (handler) DO UPDATE SET "
                "since = GREATEST(starvit.sweep_watermarks.since, EXCLUDED.since), "
                "updated_at = now()",
                (handler, since),
            )

    async def record_subscription_health(
        self, handler: str, subscription_id: str | None, status: str, has_error_text: bool
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO starvit.subscription_health (handler, subscription_id, status, "
                "has_error_text) VALUES (%s, %s, %s, %s) ON CONFLICT (handler) DO UPDATE SET "
                "subscription_id = EXCLUDED.subscription_id, status = EXCLUDED.status, "
                "has_error_text = EXCLUDED.has_error_text, checked_at = now()",
                (handler, subscription_id, status, has_error_text),
            )

    async def subscription_health(self) -> list[tuple[str, str | None, str, bool, datetime]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT handler, subscription_id, status, has_error_text, checked_at "
                "FROM starvit.subscription_health ORDER BY handler"
            )
            return [tuple(row) for row in await cursor.fetchall()]  # pyright: ignore[reportReturnType]


# ------------------------------------------------------------------ abuse control (the edge)


class PostgresFailureStore:
    """The failed-signature counter shared by every receiver process (one row per client,
    the current fixed window and its count): see :mod:`app.api.ratelimit`."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def record_failure(self, client: str, window_start: float) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO starvit.signature_failures AS s (client, window_start, failures) "
                "VALUES (%s, to_timestamp(%s), 1) ON CONFLICT (client) DO UPDATE SET "
                "failures = CASE WHEN EXCLUDED.window_start > s.window_start THEN 1 "
                "ELSE s.failures + 1 END, "
                "window_start = GREATEST(s.window_start, EXCLUDED.window_start) "
                "RETURNING failures",
                (client[:128], window_start),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 1


async def flush_rejections(pool: AsyncConnectionPool, counts: Counts) -> None:
    """Add in-process counts of refused deliveries to ``starvit.rejected_deliveries``."""
    keys = list(counts)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO starvit.rejected_deliveries AS r (handler, reason, minute, count) "
            "SELECT handler, reason, to_timestamp(minute), count FROM "
            "unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
            "AS v(handler, reason, minute, count) "
            "ON CONFLICT (handler, reason, minute) DO UPDATE SET count = r.count + EXCLUDED.count",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [counts[k] for k in keys],
            ),
        )


@dataclass(frozen=True, slots=True)
class RejectedCount:
    handler: str
    reason: str
    minute: datetime
    count: int


async def rejected_deliveries(
    pool: AsyncConnectionPool, since: datetime, *, limit: int = 10_000
) -> list[RejectedCount]:
    """Refused deliveries per handler, reason and minute since ``since`` (newest first): what
    the ops dashboard shows. PHI-free by construction."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT handler, reason, minute, count FROM starvit.rejected_deliveries "
            "WHERE minute >= %s ORDER BY minute DESC, handler, reason LIMIT %s",
            (since, limit),
        )
        return [
            RejectedCount(str(h), str(r), m, int(c))  # pyright: ignore[reportArgumentType]
            for h, r, m, c in await cursor.fetchall()
        ]


async def prune_edge_counters(pool: AsyncConnectionPool, retention_days: int) -> None:
    """Forget failure windows older than an hour and refusal counts past the retention."""
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM starvit.signature_failures WHERE window_start < now() - interval '1 hour'"
        )
        await conn.execute(
            "DELETE FROM starvit.rejected_deliveries "
            "WHERE minute < now() - make_interval(days => %s)",
            (retention_days,),
        )
