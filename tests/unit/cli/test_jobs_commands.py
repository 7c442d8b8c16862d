"""``starvit jobs retry`` and ``starvit jobs workers``: what they refuse before they touch the
database (the commands against a real one are in tests/integration/test_faults_*)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import main as cli_main

runner = CliRunner()


@pytest.fixture(autouse=True)
def registered() -> None:
    if not any(group.name == "jobs" for group in cli_main.cli.registered_groups):
        cli_main.register_subcommands()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli_main.cli, list(args))
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give event ids or --status failed"),
        (("7", "--status", "failed"), "give event ids or --status failed"),
        (("--status", "queued"), "--status must be failed"),
        (("7", "--since", "2026-01-01"), "--since goes with --status failed"),
    ],
)
def test_retry_refuses_an_ambiguous_selection(args: tuple[str, ...], message: str) -> None:
    code, err = invoke("jobs", "retry", *args)
    assert code == 2
    assert message in err


def test_retry_refuses_a_since_that_is_not_a_time() -> None:
    code, _ = invoke("jobs", "retry", "--status", "failed", "--since", "yesterday")
    assert code == 2


def test_workers_wants_a_positive_wait() -> None:
    code, _ = invoke("jobs", "workers", "--max-wait", "0")
    assert code == 2
