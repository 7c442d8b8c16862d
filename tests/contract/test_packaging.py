"""What production gets: the built wheel and the image's build context hold the service and the
bots, never the development tools (demo, stand-in launcher, Synthea loader, scripted clinician,
replay and backtest) nor their development credentials."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POETRY = ROOT / ".tools" / "poetry" / "bin" / "poetry"
# The seeded stand-in's published development secrets (devserver/seed.json).
DEV_SECRETS = re.compile(rb"dev-secret|dev-service-secret|starvit-dev\b")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [str(POETRY), "build", "--format", "wheel", "--output", str(out), "--no-interaction"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_wheel_holds_the_service_and_the_bots(wheel_files: dict[str, bytes]) -> None:
    packages = {name.split("/", 1)[0] for name in wheel_files if "/" in name}
    assert "app" in packages
    assert "bots" in packages
    assert "app/main.py" in wheel_files
    assert any(name.startswith("app/persistence/migrations/versions/") for name in wheel_files)


def test_the_wheel_holds_the_ops_dashboards_pages_and_static_files(
    wheel_files: dict[str, bytes],
) -> None:
    for name in ("dashboard.html", "_panels.html", "confirm.html", "message.html", "gaps.html"):
        assert f"app/ops/templates/{name}" in wheel_files
    assert "app/ops/static/ops.css" in wheel_files
    assert "app/ops/static/ops.js" in wheel_files


def test_the_wheel_holds_no_development_tooling(wheel_files: dict[str, bytes]) -> None:
    assert not [name for name in wheel_files if name.startswith(("devtools/", "tests/"))]
    assert not [name for name in wheel_files if "devserver" in name or "synthea" in name]


def test_no_development_credential_ships(wheel_files: dict[str, bytes]) -> None:
    leaking = [name for name, data in wheel_files.items() if DEV_SECRETS.search(data)]
    assert leaking == []


def test_the_image_context_holds_no_development_tooling() -> None:
    allowed = [
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert "devtools" not in allowed
    assert "devserver" not in allowed
    copied = re.findall(r"^COPY (?!--from)(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert "devtools" not in copied


def test_production_code_never_names_the_development_tools() -> None:
    """Belt and braces beside the import contract: not even a dynamic import by name."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("app", "bots")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"\bdevtools\b", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
