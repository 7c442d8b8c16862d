"""``starvit research ...``: the de-identified export and its history."""

from __future__ import annotations

import sys
from typing import Annotated, TextIO

import typer

research_app = typer.Typer(
    help="The de-identified research zone: export from Medplum into the analytics store and "
    "the graph (docs/RESEARCH.md).",
    no_args_is_help=True,
)


class TextProgress:
    """A progress bar per resource type on a terminal; one line per page otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}

    def _draw(self, resource_type: str) -> None:
        total = self._totals[resource_type]
        done = self._done[resource_type]
        width = 30
        filled = width if total == 0 else min(width, done * width // max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"{resource_type:<12} [{bar}] {done}/{total}"
        if self._tty:
            self._stream.write("\r" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def begin(self, resource_type: str, total: int) -> None:
        self._totals[resource_type] = total
        self._done[resource_type] = 0
        self._draw(resource_type)

    def advance(self, resource_type: str, count: int) -> None:
        self._done[resource_type] += count
        self._draw(resource_type)

    def finish(self, resource_type: str) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
        del resource_type


@research_app.command("export")
def export(
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild the target from scratch (e.g. after deletions).")
    ] = False,
    page_size: Annotated[
        int, typer.Option(min=10, max=1000, help="Resources per Medplum search page.")
    ] = 500,
) -> None:
    """Extract what changed in Medplum since the last export, de-identify it, load the view
    tables and rebuild the graph; prints progress and the re-identification risk report."""
    from app.cli.operations import run_async  # noqa: PLC0415
    from app.observability.logging import configure_logging  # noqa: PLC0415
    from app.research.keys import KeyUnavailable  # noqa: PLC0415
    from app.research.repository import ResearchRepository  # noqa: PLC0415
    from app.research.service import (  # noqa: PLC0415
        counts_text,
        deidentifier_for,
        open_zone,
        run_export,
    )
    from app.settings import ConfigurationError, load_settings  # noqa: PLC0415
    from app.wiring import medplum_client, open_database  # noqa: PLC0415

    try:
        settings = load_settings()
        settings.require_medplum_credentials()
        deidentifier = deidentifier_for(settings)
    except (ConfigurationError, KeyUnavailable) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    configure_logging(settings.log_level)

    async def work() -> None:
        database, _queue = await open_database(settings)
        zone = open_zone(settings)
        try:
            async with medplum_client(settings) as medplum:
                summary = await run_export(
                    medplum=medplum,
                    repository=ResearchRepository(database.pool),
                    zone=zone,
                    deidentifier=deidentifier,
                    progress=TextProgress(sys.stderr),
                    full=full,
                    page_size=page_size,
                )
        finally:
            zone.close()
            await database.aclose()
        kind = "full" if summary.full_refresh else "incremental"
        typer.echo(f"Export {summary.export_id} ({kind}) into {summary.target}")
        typer.echo(f"  key version {summary.key_version}, configuration {summary.config_hash[:16]}")
        typer.echo(f"  fetched: {counts_text(summary.fetched)}")
        typer.echo(f"  loaded: {counts_text(summary.loaded)}")
        typer.echo(f"  dropped: {counts_text(summary.dropped)}")
        if summary.risk is not None:
            risk = summary.risk
            typer.echo(
                f"  risk: {risk.patients} patients in {risk.classes} groups; smallest group "
                f"{risk.smallest_class}; {risk.share_in_small_classes:.1%} of patients in groups "
                f"under k={risk.k}"
            )
        typer.echo(f"  files: {summary.export_dir}")

    run_async(work)


@research_app.command("exports")
def exports(
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
) -> None:
    """The history of exports: target, key version, configuration hash, counts, risk."""
    import json  # noqa: PLC0415

    from app.cli.operations import run_async  # noqa: PLC0415
    from app.research.repository import ResearchRepository  # noqa: PLC0415
    from app.settings import ConfigurationError, load_settings  # noqa: PLC0415
    from app.wiring import open_database  # noqa: PLC0415

    try:
        settings = load_settings()
    except ConfigurationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None

    async def work() -> None:
        database, _queue = await open_database(settings)
        try:
            records = await ResearchRepository(database.pool).exports(limit=limit)
        finally:
            await database.aclose()
        for r in records:
            risk = json.dumps(r.risk, sort_keys=True) if r.risk else "-"
            typer.echo(
                f"{r.id}\t{r.status}\t{r.started_at:%Y-%m-%d %H:%M}\t{r.target}\t"
                f"full={r.full_refresh}\tkey={r.key_version}\tconfig={r.config_hash[:16]}\t"
                f"loaded={json.dumps(r.loaded, sort_keys=True)}\trisk={risk}"
            )

    run_async(work)
