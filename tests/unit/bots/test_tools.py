"""Registry, backtest replay logic, and the ``replay`` / ``backtest`` commands."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from app.botkit.declaration import NoResult, OpenReviewTask, ProposeObservation
from app.botkit.handler import BotHandler
from app.wiring import handler_registry
from bots import ALL_BOTS, bot_by_name
from bots.bmi import BOT as BMI
from bots.hba1c import BOT as HBA1C
from devtools.backtest import (
    backtest,
    context_at,
    history_from_bundle,
    outcome_keys,
    parse_query,
    replay_history,
    run_query,
)
from devtools.bot_tools import DEFAULT_DATA, register
from devtools.replay import FixtureError, parse_fixture

from .fhir import bp_panel, height, observation, patient, weight

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "notifications"
SYNTHEA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "synthea"
ONE_PATIENT = SYNTHEA / "e1404dc3-4e21-84ae-cdcf-89d04084020c.json"

app = typer.Typer()
register(app)
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------------------- registry


# A bot's version is recorded in every AuditEvent and Provenance it writes ("bmi@1.0.0").
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def test_registry() -> None:
    # Derived from the bots package and the service's registry, so adding a bot needs no edit
    # here; what is checked is that the two agree and that lookups by name work.
    names = [bot.declaration.name for bot in ALL_BOTS]
    assert len(set(names)) == len(names)
    registry = handler_registry()
    for bot in ALL_BOTS:
        declaration = bot.declaration
        assert SEMVER.match(declaration.version), declaration.name
        assert declaration.citation.url.startswith("https://")
        assert bot_by_name(declaration.name) is bot
        handler = registry.get(declaration.name)
        assert isinstance(handler, BotHandler)
        assert handler.bot is bot
        assert handler.version == declaration.version
    bot_handlers = {h.name for h in registry if isinstance(h, BotHandler)}
    assert bot_handlers == set(names)
    with pytest.raises(KeyError, match=re.escape(f"known bots: {', '.join(names)}")):
        bot_by_name("nope")


def test_every_criteria_is_matchable_in_memory() -> None:
    # medplum-facts §1: token params only (no number/quantity/chained) in Subscription.criteria.
    for bot in ALL_BOTS:
        query = parse_query(bot.declaration.trigger.criteria)
        assert query.resource_type == "Observation"
        assert all(system == "http://loinc.org" for system, _ in query.codes)
        for prefetch in bot.declaration.prefetch:
            assert "{{patient}}" in prefetch.query


# ---------------------------------------------------------------------------- backtest logic


def synthetic_bundle() -> dict[str, Any]:
    subject = "urn:uuid:p1"
    resources: list[dict[str, Any]] = [
        patient(),
        height("h1", 170, "2024-01-10T10:00:00Z", subject=subject),
        weight("w1", 90, "2024-02-01T10:00:00Z", subject=subject),
        weight("w2", 60, "2024-03-01T10:00:00Z", subject=subject),
        weight("w-future", 120, "2025-03-01T10:00:00Z", subject=subject),
        bp_panel("bp1", 120, 80, "2024-03-01T10:00:00Z"),
    ]
    for r in resources:
        r.get("meta", {}).pop("versionId", None)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def test_history_rewrites_subject_and_versions() -> None:
    history = history_from_bundle(synthetic_bundle())
    assert history is not None
    assert history.reference == "Patient/p1"
    w1 = next(r for r in history.resources if r["id"] == "w1")
    assert w1["subject"] == {"reference": "Patient/p1"}
    assert w1["meta"] == {"versionId": "1"}
    assert history_from_bundle({"resourceType": "Bundle", "entry": []}) is None


def test_prefetch_sees_only_the_past_newest_first() -> None:
    history = history_from_bundle(synthetic_bundle())
    assert history is not None
    query = parse_query(BMI.declaration.prefetch[0].query)
    found = run_query(query, history.resources, datetime(2024, 3, 1, 10, tzinfo=UTC))
    assert [r["id"] for r in found] == ["w2", "w1"]
    context = context_at(BMI, history, datetime(2024, 2, 15, tzinfo=UTC))
    assert [r["id"] for r in context.prefetched["weights"]] == ["w1"]
    assert [r["id"] for r in context.prefetched["heights"]] == ["h1"]


def test_unsupported_search_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="value-quantity"):
        parse_query("Observation?value-quantity=gt30")


def test_replay_history_in_order_since() -> None:
    history = history_from_bundle(synthetic_bundle())
    assert history is not None
    replayed = replay_history(BMI, history)
    assert [r.reference for r in replayed] == [
        "Observation/h1",
        "Observation/w1",
        "Observation/w2",
        "Observation/w-future",
    ]
    assert isinstance(replayed[0].effects[0], NoResult)  # a height, no weight yet
    w1 = replayed[1].effects[0]
    assert isinstance(w1, ProposeObservation)
    assert w1.value == 31.1
    # The future weight is not in the prefetch of w1's moment, and its own height is too old.
    assert isinstance(replayed[3].effects[0], NoResult)
    later = replay_history(BMI, history, since=datetime(2024, 2, 15, tzinfo=UTC))
    assert [r.reference for r in later] == ["Observation/w2", "Observation/w-future"]


def test_conditions_as_of_the_moment() -> None:
    bundle = synthetic_bundle()
    a1c = observation("a1", "4548-4", 7.0, "%", "2020-01-01T10:00:00Z", subject="urn:uuid:p1")
    a1c_late = observation("a2", "4548-4", 7.1, "%", "2022-01-01T10:00:00Z", subject="urn:uuid:p1")
    diabetes = {
        "resourceType": "Condition",
        "id": "dm",
        "clinicalStatus": {"coding": [{"code": "resolved"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": "urn:uuid:p1"},
        "onsetDateTime": "2021-01-01T00:00:00Z",
        "abatementDateTime": "2023-01-01T00:00:00Z",
    }
    bundle["entry"] += [{"resource": r} for r in (a1c, a1c_late, diabetes)]
    history = history_from_bundle(bundle)
    assert history is not None
    first, second = replay_history(HBA1C, history)
    assert [type(e).__name__ for e in first.effects] == ["ProposeRequest", "OpenReviewTask"]
    assert second.effects == ()  # diabetes active in 2022


def test_backtest_counts() -> None:
    history = history_from_bundle(synthetic_bundle())
    assert history is not None
    seen: list[str] = []
    report = backtest(BMI, [history], progress=lambda h: seen.append(h.patient_id))
    assert seen == ["p1"]
    assert report.events == 4
    assert report.outcomes["ProposeObservation:bmi"] == 2
    assert report.outcomes["OpenReviewTask:bmi:routine"] == 2
    assert report.outcomes["NoResult:insufficient_evidence"] == 2
    [summary] = report.patients
    assert (summary.events, summary.proposals, summary.tasks, summary.urgent) == (4, 2, 2, 0)


def test_outcome_keys() -> None:
    task = OpenReviewTask("hypertensive-crisis", "t", "r", "urgent", (), BMI.declaration.citation)
    assert outcome_keys([task]) == ["OpenReviewTask:hypertensive-crisis:urgent"]
    assert outcome_keys([]) == ["nothing"]


# ---------------------------------------------------------------------------- replay command


def test_every_fixture_replays() -> None:
    files = sorted(FIXTURES.glob("*.json"))
    assert len(files) >= 5
    for path in files:
        code, out, err = invoke("replay", str(path), "--json")
        assert (code, err) == (0, ""), path
        document = json.loads(out)
        assert document["bot"] == json.loads(path.read_text())["bot"]


def test_replay_readable_bmi() -> None:
    code, out, _ = invoke("replay", str(FIXTURES / "bmi-create.json"))
    assert code == 0
    assert "propose Observation [bmi] LOINC 39156-5: 31.1 kg/m2 (Obesity class I)" in out
    assert "Review BMI 31.1 kg/m2 (obesity class I)" in out


def test_replay_json_crisis() -> None:
    code, out, _ = invoke("replay", str(FIXTURES / "blood-pressure-crisis.json"), "--json")
    assert code == 0
    effects = json.loads(out)["effects"]
    assert effects[0]["type"] == "OpenReviewTask"
    assert effects[0]["priority"] == "urgent"
    assert effects[0]["title"] == "URGENT: BP 182/121 mmHg — hypertensive crisis range"
    assert effects[1]["type"] == "Retract"
    assert effects[2]["components"][0] == {
        "loinc": "8480-6",
        "display": "Systolic blood pressure",
        "value": 162.0,
        "unit": "mm[Hg]",
    }


def test_replay_delete_is_empty() -> None:
    code, out, _ = invoke("replay", str(FIXTURES / "bmi-delete.json"), "--json")
    assert code == 0
    assert json.loads(out)["effects"] == []


def test_replay_errors(tmp_path: Path) -> None:
    code, _, err = invoke("replay", str(tmp_path / "missing.json"))
    assert code == 2
    assert "cannot read" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = invoke("replay", str(bad))
    assert (code, "not valid JSON" in err) == (2, True)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"bot": "nope", "resource": {}}))
    code, _, err = invoke("replay", str(unknown))
    assert code == 2
    assert "known bots: bmi" in err


def test_parse_fixture_errors() -> None:
    with pytest.raises(FixtureError):
        parse_fixture([])
    with pytest.raises(FixtureError, match="interaction"):
        parse_fixture({"bot": "bmi", "interaction": "patch", "resource": {}})
    with pytest.raises(FixtureError, match="resource"):
        parse_fixture({"bot": "bmi", "interaction": "create"})


# ---------------------------------------------------------------------------- backtest command


def test_backtest_command_on_a_synthea_patient() -> None:
    code, out, err = invoke("backtest", "--bot", "bmi", "--data", str(ONE_PATIENT), "--json")
    assert code == 0
    assert "replaying patient e1404dc3" in err  # progress on stderr
    report = json.loads(out)
    assert report["bot"] == "bmi"
    assert report["patients"] == 1
    [row] = report["per_patient"]
    assert row["patient"].startswith("e1404dc3")
    assert row["events"] == 25  # 13 weights + 12 heights
    assert report["outcomes"]["ProposeObservation:bmi"] == row["proposals"] > 0


def test_backtest_command_readable_and_since() -> None:
    code, out, _ = invoke(
        "backtest", "--bot", "blood-pressure", "--data", str(ONE_PATIENT), "--since", "2019-01-01"
    )
    assert code == 0
    version = bot_by_name("blood-pressure").declaration.version
    assert f"Backtest of blood-pressure {version}: 1 patients" in out
    assert "NoResult:insufficient_evidence" in out


def test_backtest_errors(tmp_path: Path) -> None:
    code, _, err = invoke("backtest", "--bot", "nope", "--data", str(ONE_PATIENT))
    assert code == 2
    assert "known bots" in err
    code, _, err = invoke("backtest", "--bot", "bmi", "--data", str(tmp_path / "none"))
    assert code == 2
    assert "does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    code, _, err = invoke("backtest", "--bot", "bmi", "--data", str(tmp_path))
    assert code == 2
    assert "not valid JSON" in err
    code, _, err = invoke("backtest", "--bot", "bmi", "--data", str(ONE_PATIENT), "--since", "x")
    assert code == 2
    assert "--since" in err


def test_default_data_folder_is_the_shared_synthea() -> None:
    assert DEFAULT_DATA.resolve() == SYNTHEA.resolve()
    assert DEFAULT_DATA.is_dir()
