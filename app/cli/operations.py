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
    help="The embedded PostgreSQL (used when DATABASE_URL is unset).", no_args_is_help=True
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


def _run[T](work: Callable[[], Coroutine[Any, Any, T]]) -> T:
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
    from app.observability.logging import configure_logging  # noqa: PLC0415
    from app.services.jobs import run_worker  # noqa: PLC0415

    configure_logging(settings.log_level)
    if processes == 1:
        _run(lambda: run_worker(settings, concurrency=concurrency))
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
    from app.observability.logging import configure_logging  # noqa: PLC0415
    from app.services.jobs import run_worker  # noqa: PLC0415

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
        from app.persistence.events import EventRepository  # noqa: PLC0415
        from app.services.wiring import open_database  # noqa: PLC0415

        database, _queue = await open_database(settings)
        try:
            repo = EventRepository(database.pool)
            counts = await repo.counts()
            events = await repo.list(status=status, limit=limit)
        finally:
            await database.aclose()
        typer.echo("events: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        typer.echo(f"{'id':>7}  {'bot':<14} {'resource':<46} {'status':<10} {'try':>3}  result")
        for e in events:
            result = e.error_code or e.outcome or ""
            ref = f"{e.reference}/_history/{e.version_id}"
            typer.echo(f"{e.id:>7}  {e.bot:<14} {ref:<46} {e.status:<10} {e.attempts:>3}  {result}")

    _run(work)


@jobs_app.command("retry")
def jobs_retry(
    event_ids: Annotated[list[int], typer.Argument(help="Event ids (from `starvit jobs list`).")],
) -> None:
    """Replay dead-lettered events: each gets a fresh job with its attempts reset."""
    settings = _settings()

    async def work() -> int:
        from app.persistence.events import EventRepository  # noqa: PLC0415
        from app.services.wiring import open_database  # noqa: PLC0415

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

    if _run(work):
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

        from app.services.sweep import sweep  # noqa: PLC0415
        from app.services.wiring import medplum_client, open_database  # noqa: PLC0415
        from bots import ALL_BOTS  # noqa: PLC0415

        medplum = medplum_client(settings)
        database, queue = await open_database(settings)
        try:
            results = await sweep(
                settings=settings,
                medplum=medplum,
                pool=database.pool,
                queue=queue,
                bots=ALL_BOTS,
            )
        finally:
            await medplum.aclose()
            await database.aclose()
        for result in results:
            typer.echo(f"{result.bot:<16} seen={result.seen:<6} enqueued={result.enqueued}")

    _run(work)


def demo(
    patients: Annotated[
        int | None, typer.Option(min=1, help="Load only the first N Synthea patients.")
    ] = None,
    keep_running: Annotated[
        bool, typer.Option(help="Leave everything running after the demo (Ctrl-C stops).")
    ] = False,
) -> None:
    """The end-to-end demo: stand-in, embedded PostgreSQL, receiver, worker, Synthea patients,
    pending Tasks, one approval and one rejection, and the Provenance chain."""
    from app.devtools.demo import run_demo  # noqa: PLC0415

    try:
        raise typer.Exit(code=_run(lambda: run_demo(patients=patients, keep_running=keep_running)))
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def register(cli: typer.Typer) -> None:
    cli.command()(demo)
    cli.command()(worker)
    cli.command("sweep")(sweep_once)
    cli.add_typer(jobs_app, name="jobs")
    from app.cli.subscriptions import subscriptions_app  # noqa: PLC0415

    cli.add_typer(subscriptions_app, name="subscriptions")
    cli.add_typer(db_app, name="db")
