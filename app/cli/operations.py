"""Operational commands: ``worker``, ``jobs``, ``db``, ``sweep`` and ``demo``."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

jobs_app = typer.Typer(
    help="Inspect and replay event jobs (the dead letter).", no_args_is_help=True
)
db_app = typer.Typer(
    help="The service's database: its schema migrations, and the embedded PostgreSQL (used "
    "when DATABASE_URL is unset).",
    no_args_is_help=True,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


def run_async[T](work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(work())
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=64, help="Jobs run at once (default: settings).")
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, max=32, help="Worker processes to run side by side.")
    ] = 1,
) -> None:
    """Run queue workers: process events, sweep, requeue stalled jobs, retry transient dead
    letters. Rides out database restarts; stops on SIGTERM/SIGINT after running jobs finish.
    With --processes N the parent supervises its children and restarts one that dies. Exits
    non-zero only when it must stop on its own (see docs/backend/DEPLOYMENT_CLOUD_RUN.md)."""
    settings = _settings()
    try:
        settings.require_medplum_credentials()
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    from app.events.jobs import run_worker  # noqa: PLC0415
    from app.observability.logging import configure_logging  # noqa: PLC0415

    configure_logging(settings.log_level)
    if processes == 1:
        code = run_async(lambda: run_worker(settings, concurrency=concurrency))
    else:
        code = _supervise(processes, concurrency)
    if code:
        raise typer.Exit(code=code)


# A child restarted this soon after its start waits longer before the next restart (doubling
# from the first wait up to the cap); one that ran longer is restarted after the first wait.
CHILD_RESTART_FIRST_WAIT = 1.0
CHILD_RESTART_MAX_WAIT = 30.0
CHILD_HEALTHY_SECONDS = 60.0


def _supervise(processes: int, concurrency: int | None) -> int:
    """Run ``processes`` worker children and restart any that exits without being asked to;
    on SIGTERM/SIGINT stop them all (each finishes its running jobs) and return 0."""
    import multiprocessing  # noqa: PLC0415
    import time  # noqa: PLC0415

    from app.observability.logging import get_logger  # noqa: PLC0415

    log = get_logger("app.cli.worker")
    stopping = False

    def spawn() -> multiprocessing.Process:
        child = multiprocessing.Process(target=_worker_process, args=(concurrency,), daemon=False)
        child.start()
        return child

    def stop_children(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        # Each child stops gracefully on SIGTERM (running jobs get their graceful timeout).
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        del signum

    children = [spawn() for _ in range(processes)]
    started = [time.monotonic()] * processes
    waits = [CHILD_RESTART_FIRST_WAIT] * processes
    restart_at: list[float | None] = [None] * processes
    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    log.info("worker_supervisor_started", pid=os.getpid(), processes=processes)
    while not stopping:
        now = time.monotonic()
        for slot, child in enumerate(children):
            if child.is_alive() or stopping:
                continue
            if restart_at[slot] is None:
                ran = now - started[slot]
                waits[slot] = (
                    CHILD_RESTART_FIRST_WAIT
                    if ran > CHILD_HEALTHY_SECONDS
                    else min(CHILD_RESTART_MAX_WAIT, waits[slot] * 2)
                )
                restart_at[slot] = now + waits[slot]
                log.error(
                    "worker_child_exited",
                    pid=child.pid,
                    exit_code=child.exitcode,
                    ran_seconds=round(ran, 1),
                    restart_in_seconds=waits[slot],
                )
            elif now >= (restart_at[slot] or now):
                children[slot] = spawn()
                started[slot], restart_at[slot] = now, None
                log.warning("worker_child_restarted", pid=children[slot].pid, slot=slot)
        time.sleep(0.2)
    for child in children:
        child.join()
    log.info("worker_supervisor_stopped", pid=os.getpid())
    return 0


def _worker_process(concurrency: int | None) -> None:
    import sys  # noqa: PLC0415

    from app.events.jobs import run_worker  # noqa: PLC0415
    from app.observability.logging import configure_logging  # noqa: PLC0415

    # The parent's handlers were inherited: a child handles its signals in its own loop.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    settings = load_settings()
    configure_logging(settings.log_level)
    sys.exit(asyncio.run(run_worker(settings, concurrency=concurrency)))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="queued, processed or failed (the dead letter).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """List recent events with their outcome or error code (no PHI: references only)."""
    if status not in (None, "queued", "processed", "failed"):
        typer.echo("error: --status must be queued, processed or failed", err=True)
        raise typer.Exit(code=2)
    settings = _settings()

    async def work() -> None:
        from app.events.repository import EventRepository  # noqa: PLC0415
        from app.wiring import open_database  # noqa: PLC0415

        database, _queue = await open_database(settings)
        try:
            repo = EventRepository(database.pool)
            counts = await repo.counts()
            events = await repo.list(status=status, limit=limit)
        finally:
            await database.aclose()
        typer.echo("events: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        typer.echo(f"{'id':>7}  {'handler':<14} {'resource':<46} {'status':<10} {'try':>3}  result")
        for e in events:
            result = e.error_code or e.outcome or ""
            ref = f"{e.reference}/_history/{e.version_id}"
            typer.echo(
                f"{e.id:>7}  {e.handler:<14} {ref:<46} {e.status:<10} {e.attempts:>3}  {result}"
            )

    run_async(work)


@jobs_app.command("retry")
def jobs_retry(
    event_ids: Annotated[
        list[int] | None, typer.Argument(help="Event ids (from `starvit jobs list`).")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="failed: every dead-lettered event (with --since: received since)."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="With --status failed: only events received at or after this time (UTC "
            "unless an offset is given)."
        ),
    ] = None,
) -> None:
    """Replay dead-lettered events: each gets a fresh job with its attempts reset. Give event
    ids, or --status failed [--since TIME] for all of them."""
    if status not in (None, "failed"):
        typer.echo("error: --status must be failed (the dead letter)", err=True)
        raise typer.Exit(code=2)
    if bool(event_ids) == (status is not None):
        typer.echo("error: give event ids or --status failed, not both", err=True)
        raise typer.Exit(code=2)
    if since is not None and status is None:
        typer.echo("error: --since goes with --status failed", err=True)
        raise typer.Exit(code=2)
    settings = _settings()
    moment = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since

    async def work() -> int:
        from app.events.repository import EventRepository  # noqa: PLC0415
        from app.wiring import open_database  # noqa: PLC0415

        database, queue = await open_database(settings)
        missing = 0
        try:
            repo = EventRepository(database.pool)
            ids = event_ids or await repo.failed_ids(since=moment)
            if status is not None:
                typer.echo(f"dead-lettered events to retry: {len(ids)}")
            for event_id in ids:
                event = await repo.get(event_id)
                if event is None:
                    typer.echo(f"event {event_id}: no such event", err=True)
                    missing += 1
                    continue
                if event.status != "failed":
                    typer.echo(f"event {event_id}: {event.status}, not dead-lettered: left as is")
                    continue
                job_id = await repo.retry_failed(queue, event)
                if job_id is None:
                    typer.echo(f"event {event_id}: retried meanwhile: left as is")
                    continue
                typer.echo(f"event {event_id}: queued again as job {job_id}")
        finally:
            await database.aclose()
        return missing

    if run_async(work):
        raise typer.Exit(code=1)


@jobs_app.command("workers")
def jobs_workers(
    max_wait: Annotated[
        float,
        typer.Option(
            min=1,
            help="Fail when an event has waited this many seconds without being started.",
        ),
    ] = 300.0,
) -> None:
    """The liveness check: every worker's heartbeat, the oldest unstarted event and the sweep's
    lag. Exits 1 when no worker is alive or events wait longer than --max-wait (a stuck
    worker), so a scheduler or an uptime check can alert on it."""
    settings = _settings()

    async def work() -> int:
        from app.events.heartbeats import list_heartbeats  # noqa: PLC0415
        from app.events.repository import EventRepository  # noqa: PLC0415
        from app.wiring import open_database  # noqa: PLC0415

        database, _queue = await open_database(settings)
        try:
            beats = await list_heartbeats(database.pool)
            repo = EventRepository(database.pool)
            waiting = await repo.oldest_unstarted_seconds()
            lags = await repo.sweep_lag()
        finally:
            await database.aclose()
        interval = settings.worker_heartbeat_seconds
        alive = [b for b in beats if b.alive(interval)]
        typer.echo(f"{'worker':<44} {'pid':>7} {'beat_age_s':>10} {'jobs_done':>9}  state")
        for b in beats:
            state = "alive" if b.alive(interval) else "silent"
            typer.echo(
                f"{b.worker_id:<44} {b.pid:>7} {b.age_seconds:>10.1f} {b.jobs_done:>9}  {state}"
            )
        typer.echo(f"alive workers: {len(alive)}")
        typer.echo(
            "oldest unstarted event: "
            + (f"{waiting:.1f} s" if waiting is not None else "none waiting")
        )
        for lag in lags:
            typer.echo(f"sweep lag {lag.handler}: {lag.lag_seconds:.1f} s")
        problems: list[str] = []
        if not alive:
            problems.append("no worker alive")
        if waiting is not None and waiting > max_wait:
            problems.append(f"events waiting longer than {max_wait:g} s")
        for problem in problems:
            typer.echo(f"unhealthy: {problem}", err=True)
        return 1 if problems else 0

    if run_async(work):
        raise typer.Exit(code=1)


@db_app.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (no-op when it runs) and print its URL."""
    from app.persistence.embedded import ensure_running  # noqa: PLC0415

    settings = _settings()
    try:
        server, started = ensure_running(settings.embedded_pg_dir)
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"{'started' if started else 'running'}: {server.url}")


@db_app.command("migrate")
def db_migrate(
    revision: Annotated[
        str, typer.Option(help="Target revision: head, base or a revision id (0001, 0002...).")
    ] = "head",
) -> None:
    """Bring the service's schema to a revision (the receiver and the worker migrate to head at
    start-up; this is for doing it ahead of a deployment, or going back)."""
    settings = _settings()

    async def work() -> None:
        from alembic.util import CommandError  # noqa: PLC0415

        from app.persistence.database import current_revision, migrate  # noqa: PLC0415
        from app.wiring import resolve_database_url  # noqa: PLC0415

        url = await resolve_database_url(settings)
        before = await current_revision(url)
        try:
            await migrate(url, revision)
        except CommandError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None
        after = await current_revision(url)
        typer.echo(f"schema {before or 'empty'} -> {after or 'empty'}")

    run_async(work)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    from app.persistence.embedded import stop  # noqa: PLC0415

    settings = _settings()
    typer.echo("stopped" if stop(settings.embedded_pg_dir) else "not running")


def sweep_once() -> None:
    """Run the reconciliation sweep once now and print what it found."""
    settings = _settings()

    async def work() -> None:

        from app.events.sweep import sweep  # noqa: PLC0415
        from app.wiring import handler_registry, medplum_client, open_database  # noqa: PLC0415

        medplum = medplum_client(settings)
        database, queue = await open_database(settings)
        try:
            results = await sweep(
                settings=settings,
                medplum=medplum,
                pool=database.pool,
                queue=queue,
                registry=handler_registry(),
            )
        finally:
            await medplum.aclose()
            await database.aclose()
        for result in results:
            typer.echo(
                f"{result.handler:<16} seen={result.seen:<6} enqueued={result.enqueued:<6} "
                f"pages={result.pages:<4} {'caught_up' if result.caught_up else 'behind'}"
            )

    run_async(work)


def register(cli: typer.Typer) -> None:
    cli.command()(worker)
    cli.command("sweep")(sweep_once)
    cli.add_typer(jobs_app, name="jobs")
    from app.cli.subscriptions import subscriptions_app  # noqa: PLC0415

    cli.add_typer(subscriptions_app, name="subscriptions")
    cli.add_typer(db_app, name="db")
