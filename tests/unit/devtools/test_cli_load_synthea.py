"""``python -m devtools load-synthea``: the loader's options on the command line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from devtools import cli


def test_the_loader_command_offers_its_options() -> None:
    result = CliRunner().invoke(cli.build(), ["load-synthea", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in (
        "--drop-unsatisfied-profiles",
        "--max-chunk-points",
        "--checkpoint",
        "--no-checkpoint",
        "--restart",
        "--patients",
        "--only",
        "--base-url",
    ):
        assert option in result.output


def test_each_server_gets_its_own_checkpoint_file() -> None:
    var = Path(cli.__file__).resolve().parents[1] / "var"
    assert cli._default_checkpoint("http://127.0.0.1:8103/") == var / (
        "synthea-load-127.0.0.1_8103.jsonl"
    )
    assert cli._default_checkpoint("https://medplum.example.org/") == var / (
        "synthea-load-medplum.example.org_443.jsonl"
    )
