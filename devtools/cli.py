"""The development command line: ``python -m devtools`` is ``starvit`` plus the tools that
never ship (the demo, replay and backtest of recorded data)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.main import cli, register_subcommands
from app.cli.operations import run_async
from devtools import bot_tools


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
    from devtools.demo import run_demo  # noqa: PLC0415

    try:
        raise typer.Exit(
            code=run_async(lambda: run_demo(patients=patients, keep_running=keep_running))
        )
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def build() -> typer.Typer:
    """A command line of its own: ``starvit``'s commands plus the development tools (the
    production ``cli`` object is left as it is)."""
    register_subcommands()
    dev = typer.Typer(
        name="devtools",
        rich_markup_mode=None,
        help="Starvit's commands plus the development tools (demo, replay, backtest).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    dev.registered_commands.extend(cli.registered_commands)
    dev.registered_groups.extend(cli.registered_groups)
    dev.command()(demo)
    bot_tools.register(dev)
    return dev


def main() -> None:
    build()(prog_name="python -m devtools")
