"""The ``starvit`` command line: ``--help`` on every command, exit status 2 on bad usage and on
invalid configuration, with a message instead of a trace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from app import __version__
from app.cli import main as cli_main

runner = CliRunner()


def _register_once() -> None:
    if any(group.name == "calc" for group in cli_main.cli.registered_groups):
        return
    try:
        cli_main.register_subcommands()
    except ImportError as error:
        # Subcommand modules land with later issues; test every command that exists now.
        if "operations" not in str(error):
            raise


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


def test_top_level_help_lists_the_commands() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for name in ("serve", "version", "calc"):
        assert name in out


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
