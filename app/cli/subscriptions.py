"""``starvit subscriptions``: the Medplum rest-hook Subscriptions generated from the bots.

* ``generate [--check]`` writes ``subscriptions/*.json`` from the bots' declarations with the
  default settings (no secret, nothing machine-specific); ``--check`` only reports stale files.
* ``sync`` creates or corrects every handler's Subscription (and each bot's Device) in the
  Medplum project with the deployment's receiver URL, client id, max attempts and secret.
* ``status`` prints each handler's Subscription status.

Exit status: 0 success, 1 stale files / an unhealthy Subscription / a Medplum failure, 2 invalid
configuration (a message naming the variable, never a trace).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.integrations.medplum import MedplumError
from app.settings import ConfigurationError, load_settings
from app.subscriptions.service import (
    SUBSCRIPTIONS_DIR,
    check_sync_settings,
    stale_files,
    subscription_health,
    sync_subscriptions,
    write_files,
)
from app.wiring import medplum_client

if TYPE_CHECKING:
    from app.settings import Settings
    from app.subscriptions.service import SubscriptionHealth, SyncResult

subscriptions_app = typer.Typer(
    help=(
        "Medplum rest-hook Subscriptions, one per bot plus the clinician-review handler: "
        "generate the committed definitions, sync them into the Medplum project, show status."
    ),
    no_args_is_help=True,
    add_completion=False,
)

DirectoryOption = Annotated[
    Path,
    typer.Option(
        "--directory",
        help="Where the Subscription definitions live.",
        file_okay=False,
        hidden=True,
    ),
]


def _configuration_failure(error: ConfigurationError) -> typer.Exit:
    # Imported here: app.cli.main registers this module, so a module-level import could cycle.
    from app.cli.main import fail_configuration  # noqa: PLC0415

    return fail_configuration(error)


def _medplum_failure(error: MedplumError) -> typer.Exit:
    # MedplumError's text names the operation, type, status and issue codes only (no PHI).
    typer.echo(f"error: Medplum request failed: {error}", err=True)
    return typer.Exit(code=1)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@subscriptions_app.command()
def generate(
    *,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 listing the stale files."),
    ] = False,
    directory: DirectoryOption = SUBSCRIPTIONS_DIR,
) -> None:
    """Write subscriptions/*.json from the bots' declarations (no secret, default settings)."""
    if check:
        stale = stale_files(directory)
        if stale:
            typer.echo("stale Subscription definitions (run `make subscriptions`):", err=True)
            for name in stale:
                typer.echo(f"  {_display(directory / name)}", err=True)
            raise typer.Exit(code=1)
        typer.echo("subscription definitions are up to date")
        return
    changed = write_files(directory)
    for name in changed:
        typer.echo(f"wrote {_display(directory / name)}")
    if not changed:
        typer.echo("subscription definitions are up to date")


def _sync_settings() -> Settings:
    settings = load_settings()
    check_sync_settings(settings)
    settings.require_medplum_credentials()
    return settings


async def _sync(settings: Settings) -> list[SyncResult]:
    async with medplum_client(settings) as medplum:
        return await sync_subscriptions(medplum, settings)


async def _health(settings: Settings) -> list[SubscriptionHealth]:
    async with medplum_client(settings) as medplum:
        return await subscription_health(medplum)


@subscriptions_app.command()
def sync() -> None:
    """Create or update every Subscription in Medplum (needs STARVIT_MEDPLUM_CLIENT_SECRET and
    STARVIT_WEBHOOK_SECRETS; the first webhook secret signs). Safe to run repeatedly."""
    try:
        settings = _sync_settings()
    except ConfigurationError as error:
        raise _configuration_failure(error) from None
    try:
        results = asyncio.run(_sync(settings))
    except MedplumError as error:
        raise _medplum_failure(error) from None
    width = max(len(result.handler) for result in results)
    for result in results:
        typer.echo(
            f"{result.handler:<{width}}  {result.action:<9}  Subscription/{result.subscription_id}"
        )


@subscriptions_app.command()
def status() -> None:
    """Show each handler's Subscription status; exit 1 unless every one is active and delivers
    every interaction it lists on every Medplum version."""
    try:
        settings = load_settings()
        settings.require_medplum_credentials()
    except ConfigurationError as error:
        raise _configuration_failure(error) from None
    try:
        report = asyncio.run(_health(settings))
    except MedplumError as error:
        raise _medplum_failure(error) from None
    rows = [
        (
            item.handler,
            item.status,
            item.subscription_id or "-",
            "yes" if item.error_text_present else "no",
        )
        for item in report
    ]
    header = ("HANDLER", "STATUS", "SUBSCRIPTION", "ERROR")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for item in report:
        if item.warning:
            typer.echo(f"warning: {item.handler}: {item.warning}", err=True)
    unhealthy = [item.handler for item in report if not item.healthy]
    if unhealthy:
        typer.echo(
            f"not delivering: {', '.join(unhealthy)} (run `starvit subscriptions sync`)", err=True
        )
        raise typer.Exit(code=1)
