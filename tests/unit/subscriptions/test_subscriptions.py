"""Subscriptions generated from the bots' declarations: shape, extensions, the own-write
exclusion, the committed files (and their drift), and sync/health logic against a fake Medplum."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner

from app.botkit.declaration import Interaction, Trigger
from app.botkit.identifiers import BOT_DEVICE_SYSTEM, TAG_CODE, TAG_SYSTEM
from app.cli.subscriptions import subscriptions_app
from app.events.signature import subscription_secret
from app.integrations.medplum import CreateResult, MedplumClient, ResourceResult, SearchResult
from app.review.handler import ReviewHandler
from app.settings import ConfigurationError
from app.subscriptions.service import (
    FHIRPATH_CRITERIA_URL,
    MAX_ATTEMPTS_URL,
    SECRET_URL,
    SUBSCRIPTION_TAG_SYSTEM,
    SUBSCRIPTIONS_DIR,
    SUPPORTED_INTERACTION_URL,
    build_subscription,
    check_sync_settings,
    default_settings,
    expected_files,
    generate,
    interaction_warning,
    own_write_exclusion,
    stale_files,
    subscription_health,
    sync_subscriptions,
    write_files,
)
from app.wiring import handler_registry
from bots import ALL_BOTS
from tests.conftest import settings_for_tests

SERVICE = "starvit-service"
EXCLUSION = "%current.meta.author.where(reference = 'ClientApplication/starvit-service').empty()"


def extensions(subscription: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [ext for ext in subscription["extension"] if ext["url"] == url]


def fhirpath_of(subscription: dict[str, Any]) -> str:
    (ext,) = extensions(subscription, FHIRPATH_CRITERIA_URL)
    return cast("str", ext["valueString"])


# ------------------------------------------------------------------------- shape


def test_one_subscription_per_bot_plus_review() -> None:
    generated = generate(default_settings())
    assert list(generated) == [h.name for h in handler_registry().subscribed()]


@pytest.mark.parametrize("bot", ALL_BOTS, ids=lambda bot: bot.declaration.name)
def test_bot_subscription_shape(bot: Any) -> None:
    declaration = bot.declaration
    settings = settings_for_tests(
        receiver_url="https://hooks.example.org/v1/medplum/notifications",
        medplum_client_id="0b2c-client.1",
        subscription_max_attempts=7,
    )
    subscription = cast("dict[str, Any]", generate(settings)[declaration.name])

    assert subscription["resourceType"] == "Subscription"
    assert subscription["status"] == "active"
    assert declaration.name in subscription["reason"]
    assert declaration.version in subscription["reason"]
    assert subscription["criteria"] == declaration.trigger.criteria
    assert subscription["channel"] == {
        "type": "rest-hook",
        "endpoint": "https://hooks.example.org/v1/medplum/notifications",
        "payload": "application/fhir+json",
        "header": [f"X-Starvit-Bot: {declaration.name}"],
    }
    assert subscription["meta"] == {
        "tag": [{"system": SUBSCRIPTION_TAG_SYSTEM, "code": declaration.name}]
    }
    # Every bot wants create, update and delete: no supported-interaction extension at all,
    # which every Medplum version reads as all three (5.0 would read only the first of three).
    assert set(declaration.trigger.interactions) == set(Interaction)
    assert extensions(subscription, SUPPORTED_INTERACTION_URL) == []
    assert extensions(subscription, MAX_ATTEMPTS_URL) == [
        {"url": MAX_ATTEMPTS_URL, "valueInteger": 7}
    ]
    assert "ClientApplication/0b2c-client.1" in fhirpath_of(subscription)
    assert not extensions(subscription, SECRET_URL)
    assert not any("extension" in key for key in subscription if key != "extension")


def test_review_subscription_fires_on_status_changes_of_review_tasks_only() -> None:
    review = cast("dict[str, Any]", generate(default_settings())[ReviewHandler().name])
    assert review["criteria"] == f"Task?_tag={TAG_SYSTEM}|{TAG_CODE}"
    assert review["channel"]["header"] == ["X-Starvit-Bot: review"]
    assert extensions(review, SUPPORTED_INTERACTION_URL) == [
        {"url": SUPPORTED_INTERACTION_URL, "valueCode": "update"}
    ]
    assert fhirpath_of(review) == f"(%previous.status != %current.status) and ({EXCLUSION})"


def test_secret_is_added_only_when_given_with_the_www_url() -> None:
    trigger = Trigger("Observation", "Observation?code=http://loinc.org|29463-7")
    common: dict[str, Any] = {
        "reason": "r",
        "receiver_url": "https://x.example/hook",
        "service_client_id": SERVICE,
        "max_attempts": 4,
    }
    without = build_subscription("bmi", trigger, **common)
    with_secret = build_subscription("bmi", trigger, **common, secret="s3cret")
    assert not extensions(without, SECRET_URL)
    assert extensions(cast("dict[str, Any]", with_secret), SECRET_URL) == [
        {
            "url": "https://www.medplum.com/fhir/StructureDefinition/subscription-secret",
            "valueString": "s3cret",
        }
    ]
    # Everything else is identical: the committed file is the synced resource minus the secret.
    stripped = copy.deepcopy(cast("dict[str, Any]", with_secret))
    stripped["extension"] = [e for e in stripped["extension"] if e["url"] != SECRET_URL]
    assert stripped == without


def test_bot_fhirpath_is_combined_with_the_own_write_exclusion() -> None:
    trigger = Trigger(
        "Observation",
        "Observation?code=http://loinc.org|4548-4",
        interactions=(Interaction.CREATE,),
        fhirpath="%current.status = 'final'",
    )
    subscription = build_subscription(
        "hba1c",
        trigger,
        reason="r",
        receiver_url="https://x.example/hook",
        service_client_id=SERVICE,
        max_attempts=4,
    )
    assert fhirpath_of(cast("dict[str, Any]", subscription)) == (
        f"(%current.status = 'final') and ({EXCLUSION})"
    )


def test_exclusion_without_bot_fhirpath() -> None:
    assert own_write_exclusion(SERVICE) == EXCLUSION


@pytest.mark.parametrize(
    ("handler", "trigger", "client_id", "attempts", "secret"),
    [
        ("bmi", Trigger("Observation", "Observation?code=x", interactions=()), SERVICE, 4, None),
        ("BMI: x", Trigger("Observation", "Observation?code=x"), SERVICE, 4, None),
        ("bmi", Trigger("Observation", "Patient?name=x"), SERVICE, 4, None),
        ("bmi", Trigger("Observation", "Observation?code=x"), "x') or true or ('", 4, None),
        ("bmi", Trigger("Observation", "Observation?code=x"), SERVICE, 20, None),
        ("bmi", Trigger("Observation", "Observation?code=x"), SERVICE, 0, None),
        ("bmi", Trigger("Observation", "Observation?code=x"), SERVICE, 4, ""),
    ],
    ids=[
        "no-interactions",
        "header-breaking-name",
        "criteria-type-mismatch",
        "fhirpath-injection",
        "attempts-over-cap",
        "attempts-zero",
        "empty-secret",
    ],
)
def test_invalid_input_is_refused(
    handler: str, trigger: Trigger, client_id: str, attempts: int, secret: str | None
) -> None:
    with pytest.raises(ValueError):
        build_subscription(
            handler,
            trigger,
            reason="r",
            receiver_url="https://x.example/hook",
            service_client_id=client_id,
            max_attempts=attempts,
            secret=secret,
        )


def test_max_attempts_setting_bounds() -> None:
    assert default_settings().subscription_max_attempts == 12
    for value in (0, 20):
        with pytest.raises(ConfigurationError, match="SUBSCRIPTION_MAX_ATTEMPTS"):
            settings_for_tests(subscription_max_attempts=value)


# ------------------------------------------------------------------------- committed files


def test_committed_subscriptions_are_up_to_date() -> None:
    stale = stale_files(SUBSCRIPTIONS_DIR)
    assert not stale, (
        f"subscriptions/ is out of date ({', '.join(stale)}): run `make subscriptions` "
        "and commit the result"
    )


def test_committed_files_hold_no_secret_and_no_machine_values() -> None:
    for path in sorted(SUBSCRIPTIONS_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        assert "subscription-secret" not in text, path.name
        subscription = json.loads(text)
        assert subscription["channel"]["endpoint"] == default_settings().receiver_url
        assert text.endswith("}\n")
        assert text == json.dumps(subscription, indent=2, sort_keys=True) + "\n"


def test_committed_files_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = expected_files()
    monkeypatch.setenv("STARVIT_RECEIVER_URL", "https://elsewhere.example/hook")
    monkeypatch.setenv("STARVIT_MEDPLUM_CLIENT_ID", "another-client")
    monkeypatch.setenv("STARVIT_SUBSCRIPTION_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("STARVIT_WEBHOOK_SECRETS", "must-not-leak")
    assert expected_files() == before
    assert "must-not-leak" not in "".join(before.values())


def test_stale_files_and_write_files(tmp_path: Path) -> None:
    assert stale_files(tmp_path) == sorted(expected_files())
    assert write_files(tmp_path) == sorted(expected_files())
    assert stale_files(tmp_path) == []
    (tmp_path / "bmi.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "retired-bot.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("kept\n", encoding="utf-8")
    assert stale_files(tmp_path) == ["bmi.json", "retired-bot.json"]
    assert write_files(tmp_path) == ["bmi.json", "retired-bot.json"]
    assert stale_files(tmp_path) == []
    assert not (tmp_path / "retired-bot.json").exists()
    assert (tmp_path / "README.md").exists()


def test_cli_generate_check(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(subscriptions_app, ["generate", "--check", "--directory", str(tmp_path)])
    assert result.exit_code == 1
    assert "make subscriptions" in result.stderr
    assert "bmi.json" in result.stderr

    result = runner.invoke(subscriptions_app, ["generate", "--directory", str(tmp_path)])
    assert result.exit_code == 0
    assert "wrote" in result.stdout

    result = runner.invoke(subscriptions_app, ["generate", "--check", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.stderr


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STARVIT_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
def test_cli_sync_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(subscriptions_app, ["sync"])
    assert result.exit_code == 2
    assert "STARVIT_WEBHOOK_SECRETS" in result.stderr
    assert "Traceback" not in result.output

    monkeypatch.setenv("STARVIT_WEBHOOK_SECRETS", "s1")
    result = runner.invoke(subscriptions_app, ["sync"])
    assert result.exit_code == 2
    assert "STARVIT_MEDPLUM_CLIENT_SECRET" in result.stderr

    monkeypatch.setenv("STARVIT_MEDPLUM_CLIENT_SECRET", "x")
    monkeypatch.setenv("STARVIT_ENVIRONMENT", "production")
    result = runner.invoke(subscriptions_app, ["sync"])
    assert result.exit_code == 2
    assert "STARVIT_RECEIVER_URL" in result.stderr


@pytest.mark.usefixtures("clean_environment")
def test_cli_status_needs_the_client_secret() -> None:
    result = CliRunner().invoke(subscriptions_app, ["status"])
    assert result.exit_code == 2
    assert "STARVIT_MEDPLUM_CLIENT_SECRET" in result.stderr


# ------------------------------------------------------------------------- sync against a fake


class FakeMedplum:
    """Just enough of MedplumClient: Subscriptions and Devices in memory."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str | None]] = []
        self._next = 0

    def _stamp(self, resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
        self._next += 1
        stored = copy.deepcopy(resource)
        stored["id"] = resource_id
        stored["meta"] = {
            **stored.get("meta", {}),
            "versionId": f"v{self._next}",
            "author": {"reference": "ClientApplication/starvit-service"},
            "project": "p",
        }
        self.store[(stored["resourceType"], resource_id)] = stored
        return stored

    def _matches(self, resource: dict[str, Any], query: str) -> bool:
        key, _, value = query.partition("=")
        values = value.split(",")
        if key == "_tag":
            tags = resource.get("meta", {}).get("tag", [])
            return any(f"{t['system']}|{t['code']}" in values for t in tags)
        if key == "identifier":
            return any(f"{i['system']}|{i['value']}" in values for i in resource["identifier"])
        raise AssertionError(query)

    async def search(self, resource_type: str, params: dict[str, str]) -> SearchResult:
        query = f"_tag={params['_tag']}"
        entries = [
            {"resource": copy.deepcopy(r), "search": {"mode": "match"}}
            for (t, _), r in self.store.items()
            if t == resource_type and self._matches(r, query)
        ]
        return SearchResult.from_bundle(
            cast("Any", {"resourceType": "Bundle", "type": "searchset", "entry": entries})
        )

    async def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> Any:
        resource_type = resource["resourceType"]
        if if_none_exist:
            for (t, _), existing in self.store.items():
                if t == resource_type and self._matches(existing, if_none_exist):
                    return CreateResult(copy.deepcopy(existing), 200, None, created=False)
        self.writes.append(("create", resource_type, None))
        stored = self._stamp(resource, f"{resource_type.lower()}-{self._next}")
        return CreateResult(copy.deepcopy(stored), 201, stored["meta"]["versionId"], created=True)

    async def update(self, resource: dict[str, Any], *, if_match_version: str | None) -> Any:
        key = (resource["resourceType"], resource["id"])
        assert self.store[key]["meta"]["versionId"] == if_match_version
        self.writes.append(("update", resource["resourceType"], if_match_version))
        stored = self._stamp(resource, resource["id"])
        return ResourceResult(copy.deepcopy(stored), 200, stored["meta"]["versionId"])

    def subscriptions(self) -> dict[str, dict[str, Any]]:
        return {
            r["meta"]["tag"][0]["code"]: r
            for (t, _), r in self.store.items()
            if t == "Subscription"
        }


def as_client(fake: FakeMedplum) -> MedplumClient:
    return cast("MedplumClient", fake)


async def test_sync_creates_then_changes_nothing() -> None:
    fake = FakeMedplum()
    settings = settings_for_tests(webhook_secrets="first,second")
    results = await sync_subscriptions(as_client(fake), settings)
    assert [(r.handler, r.action) for r in results] == [
        (name, "created") for name in generate(settings)
    ]
    devices = [r for (t, _), r in fake.store.items() if t == "Device"]
    assert sorted(d["identifier"][0]["value"] for d in devices) == sorted(
        f"{b.declaration.name}@{b.declaration.version}" for b in ALL_BOTS
    )
    assert all(d["identifier"][0]["system"] == BOT_DEVICE_SYSTEM for d in devices)
    for name, subscription in fake.subscriptions().items():
        # Each Subscription signs with its own secret, derived from the configured one.
        assert extensions(subscription, SECRET_URL) == [
            {"url": SECRET_URL, "valueString": subscription_secret("first", name)}
        ]

    writes = len(fake.writes)
    again = await sync_subscriptions(as_client(fake), settings)
    assert {r.action for r in again} == {"unchanged"}
    assert [r.subscription_id for r in again] == [r.subscription_id for r in results]
    assert len(fake.writes) == writes


async def test_sync_corrects_drift_and_reenables() -> None:
    fake = FakeMedplum()
    settings = settings_for_tests()
    await sync_subscriptions(as_client(fake), settings)
    subscriptions = fake.subscriptions()
    subscriptions["bmi"]["channel"]["endpoint"] = "https://attacker.example/"
    subscriptions["bmi"]["meta"]["tag"].append({"system": "urn:other", "code": "keep"})
    subscriptions["egfr"]["status"] = "off"
    subscriptions["egfr"]["error"] = "Automatically disabled after 5 consecutive failed events"
    subscriptions["hba1c"]["status"] = "error"
    subscriptions["review"]["contact"] = [{"system": "email", "value": "ops@example.org"}]

    health = {h.handler: h for h in await subscription_health(as_client(fake))}
    assert health["egfr"].status == "off"
    assert health["egfr"].error_text_present
    assert "Automatically" not in repr(health["egfr"])
    assert health["hba1c"].status == "error"
    assert not health["hba1c"].error_text_present
    assert health["bmi"].status == "active"

    results = {r.handler: r.action for r in await sync_subscriptions(as_client(fake), settings)}
    assert results == {
        "bmi": "updated",
        "obesity": "unchanged",
        "blood-pressure": "unchanged",
        "egfr": "reenabled",
        "hba1c": "reenabled",
        # Elements sync does not manage are not drift.
        "review": "unchanged",
    }
    subscriptions = fake.subscriptions()
    assert subscriptions["bmi"]["channel"]["endpoint"] == settings.receiver_url
    assert {"system": "urn:other", "code": "keep"} in subscriptions["bmi"]["meta"]["tag"]
    assert subscriptions["egfr"]["status"] == "active"
    assert "error" not in subscriptions["egfr"]
    assert all(h.healthy for h in await subscription_health(as_client(fake)))


async def test_sync_rotates_to_the_first_secret() -> None:
    fake = FakeMedplum()
    await sync_subscriptions(as_client(fake), settings_for_tests(webhook_secrets="old"))
    results = await sync_subscriptions(
        as_client(fake), settings_for_tests(webhook_secrets="new,old")
    )
    assert {r.action for r in results} == {"updated"}
    for name, subscription in fake.subscriptions().items():
        assert extensions(subscription, SECRET_URL)[0]["valueString"] == subscription_secret(
            "new", name
        )


async def test_health_reports_missing_and_sync_needs_a_secret() -> None:
    fake = FakeMedplum()
    health = await subscription_health(as_client(fake))
    assert {(h.status, h.subscription_id, h.healthy) for h in health} == {("missing", None, False)}
    with pytest.raises(ConfigurationError, match="STARVIT_WEBHOOK_SECRETS"):
        await sync_subscriptions(as_client(fake), settings_for_tests(webhook_secrets=""))
    assert fake.writes == []


def test_a_trigger_of_two_interactions_is_refused() -> None:
    """Medplum 5.0 would deliver only the first of them: refuse rather than half-subscribe."""
    trigger = Trigger(
        "Observation",
        "Observation?code=http://loinc.org|29463-7",
        interactions=(Interaction.CREATE, Interaction.UPDATE),
    )
    with pytest.raises(ValueError, match="first supported-interaction"):
        build_subscription(
            "bmi",
            trigger,
            reason="r",
            receiver_url="https://x.example/hook",
            service_client_id=SERVICE,
            max_attempts=4,
        )


def test_a_server_subscription_listing_several_interactions_is_flagged() -> None:
    listed = {
        "resourceType": "Subscription",
        "extension": [
            {"url": SUPPORTED_INTERACTION_URL, "valueCode": code}
            for code in ("create", "update", "delete")
        ],
    }
    warning = interaction_warning(cast("dict[str, Any]", listed))
    assert warning is not None
    assert "only the first (create)" in warning
    assert interaction_warning({"resourceType": "Subscription", "extension": []}) is None


def test_sync_refuses_an_http_receiver_in_production() -> None:
    """Newer Medplum servers refuse http:// rest-hooks; 5.0 would accept one and send PHI in the
    clear, so the service refuses it itself."""
    settings = settings_for_tests(
        environment="production", receiver_url="http://hooks.example.org/v1/medplum/notifications"
    )
    with pytest.raises(ConfigurationError, match="RECEIVER_URL"):
        check_sync_settings(settings)
    check_sync_settings(
        settings_for_tests(
            environment="production",
            receiver_url="https://hooks.example.org/v1/medplum/notifications",
        )
    )
