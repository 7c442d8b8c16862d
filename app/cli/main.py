"""The ``starvit`` command line."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from app import __version__
from app.settings import ConfigurationError, load_settings

cli = typer.Typer(
    name="starvit",
    rich_markup_mode=None,
    help="Starvit clinical event processor: server, worker, jobs, subscriptions, calculators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# How the production server runs (also used by the benchmarks' bare baseline, so that both are
# served the same way): the Uvicorn worker with the request limits enforced (app/api/server.py
# reads the three --limit-request-* settings, which the stock Uvicorn worker ignores, and
# --worker-connections), no `server` banner, graceful stop, idle kept-alive connections closed
# after 5 s, a worker silent for 30 s restarted, no access log (URLs carry queries).
GUNICORN_FLAGS = (
    "--worker-class",
    "app.api.server.StarvitUvicornWorker",
    "--limit-request-line",
    "4094",
    "--limit-request-fields",
    "100",
    "--limit-request-field_size",
    "8190",
    "--worker-connections",
    "1000",
    "--timeout",
    "30",
    "--graceful-timeout",
    "30",
    "--keep-alive",
    "5",
    "--access-logfile",
    "/dev/null",
    "--error-logfile",
    "-",
)


def fail_configuration(error: ConfigurationError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


@cli.command()
def version() -> None:
    """Print the service version."""
    typer.echo(__version__)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Gunicorn worker processes.")] = 2,
) -> None:
    """Run the production server: Gunicorn with the Uvicorn worker (never --reload)."""
    try:
        settings = load_settings()
        settings.require_webhook_secrets()
    except ConfigurationError as error:
        raise fail_configuration(error) from None
    from app.persistence.embedded import database_url_for  # noqa: PLC0415

    try:
        os.environ["STARVIT_DATABASE_URL"] = database_url_for(settings)
    except ConfigurationError as error:
        raise fail_configuration(error) from None
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "app.main:create_app()",
        *GUNICORN_FLAGS,
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with the server


_registered = False


def register_subcommands() -> None:
    """Add the command groups to ``cli`` (once)."""
    global _registered  # noqa: PLW0603 - one command line per process
    if _registered:
        return
    _registered = True
    from app.cli.calc import calc_app  # noqa: PLC0415

    cli.add_typer(calc_app, name="calc")
    from app.cli import operations  # noqa: PLC0415

    operations.register(cli)
    from app.research.cli import research_app  # noqa: PLC0415

    cli.add_typer(research_app, name="research")


def run() -> None:
    register_subcommands()
    cli()
