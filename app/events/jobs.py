"""The job queue's tasks (procrastinate on PostgreSQL) and the worker process.

``process_event`` is the claim-check job the receiver defers: it carries the event key's id
only, never a resource. Jobs of one patient and handler run one at a time (the job's
``lock``). Failures retry with capped exponential backoff; a permanent failure, or the last
attempt, leaves the job ``failed`` in procrastinate and the event ``failed`` with a stable
error code: the dead letter, listed by ``starvit jobs list --status failed`` and replayed by
``starvit jobs retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import psycopg
from procrastinate import BaseRetryStrategy, Blueprint, JobContext, RetryDecision
from procrastinate.exceptions import ConnectorException as ProcrastinateConnectorError
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError as SQLAlchemyDBAPIError

from app.events.coalesce import coalesce
from app.events.heartbeats import (
    WorkerIdentity,
    prune_heartbeats,
    record_heartbeat,
    remove_heartbeat,
)
from app.events.ledger import PostgresSlotLedger
from app.events.processor import EventProcessor
from app.events.repository import (
    CHECKING_DELETE_PREFIX,
    EVENTS_QUEUE,
    PENDING_DELETE_VERSION,
    PROCESS_EVENT_TASK,
    EventRepository,
    prune_edge_counters,
)
from app.events.sweep import sweep
from app.handlers.protocol import DELETED_VERSION, PermanentFailure
from app.integrations.medplum import MedplumError, MedplumNotFound, MedplumPreconditionFailed
from app.integrations.medplum.budget import SharedBudget
from app.observability.correlation import correlation_id_var
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from procrastinate import App
    from procrastinate.jobs import Job

    from app.handlers.registry import HandlerRegistry
    from app.integrations.medplum import MedplumClient
    from app.persistence.database import Database
    from app.settings import Settings

log = get_logger("app.events.jobs")

# procrastinate's task-name namespace ("starvit:process_event").
TASK_NAMESPACE = "starvit"
MAINTENANCE_QUEUE = "maintenance"
blueprint = Blueprint()


@dataclass
class WorkerState:
    settings: Settings
    database: Database
    queue: App
    medplum: MedplumClient
    repo: EventRepository
    processor: EventProcessor
    registry: HandlerRegistry
    jobs_done: int = 0  # events this process finished (its heartbeat reports it)


_state: WorkerState | None = None


def install_state(state: WorkerState | None) -> None:
    global _state  # noqa: PLW0603 - one worker state per process
    _state = state


def state() -> WorkerState:
    if _state is None:
        raise RuntimeError("the worker state is not installed")
    return _state


def error_code_of(error: BaseException) -> str:
    if isinstance(error, PermanentFailure):
        return error.error_code
    if isinstance(error, MedplumError):
        return error.error_code
    return "internal_error"


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, PermanentFailure):
        return False
    if isinstance(error, MedplumError):
        # A 412 means someone changed a Task or proposal meanwhile: re-read and re-plan.
        return error.retryable or isinstance(error, MedplumPreconditionFailed)
    return True  # unexpected errors (a dropped database connection...) get another chance


class EventRetry(BaseRetryStrategy):
    """Capped exponential backoff (base, 2x base, 4x base ... at most ``cap`` seconds),
    honouring Medplum's rate-limit reset, for at most ``settings.job_max_attempts`` runs."""

    def __init__(self, base_seconds: float = 2.0, cap_seconds: float = 300.0) -> None:
        self.base = base_seconds
        self.cap = cap_seconds

    def max_attempts(self) -> int:
        return _state.settings.job_max_attempts if _state is not None else 8

    def wait_seconds(self, error: BaseException, attempts: int) -> int:
        base = _state.settings.job_retry_base_seconds if _state is not None else self.base
        wait = min(self.cap, base * 2**attempts)
        if isinstance(error, MedplumError) and error.retry_after:
            wait = max(wait, min(self.cap, error.retry_after))
        return max(1, round(wait))

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not is_retryable(exception) or job.attempts + 1 >= self.max_attempts():
            return None
        return RetryDecision(retry_in={"seconds": self.wait_seconds(exception, job.attempts)})


RETRY = EventRetry()


@blueprint.task(name="process_event", queue=EVENTS_QUEUE, retry=RETRY, pass_context=True)
async def process_event(context: JobContext, event_id: int, trace_id: str | None = None) -> None:
    worker = state()
    token = correlation_id_var.set(trace_id or f"event-{event_id}")
    try:
        event = await worker.repo.get(event_id)
        if event is None or event.status == "processed":
            return
        await worker.repo.start_attempt(event_id)
        if _unconfirmed_delete(event.version_id):
            confirmed = await confirm_delete(worker, event.id, event.version_id, event.reference)
            if confirmed is not None:
                await worker.repo.finish(event_id, outcome=confirmed, medplum_requests=1)
                return
            event = replace(event, version_id=DELETED_VERSION)
        if event.patient_id is None and event.deleted:
            patient = await worker.repo.patient_for(event.resource_type, event.resource_id)
            event = replace(event, patient_id=patient)
        if await coalesce(worker.database.pool, worker.settings, event):
            return
        try:
            result = await worker.processor.process(event, trace_id=trace_id)
        except Exception as error:
            job = context.job
            final = RETRY.get_retry_decision(exception=error, job=job) is None
            code = error_code_of(error)
            await worker.repo.fail(
                event_id, error_code=code, final=final, transient=is_retryable(error)
            )
            log.warning(
                "event_failed",
                event_id=event_id,
                handler=event.handler,
                error_code=code,
                attempt=job.attempts + 1,
                dead_lettered=final,
            )
            raise
        await worker.repo.finish(
            event_id,
            outcome=result.outcome,
            medplum_requests=result.medplum_requests,
            quota_points=result.quota_points,
        )
        worker.jobs_done += 1
    finally:
        correlation_id_var.reset(token)


def _unconfirmed_delete(version_id: str) -> bool:
    return version_id == PENDING_DELETE_VERSION or version_id.startswith(CHECKING_DELETE_PREFIX)


async def confirm_delete(
    worker: WorkerState, event_id: int, version_id: str, reference: str
) -> str | None:
    """Settle a delete recorded under its provisional key: None when Medplum confirms the
    resource is gone and this event now holds the ``deleted`` key (process it); otherwise the
    outcome to record without any effect: ``delete_not_confirmed`` (the resource is there: a
    forged or stale notification) or ``duplicate`` (another delivery of the same delete holds
    the key). A Medplum error propagates and the job retries."""
    if version_id == PENDING_DELETE_VERSION:
        await worker.repo.begin_delete_check(event_id)
    resource_type, _, resource_id = reference.partition("/")
    try:
        await worker.medplum.read(resource_type, resource_id)
    except MedplumNotFound:
        pass
    else:
        log.warning("delete_not_confirmed", event_id=event_id, resource_type=resource_type)
        return "delete_not_confirmed"
    if not await worker.repo.confirm_delete(event_id):
        return "duplicate"
    return None


@blueprint.task(name="sweep", queue=MAINTENANCE_QUEUE, queueing_lock="sweep")
async def run_sweep(timestamp: int) -> None:
    worker = state()
    del timestamp
    await sweep(
        settings=worker.settings,
        medplum=worker.medplum,
        pool=worker.database.pool,
        queue=worker.queue,
        registry=worker.registry,
    )


# How often every worker looks for the jobs of a dead worker.
STALLED_CHECK_SECONDS = 5


@blueprint.task(name="retry_stalled_jobs", queue=MAINTENANCE_QUEUE, queueing_lock="stalled")
async def retry_stalled_jobs(timestamp: int) -> None:
    """Jobs of a worker that died (no heartbeat for ``STARVIT_JOB_STALLED_SECONDS``) go back
    to the queue, which also frees their patient lock."""
    del timestamp
    worker = state()
    await requeue_stalled(worker.queue, worker.settings.job_stalled_seconds)


async def requeue_stalled(queue: App, seconds_since_heartbeat: float = 30) -> int:
    """Put the running jobs of workers silent for ``seconds_since_heartbeat`` back in the queue
    and forget those workers. The job itself is safe to run again: an event already
    ``processed`` is skipped, and every effect is keyed by identifiers and version guards."""
    stalled = list(
        await queue.job_manager.get_stalled_jobs(seconds_since_heartbeat=seconds_since_heartbeat)
    )
    for job in stalled:
        await queue.job_manager.retry_job(job)
    if stalled:
        log.warning("stalled_jobs_requeued", count=len(stalled))
    await queue.job_manager.prune_stalled_workers(seconds_since_heartbeat=seconds_since_heartbeat)
    return len(stalled)


@blueprint.task(name="retry_dead_letters", queue=MAINTENANCE_QUEUE, queueing_lock="dead_letters")
async def retry_dead_letters(timestamp: int) -> None:
    """Self-healing dead letter: events that failed for a transient reason get a fresh job."""
    del timestamp
    await heal_dead_letters(state())


async def heal_dead_letters(worker: WorkerState, *, limit: int = 500) -> int:
    """Re-queue up to ``limit`` dead letters whose cause was transient and whose turn has come
    (``STARVIT_DEAD_LETTER_RETRY_AFTER_SECONDS``, doubling per round, at most
    ``STARVIT_DEAD_LETTER_MAX_AUTO_RETRIES`` rounds). Permanent failures stay failed, with
    their error code, until someone acts."""
    settings = worker.settings
    due = await worker.repo.due_dead_letters(
        after_seconds=settings.dead_letter_retry_after_seconds,
        max_auto_retries=settings.dead_letter_max_auto_retries,
        limit=limit,
    )
    retried = 0
    for event in due:
        if await worker.repo.retry_failed(worker.queue, event, automatic=True) is not None:
            retried += 1
    if retried:
        log.warning("dead_letters_retried", count=retried)
    return retried


@blueprint.task(name="subscription_health", queue=MAINTENANCE_QUEUE, queueing_lock="health")
async def check_subscriptions(timestamp: int) -> None:
    """Record each Subscription's status; a switched-off one is logged as an error (the sweep
    keeps its events flowing meanwhile; ``starvit subscriptions sync`` re-enables it)."""
    from app.subscriptions.service import subscription_health  # noqa: PLC0415

    del timestamp
    worker = state()
    for health in await subscription_health(worker.medplum, worker.registry):
        await worker.repo.record_subscription_health(
            health.handler, health.subscription_id, health.status, health.error_text_present
        )
        if health.status != "active":
            log.error(
                "subscription_unhealthy",
                handler=health.handler,
                subscription_id=health.subscription_id,
                status=health.status,
            )


@blueprint.task(name="scheduled_handler", queue=MAINTENANCE_QUEUE)
async def run_scheduled_handler(timestamp: int, handler: str) -> None:
    """A handler's own periodic work (its ``schedule``), e.g. the expiry of undecided Tasks."""
    del timestamp
    worker = state()
    scheduled = worker.registry.get(handler)
    if scheduled is None:
        log.error("scheduled_handler_unknown", handler=handler)
        return
    done = await scheduled.run_scheduled(worker.processor.context)
    log.info("scheduled_handler_ran", handler=handler, items=done)


FINISHED_JOB_RETENTION_HOURS = 72


@blueprint.task(name="queue_housekeeping", queue=MAINTENANCE_QUEUE, queueing_lock="housekeeping")
async def queue_housekeeping(timestamp: int) -> None:
    """Delete succeeded jobs older than three days (failed ones are the dead letter and stay),
    processed event keys older than the retention (``STARVIT_EVENT_KEY_RETENTION_DAYS``; failed
    and queued ones stay), old failed-signature windows and refusal counts, and refresh the
    queue table's planner statistics: procrastinate's fetch slows sharply on a backlog the
    statistics have not seen."""
    del timestamp
    worker = state()
    await worker.queue.job_manager.delete_old_jobs(nb_hours=FINISHED_JOB_RETENTION_HOURS)
    retention = worker.settings.event_key_retention
    await prune_heartbeats(worker.database.pool)
    pruned = await worker.repo.prune_processed(retention)
    if pruned:
        log.info("event_keys_pruned", count=pruned, retention_days=retention)
    await prune_edge_counters(worker.database.pool, retention)
    async with worker.database.pool.connection() as conn:
        await conn.execute("ANALYZE procrastinate_jobs")


def every(seconds: int) -> str:
    """A cron expression (croniter, seconds as the sixth field) for an interval."""
    if seconds < 60:
        return f"* * * * * */{seconds}"
    return f"*/{max(1, seconds // 60)} * * * *"


def register(queue: App, settings: Settings, registry: HandlerRegistry) -> None:
    """Add the tasks to ``queue`` (once) and schedule the periodic ones, the handlers'
    schedules included."""
    if PROCESS_EVENT_TASK in queue.tasks:  # pyright: ignore[reportUnknownMemberType]
        return
    queue.add_tasks_from(blueprint, namespace=TASK_NAMESPACE)
    if settings.sweep_interval_seconds:
        queue.periodic(cron=every(settings.sweep_interval_seconds), periodic_id="sweep")(run_sweep)
    queue.periodic(cron=every(STALLED_CHECK_SECONDS), periodic_id="stalled")(retry_stalled_jobs)
    if settings.dead_letter_retry_interval_seconds:
        queue.periodic(
            cron=every(settings.dead_letter_retry_interval_seconds), periodic_id="dead_letters"
        )(retry_dead_letters)
    queue.periodic(cron=every(300), periodic_id="health")(check_subscriptions)
    for handler in registry.scheduled():
        assert handler.schedule is not None
        queue.periodic(
            cron=handler.schedule.cron,
            periodic_id=f"handler:{handler.name}",
            queueing_lock=f"handler:{handler.name}",
            task_kwargs={"handler": handler.name},
        )(run_scheduled_handler)
    queue.periodic(cron=every(60), periodic_id="housekeeping")(queue_housekeeping)


assert f"{TASK_NAMESPACE}:process_event" == PROCESS_EVENT_TASK


# What a session ends with when the database went away (a restart, a failover, a network
# cut): the worker reconnects. Anything else is a crash.
_DATABASE_AWAY = (
    psycopg.Error,
    OSError,  # TimeoutError included
    PoolTimeout,
    ProcrastinateConnectorError,
    SQLAlchemyDBAPIError,  # the schema check at start-up runs through SQLAlchemy
)

# The worker's reconnection backoff: first wait, doubling up to the cap.
RECONNECT_FIRST_WAIT = 0.5
RECONNECT_MAX_WAIT = 10.0
# A session that ran this long was healthy: the next outage starts its backoff afresh.
HEALTHY_SESSION_SECONDS = 30.0
EXIT_GAVE_UP = 3
EXIT_CRASHED = 1


async def run_worker(settings: Settings, *, concurrency: int | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT and return its exit status (0 after a requested
    stop). Running jobs get the graceful timeout to finish, then are cancelled and go through
    the retry policy (a killed worker's jobs are requeued as stalled by another worker).

    The worker rides out database restarts and failovers: whenever its session ends without
    being asked to (procrastinate stops on a lost LISTEN connection, a fetch fails), it logs
    why, waits with a capped backoff and opens a new session; the jobs of the lost session are
    requeued as stalled. If the database stays unreachable for
    ``STARVIT_WORKER_RECONNECT_LIMIT_SECONDS`` it gives up with status 3, and on an unexpected
    error with status 1, saying why at ERROR, so that a supervisor restarts it."""
    from app.observability.tracing import configure_tracing  # noqa: PLC0415
    from app.wiring import handler_registry, medplum_client  # noqa: PLC0415

    configure_tracing(settings)
    registry = handler_registry()
    medplum = medplum_client(settings)
    identity = WorkerIdentity.of_this_process()
    stopping = asyncio.Event()
    sessions: list[asyncio.Task[None]] = []

    def request_stop() -> None:
        if not stopping.is_set():
            log.info("worker_stopping", pid=os.getpid())
        stopping.set()
        for session in sessions:
            session.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    wait = RECONNECT_FIRST_WAIT
    outage_since: float | None = None
    try:
        while not stopping.is_set():
            began = time.monotonic()
            session = asyncio.create_task(
                _session(settings, registry, medplum, identity, concurrency, stopping)
            )
            sessions[:] = [session]
            try:
                await session
                reason = "worker_loop_ended"  # procrastinate stopped on its own
            except asyncio.CancelledError:
                if stopping.is_set():
                    break
                raise
            except _DATABASE_AWAY as error:
                reason = type(error).__name__
            except Exception as error:
                log.error(
                    "worker_crashed", pid=os.getpid(), error=type(error).__name__, exc_info=True
                )
                return EXIT_CRASHED
            if stopping.is_set():
                break
            now = time.monotonic()
            if now - began > HEALTHY_SESSION_SECONDS:
                outage_since, wait = now, RECONNECT_FIRST_WAIT  # a new outage begins
            elif outage_since is None:
                outage_since = began
            limit = settings.worker_reconnect_limit_seconds
            if limit and now - outage_since > limit:
                log.error(
                    "worker_gave_up",
                    pid=os.getpid(),
                    reason=reason,
                    unreachable_seconds=round(now - outage_since, 1),
                )
                return EXIT_GAVE_UP
            log.warning("worker_reconnecting", pid=os.getpid(), reason=reason, wait_seconds=wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=wait)
            wait = min(RECONNECT_MAX_WAIT, wait * 2)
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await medplum.aclose()
        log.info("worker_stopped", pid=os.getpid())


async def _session(  # noqa: PLR0917 - private, one caller
    settings: Settings,
    registry: HandlerRegistry,
    medplum: MedplumClient,
    identity: WorkerIdentity,
    concurrency: int | None,
    stopping: asyncio.Event,
) -> None:
    """One connected run of the worker: open the database and the queue, run procrastinate's
    worker and the heartbeat until either stops."""
    from app.wiring import open_database  # noqa: PLC0415

    global _queue  # noqa: PLW0603 - one queue app per worker process
    database, fresh_queue = await open_database(settings)
    # The same app in every session: procrastinate binds the tasks to the first app they are
    # registered with (a second registration would rename them).
    queue = _queue = _queue or fresh_queue
    worker_state: WorkerState | None = None
    try:
        register(queue, settings, registry)
        medplum.pacer = SharedBudget(database.pool, reserve_fraction=settings.medplum_quota_reserve)
        repo = EventRepository(database.pool)
        processor = EventProcessor(
            medplum, settings, registry, ledger=PostgresSlotLedger(database.pool)
        )
        worker_state = WorkerState(settings, database, queue, medplum, repo, processor, registry)
        worker_state.jobs_done = _jobs_done_so_far
        install_state(worker_state)
        async with queue.open_async():
            await requeue_stalled(queue, settings.job_stalled_seconds)
            beat = asyncio.create_task(_beat(worker_state, identity))
            log.info(
                "worker_started",
                pid=os.getpid(),
                worker_id=identity.worker_id,
                concurrency=concurrency or settings.worker_concurrency,
            )
            try:
                await queue.run_worker_async(
                    queues=[EVENTS_QUEUE, MAINTENANCE_QUEUE],
                    concurrency=concurrency or settings.worker_concurrency,
                    shutdown_graceful_timeout=25,
                    install_signal_handlers=False,
                    # A job waiting on its patient lock is not notified when the lock frees up.
                    fetch_job_polling_interval=0.2,
                    update_heartbeat_interval=max(1.0, settings.job_stalled_seconds / 4),
                    stalled_worker_timeout=settings.job_stalled_seconds,
                )
            finally:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
                if stopping.is_set():
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await remove_heartbeat(database.pool, identity.worker_id)
    finally:
        if worker_state is not None:
            _remember_jobs_done(worker_state.jobs_done)
        install_state(None)
        await database.aclose()


_jobs_done_so_far = 0
_queue: App | None = None


def _remember_jobs_done(count: int) -> None:
    global _jobs_done_so_far  # noqa: PLW0603 - one worker per process
    _jobs_done_so_far = count


async def _beat(worker: WorkerState, identity: WorkerIdentity) -> None:
    """Write this process's heartbeat row every ``STARVIT_WORKER_HEARTBEAT_SECONDS``."""
    interval = worker.settings.worker_heartbeat_seconds
    while True:
        try:
            async with asyncio.timeout(max(1.0, interval)):
                await record_heartbeat(worker.database.pool, identity, worker.jobs_done)
        except Exception as error:  # the database is away: procrastinate's loop will notice
            log.warning("worker_heartbeat_failed", error=type(error).__name__)
        await asyncio.sleep(interval)
