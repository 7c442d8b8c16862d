"""The committed OpenAPI snapshot: ``python -m scripts.openapi write|check``.

``write`` regenerates ``contract/openapi.json`` from the application; ``check`` exits 1 with a
short diff when the live schema has drifted from it. ``make openapi`` runs ``write`` and then
regenerates the TypeScript types from the snapshot.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "contract" / "openapi.json"
MAX_DIFF_LINES = 40


def render() -> str:
    """The live schema as sorted, indented JSON (stable across runs and machines)."""
    from app.main import create_app  # noqa: PLC0415 - keep `--help` free of app start-up
    from app.settings import load_settings  # noqa: PLC0415

    app = create_app(load_settings(webhook_secrets="contract-only"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def diff(committed: str, live: str) -> list[str]:
    return list(
        difflib.unified_diff(
            committed.splitlines(),
            live.splitlines(),
            fromfile="contract/openapi.json (committed)",
            tofile="live schema",
            lineterm="",
        )
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("write", "check"):
        sys.stderr.write("usage: python -m scripts.openapi write|check\n")
        return 2
    live = render()
    if argv[0] == "write":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(live, encoding="utf-8")
        sys.stdout.write(f"wrote {SNAPSHOT}\n")
        return 0
    committed = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    if committed == live:
        return 0
    lines = diff(committed, live)
    shown = lines[:MAX_DIFF_LINES]
    if len(lines) > MAX_DIFF_LINES:
        shown.append(f"... {len(lines) - MAX_DIFF_LINES} more diff lines")
    sys.stderr.write("\n".join(shown) + "\nOpenAPI drift: run `make openapi`\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
