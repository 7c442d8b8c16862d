"""Operational commands: ``worker``, ``jobs``, ``db``, ``sweep`` and ``demo``."""

from __future__ import annotations

import asyncio
import os
import signal
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
    """Run queue workers: process events, sweep, requeue stalled jobs. Stops on SIGTERM/SIGINT
    after running jobs finish."""
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
        run_async(lambda: run_worker(settings, concurrency=concurrency))
        return
    import multiprocessing  # noqa: PLC0415

    children = [
        multiprocessing.Process(target=_worker_process, args=(concurrency,), daemon=False)
        for _ in range(processes)
    ]
    for child in children:
        child.start()

    def stop_children(signum: int, _frame: object) -> None:
        # Each child stops gracefully on SIGTERM (running jobs get their graceful timeout).
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        del signum

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    for child in children:
        child.join()


def _worker_process(concurrency: int | None) -> None:
    from app.events.jobs import run_worker  # noqa: PLC0415
    from app.observability.logging import configure_logging  # noqa: PLC0415

    settings = load_settings()
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings, concurrency=concurrency))


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
    event_ids: Annotated[list[int], typer.Argument(help="Event ids (from `starvit jobs list`).")],
) -> None:
    """Replay dead-lettered events: each gets a fresh job with its attempts reset."""
    settings = _settings()

    async def work() -> int:
        from app.events.repository import EventRepository  # noqa: PLC0415
        from app.wiring import open_database  # noqa: PLC0415

        database, queue = await open_database(settings)
        missing = 0
        try:
            repo = EventRepository(database.pool)
            for event_id in event_ids:
                event = await repo.get(event_id)
                if event is None:
                    typer.echo(f"event {event_id}: no such event", err=True)
                    missing += 1
                    continue
                if event.status != "failed":
                    typer.echo(f"event {event_id}: {event.status}, not dead-lettered: left as is")
                    continue
                job_id = await repo.redefer(queue, event)
                typer.echo(f"event {event_id}: queued again as job {job_id}")
        finally:
            await database.aclose()
        return missing

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
            typer.echo(f"{result.handler:<16} seen={result.seen:<6} enqueued={result.enqueued}")

    run_async(work)


def register(cli: typer.Typer) -> None:
    cli.command()(worker)
    cli.command("sweep")(sweep_once)
    cli.add_typer(jobs_app, name="jobs")
    from app.cli.subscriptions import subscriptions_app  # noqa: PLC0415

    cli.add_typer(subscriptions_app, name="subscriptions")
    cli.add_typer(db_app, name="db")
