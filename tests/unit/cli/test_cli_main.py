"""The ``starvit`` command line: every production command is there and answers ``--help``,
exit status 2 on bad usage and on invalid configuration, with a message instead of a trace; the
development tools (``python -m devtools``) are a separate command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from app import __version__
from app.cli import main as cli_main

runner = CliRunner()

# What an operator runs in production. A command missing here (a module that no longer imports,
# a registration dropped in a refactoring) is an outage of that operation, so the list is
# written out rather than discovered from the CLI itself.
PRODUCTION_COMMANDS: tuple[str, ...] = (
    "calc",
    "db",
    "jobs",
    "research",
    "serve",
    "subscriptions",
    "sweep",
    "version",
    "worker",
)
# Development tools: they read recorded data or start a whole demo stack, and never ship.
DEV_TOOLS: tuple[str, ...] = ("backtest", "demo", "replay")


def _register_once() -> None:
    # ``register_subcommands`` appends to the one module-level Typer, so a second call would
    # register every subcommand twice. Any ImportError propagates: the suite must not go green
    # with a production command that cannot be loaded.
    if any(group.name == "calc" for group in cli_main.cli.registered_groups):
        return
    cli_main.register_subcommands()


def top_level_names(app: typer.Typer) -> set[str]:
    command: object = typer.main.get_command(app)
    subcommands: dict[str, object] = getattr(command, "commands", {})
    return set(subcommands)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STARVIT_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def command_paths() -> Iterator[tuple[str, ...]]:
    _register_once()

    # Typer builds on its own vendored click: read groups by their ``commands`` mapping.
    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        yield path
        subcommands: dict[str, object] = getattr(command, "commands", {})
        for name, sub in sorted(subcommands.items()):
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(cli_main.cli), ())


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli_main.cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("path", list(command_paths()), ids=lambda path: " ".join(path) or "top")
def test_help_on_every_command(path: tuple[str, ...]) -> None:
    code, out, _ = invoke(*path, "--help")
    assert code == 0
    assert "Usage:" in out


def help_command_names(help_text: str) -> set[str]:
    """The command names listed under ``Commands:`` in a ``--help`` text."""
    lines = help_text.splitlines()
    start = lines.index("Commands:") + 1
    names: set[str] = set()
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        if not line.startswith("   "):  # deeper indentation continues a description
            names.add(line.split()[0])
    return names


def test_every_production_command_is_registered() -> None:
    _register_once()
    names = top_level_names(cli_main.cli)
    assert set(PRODUCTION_COMMANDS) <= names, sorted(set(PRODUCTION_COMMANDS) - names)


@pytest.mark.parametrize("command", PRODUCTION_COMMANDS)
def test_help_of_each_production_command(command: str) -> None:
    _register_once()
    code, out, err = invoke(command, "--help")
    assert (code, err) == (0, ""), err
    assert f"Usage: starvit {command}" in out


def test_top_level_help_lists_the_commands() -> None:
    _register_once()
    code, out, _ = invoke("--help")
    assert code == 0
    assert set(PRODUCTION_COMMANDS) <= help_command_names(out)


def test_production_cli_has_no_development_tools() -> None:
    _register_once()
    assert top_level_names(cli_main.cli).isdisjoint(DEV_TOOLS)
    for tool in DEV_TOOLS:
        code, _, err = invoke(tool, "--help")
        assert code == 2
        assert "No such command" in err


def test_installed_entry_point_lists_exactly_the_production_commands() -> None:
    # The console script ``starvit`` is ``app.cli.main:run``, in a fresh interpreter: no other
    # test's registrations (the development CLI extends the same Typer) can leak into it.
    completed = subprocess.run(
        [sys.executable, "-c", "from app.cli.main import run; run()", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert completed.returncode == 0, completed.stderr
    assert help_command_names(completed.stdout) == set(PRODUCTION_COMMANDS)


@pytest.fixture
def development_cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """``devtools.cli.build()``, kept from leaking into the production Typer of this process:
    ``build`` adds its commands to ``app.cli.main.cli`` itself, so the registrations it makes
    go to copies that are thrown away after the test."""
    from devtools.cli import build  # noqa: PLC0415 - after the copies are in place

    _register_once()
    monkeypatch.setattr(cli_main.cli, "registered_commands", list(cli_main.cli.registered_commands))
    monkeypatch.setattr(cli_main.cli, "registered_groups", list(cli_main.cli.registered_groups))
    return build()


def test_development_cli_has_the_tools_and_every_production_command(
    development_cli: typer.Typer,
) -> None:
    names = top_level_names(development_cli)
    assert set(DEV_TOOLS) <= names
    assert set(PRODUCTION_COMMANDS) <= names
    for command in (*DEV_TOOLS, *PRODUCTION_COMMANDS):
        result = runner.invoke(development_cli, [command, "--help"])
        assert result.exit_code == 0, (command, result.stderr)
        assert "Usage:" in result.stdout


def test_version() -> None:
    assert invoke("version")[:2] == (0, f"{__version__}\n")


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--port", "0"),
        ("serve", "--port", "70000"),
        ("serve", "--workers", "0"),
        ("serve", "--no-such-option"),
        ("no-such-command",),
    ],
    ids=" ".join,
)
def test_bad_usage_exits_2_with_a_message(args: tuple[str, ...]) -> None:
    code, _, err = invoke(*args)
    assert code == 2
    assert "Error" in err
    assert "Traceback" not in err


def test_unknown_command_is_named(clean_environment: None) -> None:
    code, _, err = invoke("no-such-command")
    assert code == 2
    assert "No such command" in err


@pytest.mark.usefixtures("clean_environment")
def test_serve_without_webhook_secrets_exits_2_naming_the_variable() -> None:
    code, _, err = invoke("serve")
    assert code == 2
    assert "STARVIT_WEBHOOK_SECRETS" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("clean_environment")
def test_serve_with_invalid_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STARVIT_WEBHOOK_SECRETS", "s1")
    monkeypatch.setenv("STARVIT_LOG_LEVEL", "LOUD")
    code, _, err = invoke("serve")
    assert code == 2
    assert "STARVIT_LOG_LEVEL" in err
    assert "Traceback" not in err
