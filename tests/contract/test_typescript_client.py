"""The TypeScript client types are generated from the OpenAPI snapshot (never hand-written),
match the committed file and compile."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "node_modules" / ".bin"
CONTRACT = ROOT / "contract"


@pytest.fixture(autouse=True)
def node_tools() -> None:
    # Installed by `make setup` (npm ci); a missing tool is a failure, never a skip.
    assert (BIN / "openapi-typescript").exists(), "run `make setup` (npm ci)"
    assert (BIN / "tsc").exists(), "run `make setup` (npm ci)"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generated_types_match_the_committed_file(tmp_path: Path) -> None:
    generated = tmp_path / "starvit-api.d.ts"
    result = run(BIN / "openapi-typescript", CONTRACT / "openapi.json", "-o", generated)
    assert result.returncode == 0, result.stderr
    committed = (CONTRACT / "starvit-api.d.ts").read_text(encoding="utf-8")
    assert generated.read_text(encoding="utf-8") == committed, (
        "contract/starvit-api.d.ts is stale: run `make openapi`"
    )


def test_typed_client_usage_compiles() -> None:
    result = run(BIN / "tsc", "-p", CONTRACT / "tsconfig.json", "--noEmit")
    assert result.returncode == 0, result.stdout + result.stderr
