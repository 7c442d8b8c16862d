"""The OpenAPI document is the contract: any change to it must be deliberate (`make openapi`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import openapi

REGENERATE = "the OpenAPI schema changed: run `make openapi` and commit contract/"


def live_schema() -> dict[str, object]:
    return json.loads(openapi.render())


def test_live_schema_matches_the_committed_snapshot() -> None:
    committed = openapi.SNAPSHOT.read_text(encoding="utf-8")
    live = openapi.render()
    assert live == committed, REGENERATE + "\n" + "\n".join(openapi.diff(committed, live)[:40])


def test_rendering_is_deterministic() -> None:
    assert openapi.render() == openapi.render()


def test_check_command_reports_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(openapi, "SNAPSHOT", stale)
    assert openapi.main(["check"]) == 1
    assert openapi.main(["write"]) == 0
    assert openapi.main(["check"]) == 0
    assert openapi.main(["bogus"]) == 2


def _responses(schema: dict[str, object]) -> list[tuple[str, str, str, dict[str, object]]]:
    found: list[tuple[str, str, str, dict[str, object]]] = []
    paths = schema["paths"]
    assert isinstance(paths, dict)
    for path, operations in paths.items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                found.append((str(path), str(method), str(status), response))
    return found


def _references_envelope(response: dict[str, object]) -> bool:
    content = response.get("content")
    if not isinstance(content, dict):
        return False
    schema = content.get("application/json", {}).get("schema", {})
    return schema.get("$ref") == "#/components/schemas/ErrorEnvelope"


def test_every_v1_error_response_is_the_envelope() -> None:
    for path, method, status, response in _responses(live_schema()):
        if path.startswith("/v1/") and not status.startswith("2"):
            assert _references_envelope(response), f"{method.upper()} {path} {status}"


def test_every_operation_declares_the_500_envelope() -> None:
    responses = _responses(live_schema())
    assert responses
    for path, method, status, response in responses:
        if status == "500":
            assert _references_envelope(response), f"{method.upper()} {path}"
    operations = {(path, method) for path, method, _, _ in responses}
    declared = {(path, method) for path, method, status, _ in responses if status == "500"}
    assert declared == operations


def test_health_probes_are_in_the_contract() -> None:
    paths = live_schema()["paths"]
    assert isinstance(paths, dict)
    assert {"/healthz", "/readyz"} <= set(paths)
