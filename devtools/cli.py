"""The development command line: ``python -m devtools`` is ``starvit`` plus the tools that
never ship (the demo, replay and backtest of recorded data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from app.cli.main import cli, register_subcommands
from app.cli.operations import run_async
from devtools import bot_tools
from devtools.demo import DEMO_PATIENTS


def demo(
    patients: Annotated[
        int,
        typer.Option(
            min=1,
            help="How many Synthea patients to load (the stand-in enforces Medplum's default "
            "FHIR quota, 50,000 points a minute: each patient costs one to two quota minutes, "
            "all 20 about half an hour).",
        ),
    ] = DEMO_PATIENTS,
    keep_running: Annotated[
        bool, typer.Option(help="Leave everything running after the demo (Ctrl-C stops).")
    ] = False,
) -> None:
    """The end-to-end demo: stand-in, embedded PostgreSQL, receiver, worker, Synthea patients,
    pending Tasks, one approval and one rejection, and the Provenance chain."""
    from devtools.demo import run_demo  # noqa: PLC0415

    try:
        raise typer.Exit(
            code=run_async(lambda: run_demo(patients=patients, keep_running=keep_running))
        )
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def _default_checkpoint(base_url: str) -> Path:
    """One checkpoint per server: ``<project>/var/synthea-load-<host>_<port>.jsonl``."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    var = Path(__file__).resolve().parents[1] / "var"
    return var / f"synthea-load-{parts.hostname or 'medplum'}_{port}.jsonl"


def load_synthea(
    *,
    base_url: Annotated[
        str,
        typer.Option(
            envvar="STARVIT_MEDPLUM_BASE_URL", help="Medplum server root (the stand-in's default)."
        ),
    ] = "http://127.0.0.1:8103/",
    client_id: Annotated[
        str, typer.Option(envvar="STARVIT_SYNTHEA_CLIENT_ID", help="The partner's client id.")
    ] = "partner-acme",
    client_secret: Annotated[
        str | None,
        typer.Option(
            envvar="STARVIT_SYNTHEA_CLIENT_SECRET",
            help="The partner's client secret (default: the stand-in's development secret).",
        ),
    ] = None,
    patients: Annotated[
        int | None, typer.Option(min=0, help="Load only the first N patient bundles.")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Load only the patient bundles whose file name starts with this."),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(help="The Synthea bundles (default: $STARVIT_SYNTHEA_DIR or shared data)."),
    ] = None,
    skip_support: Annotated[
        bool, typer.Option(help="Do not post the practitioner and hospital bundles.")
    ] = False,
    max_chunk_points: Annotated[
        int,
        typer.Option(
            min=140,
            help="FHIR quota points one chunk may cost (Medplum's default quota: 50,000 a "
            "minute per membership).",
        ),
    ] = 10_000,
    max_chunk_kb: Annotated[
        int, typer.Option(min=10, max=1000, help="Chunk size limit in KB (Medplum: 1 MB).")
    ] = 900,
    drop_unsatisfied_profiles: Annotated[
        bool,
        typer.Option(
            help="Remove a declared meta.profile from an entry Medplum's validator finds does "
            "not satisfy it (e.g. Synthea's blood pressures and the core bp profile), and "
            "report each; without it such an entry stops the load."
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Progress file: what is committed is skipped on a rerun "
            "(default: var/synthea-load-<host>_<port>.jsonl)."
        ),
    ] = None,
    no_checkpoint: Annotated[
        bool, typer.Option("--no-checkpoint", help="Record no progress, skip nothing.")
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="Start the checkpoint afresh (post everything again).")
    ] = False,
    service_url: Annotated[
        str | None,
        typer.Option(
            help="Post through the service's partner API at this URL (POST /v1/bundles, as "
            "make demo does) instead of straight to Medplum."
        ),
    ] = None,
) -> None:
    """Post the Synthea bundles to Medplum as the integration partner would: chunked within
    Medplum's limits and FHIR quota, paced by its RateLimit header, resumable. Progress goes
    to stderr."""
    from app.integrations.medplum import MedplumClient  # noqa: PLC0415
    from devtools.synthea import SyntheaError, load, partner_config  # noqa: PLC0415

    config = (
        partner_config(base_url, client_id=client_id, client_secret=client_secret)
        if client_secret is not None
        else partner_config(base_url, client_id=client_id)
    )

    async def run() -> int:
        async with MedplumClient(config) as medplum:
            await load(
                medplum,
                patients=patients,
                only=only,
                directory=directory,
                include_support=not skip_support,
                progress=lambda line: typer.echo(line, err=True),
                max_chunk_bytes=max_chunk_kb * 1000,
                max_chunk_points=max_chunk_points,
                drop_unsatisfied_profiles=drop_unsatisfied_profiles,
                checkpoint=(checkpoint or _default_checkpoint(base_url))
                if not no_checkpoint
                else None,
                restart_checkpoint=restart,
                service_url=service_url,
            )
        return 0

    try:
        raise typer.Exit(code=run_async(run))
    except SyntheaError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def build() -> typer.Typer:
    """A command line of its own: ``starvit``'s commands plus the development tools (the
    production ``cli`` object is left as it is)."""
    register_subcommands()
    dev = typer.Typer(
        name="devtools",
        rich_markup_mode=None,
        help="Starvit's commands plus the development tools (demo, load-synthea, replay, "
        "backtest).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    dev.registered_commands.extend(cli.registered_commands)
    dev.registered_groups.extend(cli.registered_groups)
    dev.command()(demo)
    dev.command(name="load-synthea")(load_synthea)
    bot_tools.register(dev)
    return dev


def main() -> None:
    build()(prog_name="python -m devtools")
