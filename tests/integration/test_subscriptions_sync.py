"""`starvit subscriptions sync` against the local Medplum stand-in, and real deliveries of the
synced Subscriptions to a local receiver: headers, signature, the own-write exclusion and the
review handler's status-change condition."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner

from app.botkit.identifiers import BOT_DEVICE_SYSTEM, tag
from app.cli.subscriptions import subscriptions_app
from app.events.signature import signature_matches, subscription_secret
from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.settings import Settings, load_settings
from app.subscriptions.service import (
    SUBSCRIPTION_TAG_SYSTEM,
    SUBSCRIPTIONS_DIR,
    subscription_health,
    sync_subscriptions,
)
from app.wiring import medplum_client
from bots import ALL_BOTS
from bots.bmi import BOT as BMI
from devtools.devserver import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    DEVSERVER_DIR,
    NODE,
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    SERVICE_CLIENT_ID,
    SERVICE_CLIENT_SECRET,
    DevServer,
)
from devtools.resources import vital_sign

pytestmark = pytest.mark.integration

SECRET = "integration-signing-secret"
WEIGHT = "29463-7"
HANDLERS = [*(bot.declaration.name for bot in ALL_BOTS), "review"]
WEIGHT_HANDLERS = {"bmi", "obesity"}


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """A stdlib HTTP server standing in for the rest-hook receiver; answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._changed:
                    receiver.deliveries.append(Delivery(headers, body))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/medplum/notifications"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def clear(self) -> None:
        with self._changed:
            self.deliveries.clear()

    def snapshot(self) -> list[Delivery]:
        with self._changed:
            return list(self.deliveries)

    def _wait(self, predicate: Callable[[list[Delivery]], bool]) -> list[Delivery]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.deliveries), timeout=5.0):
                raise AssertionError(f"expected deliveries did not arrive: {self.deliveries}")
            return list(self.deliveries)

    async def wait_for(self, predicate: Callable[[list[Delivery]], bool]) -> list[Delivery]:
        """Block (in a thread) until ``predicate`` holds for the deliveries, at most 5 s."""
        return await asyncio.to_thread(self._wait, predicate)


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    with DevServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def settings(devserver: DevServer, receiver: Receiver) -> Settings:
    receiver.clear()
    return load_settings(
        environment="test",
        medplum_base_url=devserver.base_url,
        medplum_client_id=SERVICE_CLIENT_ID,
        medplum_client_secret=SERVICE_CLIENT_SECRET,
        webhook_secrets=f"{SECRET},older-secret",
        receiver_url=receiver.url,
        subscription_max_attempts=2,
    )


def client_for(devserver: DevServer, client_id: str, secret: str) -> MedplumClient:
    return MedplumClient(
        MedplumClientConfig(base_url=devserver.base_url, client_id=client_id, client_secret=secret)
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[MedplumClient]:
    async with medplum_client(settings) as client:
        yield client


@pytest.fixture
async def admin(devserver: DevServer) -> AsyncIterator[MedplumClient]:
    async with client_for(devserver, ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET) as client:
        yield client


@pytest.fixture
async def partner(devserver: DevServer) -> AsyncIterator[MedplumClient]:
    async with client_for(devserver, PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET) as client:
        yield client


async def our_subscriptions(client: MedplumClient) -> list[dict[str, Any]]:
    result = await client.search("Subscription", {"_tag:missing": "false", "_count": "1000"})
    return [
        cast("dict[str, Any]", r)
        for r in result.resources
        if any(
            t.get("system") == SUBSCRIPTION_TAG_SYSTEM
            for t in cast("dict[str, Any]", r.get("meta") or {}).get("tag", [])
        )
    ]


async def synced(service: MedplumClient, settings: Settings) -> dict[str, str]:
    """Sync and return handler -> Subscription id."""
    return {r.handler: r.subscription_id for r in await sync_subscriptions(service, settings)}


def weight_observation(patient_id: str, kg: float) -> dict[str, Any]:
    return vital_sign(f"Patient/{patient_id}", WEIGHT, kg, "kg", "2026-03-01T09:00:00Z")


async def new_patient(partner: MedplumClient) -> str:
    created = await partner.create(
        {"resourceType": "Patient", "name": [{"family": "Synthetic", "given": ["Test"]}]}
    )
    assert created.id is not None
    return created.id


def about(deliveries: list[Delivery], reference: str, interaction: str) -> list[Delivery]:
    out: list[Delivery] = []
    for delivery in deliveries:
        if delivery.headers.get("x-medplum-interaction") != interaction:
            continue
        if interaction == "delete":
            if delivery.headers.get("x-medplum-deleted-resource") == reference:
                out.append(delivery)
            continue
        body = json.loads(delivery.body)
        if f"{body.get('resourceType')}/{body.get('id')}" == reference:
            out.append(delivery)
    return out


# ------------------------------------------------------------------------- sync


async def test_sync_creates_everything_then_changes_nothing(
    service: MedplumClient, admin: MedplumClient, settings: Settings
) -> None:
    for subscription in await our_subscriptions(admin):
        await admin.delete("Subscription", subscription["id"])

    first = await sync_subscriptions(service, settings)
    assert [(r.handler, r.action) for r in first] == [(name, "created") for name in HANDLERS]

    stored = {s["meta"]["tag"][0]["code"]: s for s in await our_subscriptions(admin)}
    assert sorted(stored) == sorted(HANDLERS)
    committed = json.loads((SUBSCRIPTIONS_DIR / "bmi.json").read_text(encoding="utf-8"))
    bmi = stored["bmi"]
    assert bmi["criteria"] == committed["criteria"]
    assert bmi["channel"]["endpoint"] == settings.receiver_url
    assert {
        "url": "https://www.medplum.com/fhir/StructureDefinition/subscription-secret",
        "valueString": subscription_secret(SECRET, "bmi"),
    } in bmi["extension"]

    devices = await admin.search(
        "Device", {"identifier": f"{BOT_DEVICE_SYSTEM}|bmi@{BMI.declaration.version}"}
    )
    assert len(devices.resources) == 1

    second = await sync_subscriptions(service, settings)
    assert [(r.handler, r.action) for r in second] == [(name, "unchanged") for name in HANDLERS]
    assert [r.subscription_id for r in second] == [r.subscription_id for r in first]
    after = {
        s["meta"]["tag"][0]["code"]: s["meta"]["versionId"] for s in await our_subscriptions(admin)
    }
    assert after == {name: s["meta"]["versionId"] for name, s in stored.items()}
    devices = await admin.search(
        "Device", {"identifier": f"{BOT_DEVICE_SYSTEM}|bmi@{BMI.declaration.version}"}
    )
    assert len(devices.resources) == 1


async def test_disabled_subscription_is_reported_and_reenabled(
    service: MedplumClient, admin: MedplumClient, settings: Settings
) -> None:
    ids = await synced(service, settings)
    error_text = "Automatically disabled after 3 consecutive failed events in the last 600 seconds"
    await admin.patch(
        "Subscription",
        ids["egfr"],
        [
            {"op": "replace", "path": "/status", "value": "off"},
            {"op": "add", "path": "/error", "value": error_text},
        ],
    )

    health = {h.handler: h for h in await subscription_health(service)}
    assert health["egfr"].status == "off"
    assert health["egfr"].error_text_present
    assert health["egfr"].subscription_id == ids["egfr"]
    assert error_text not in repr(health)
    assert all(h.status == "active" for name, h in health.items() if name != "egfr")

    results = {r.handler: r.action for r in await sync_subscriptions(service, settings)}
    assert results["egfr"] == "reenabled"
    assert {action for name, action in results.items() if name != "egfr"} == {"unchanged"}
    egfr = (await admin.read("Subscription", ids["egfr"])).resource
    assert egfr["status"] == "active"
    assert "error" not in egfr
    assert all(h.healthy for h in await subscription_health(service))


def test_cli_sync_and_status(
    devserver: DevServer,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "STARVIT_ENVIRONMENT": "test",
        "STARVIT_MEDPLUM_BASE_URL": devserver.base_url,
        "STARVIT_MEDPLUM_CLIENT_ID": SERVICE_CLIENT_ID,
        "STARVIT_MEDPLUM_CLIENT_SECRET": SERVICE_CLIENT_SECRET,
        "STARVIT_WEBHOOK_SECRETS": SECRET,
        "STARVIT_RECEIVER_URL": receiver.url,
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    first = runner.invoke(subscriptions_app, ["sync"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(subscriptions_app, ["sync"])
    assert again.exit_code == 0, again.output
    lines = again.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[name, "unchanged"] for name in HANDLERS]
    assert SECRET not in first.output + again.output

    status = runner.invoke(subscriptions_app, ["status"])
    assert status.exit_code == 0, status.output
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        (name, "active", "no") for name in HANDLERS
    ]


# ------------------------------------------------------------------------- deliveries


async def test_partner_weight_is_delivered_signed_to_the_weight_bots(
    service: MedplumClient,
    partner: MedplumClient,
    admin: MedplumClient,
    settings: Settings,
    receiver: Receiver,
) -> None:
    ids = await synced(service, settings)
    patient_id = await new_patient(partner)
    created = await partner.create(weight_observation(patient_id, 82.5))
    reference = f"Observation/{created.id}"

    deliveries = await receiver.wait_for(
        lambda d: len(about(d, reference, "create")) >= len(WEIGHT_HANDLERS)
    )
    mine = about(deliveries, reference, "create")
    assert {d.headers["x-starvit-bot"] for d in mine} == WEIGHT_HANDLERS
    for delivery in mine:
        bot = delivery.headers["x-starvit-bot"]
        assert delivery.headers["x-medplum-subscription"] == ids[bot]
        assert delivery.headers["content-type"].startswith("application/fhir+json")
        key = subscription_secret(SECRET, bot).encode()
        assert signature_matches(delivery.body, delivery.headers["x-signature"], [key])
        assert not signature_matches(delivery.body, delivery.headers["x-signature"], [b"other"])
        body = json.loads(delivery.body)
        assert body["meta"]["author"]["reference"] == f"ClientApplication/{PARTNER_CLIENT_ID}"
        assert body["meta"]["versionId"] == created.version_id

    # A delete is notified too (the exclusion is true for a resource the service did not
    # write), with the body "{}" signed as such.
    receiver.clear()
    assert created.id is not None
    await admin.delete("Observation", created.id)
    deliveries = await receiver.wait_for(
        lambda d: len(about(d, reference, "delete")) >= len(WEIGHT_HANDLERS)
    )
    deleted = about(deliveries, reference, "delete")
    assert {d.headers["x-starvit-bot"] for d in deleted} == WEIGHT_HANDLERS
    for delivery in deleted:
        assert delivery.body == b"{}"
        key = subscription_secret(SECRET, delivery.headers["x-starvit-bot"]).encode()
        assert signature_matches(b"{}", delivery.headers["x-signature"], [key])


async def test_the_service_own_writes_are_not_notified(
    service: MedplumClient, partner: MedplumClient, settings: Settings, receiver: Receiver
) -> None:
    await synced(service, settings)
    patient_id = await new_patient(partner)
    own = await service.create(weight_observation(patient_id, 70.0))
    # A later write by someone else proves deliveries flow; the service's one must be absent.
    other = await partner.create(weight_observation(patient_id, 71.0))
    await receiver.wait_for(
        lambda d: len(about(d, f"Observation/{other.id}", "create")) >= len(WEIGHT_HANDLERS)
    )
    await asyncio.sleep(0.2)  # deliveries are unordered: give a wrong one time to show up
    assert about(receiver.snapshot(), f"Observation/{own.id}", "create") == []


async def test_review_fires_only_on_someone_elses_status_change(
    service: MedplumClient,
    admin: MedplumClient,
    partner: MedplumClient,
    settings: Settings,
    receiver: Receiver,
) -> None:
    ids = await synced(service, settings)
    patient_id = await new_patient(partner)
    task = await service.create(
        {
            "resourceType": "Task",
            "meta": {"tag": [tag()]},
            "status": "requested",
            "intent": "proposal",
            "code": {"text": "Review proposed BMI"},
            "for": {"reference": f"Patient/{patient_id}"},
        }
    )
    assert task.id is not None
    reference = f"Task/{task.id}"

    # The service's own status change (superseding its Task) is excluded.
    cancelled = dict(task.resource, status="cancelled")
    own = await service.update(cancelled, if_match_version=task.version_id)
    # A change by someone else that keeps the status does not fire either ...
    noted = dict(own.resource, description="looked at it")
    noted_result = await admin.update(noted, if_match_version=own.version_id)
    # ... while a status change by someone else does.
    reopened = dict(noted_result.resource, status="requested")
    decided = await admin.update(reopened, if_match_version=noted_result.version_id)

    await receiver.wait_for(lambda d: len(about(d, reference, "update")) >= 1)
    await asyncio.sleep(0.2)  # deliveries are unordered: give a wrong one time to show up
    updates = about(receiver.snapshot(), reference, "update")
    assert len(updates) == 1
    (delivery,) = updates
    assert delivery.headers["x-starvit-bot"] == "review"
    assert delivery.headers["x-medplum-subscription"] == ids["review"]
    key = subscription_secret(SECRET, "review").encode()
    assert signature_matches(delivery.body, delivery.headers["x-signature"], [key])
    assert json.loads(delivery.body)["meta"]["versionId"] == decided.version_id
    # The create of the Task itself is never delivered (update only).
    assert about(receiver.snapshot(), reference, "create") == []


# ------------------------------------------------------------------------- the FHIRPath itself


_EVALUATE = """
import { resourceMatchesSubscriptionCriteria } from '@medplum/core';
let input = '';
for await (const chunk of process.stdin) input += chunk;
const { subscription, cases } = JSON.parse(input);
const out = [];
for (const c of cases) {
  out.push(await resourceMatchesSubscriptionCriteria({
    resource: c.current,
    subscription,
    context: { interaction: c.interaction },
    getPreviousResource: async () => c.previous,
  }));
}
console.log(JSON.stringify(out));
"""


def evaluate(subscription: dict[str, Any], cases: list[dict[str, Any]]) -> list[bool]:
    """Medplum's own matcher (@medplum/core, as the server and the stand-in call it)."""
    plain = {**subscription, "criteria": subscription["criteria"].split("?", 1)[0]}
    answer = subprocess.run(
        [str(NODE), "--input-type=module", "-e", _EVALUATE],
        cwd=DEVSERVER_DIR,
        input=json.dumps({"subscription": plain, "cases": cases}),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return cast("list[bool]", json.loads(answer.stdout))


def authored(author: str | None, **fields: Any) -> dict[str, Any]:
    meta = {"author": {"reference": author}} if author else {}
    return {"id": "x1", "meta": {"versionId": "1", **meta}, **fields}


def test_exclusion_expression_as_medplum_evaluates_it(devserver: DevServer) -> None:
    del devserver  # only needs the installed Node packages
    bmi = json.loads((SUBSCRIPTIONS_DIR / "bmi.json").read_text(encoding="utf-8"))
    service = "ClientApplication/starvit-service"
    obs = {"resourceType": "Observation"}
    assert evaluate(
        bmi,
        [
            {"current": {**obs, **authored(service)}, "interaction": "create"},
            {
                "current": {**obs, **authored("ClientApplication/partner-acme")},
                "interaction": "create",
            },
            {
                "current": {**obs, **authored("Practitioner/p1")},
                "interaction": "update",
                "previous": {**obs, **authored(service)},
            },
            {"current": {**obs, **authored(None)}, "interaction": "create"},
            # Deletes: Medplum evaluates the last stored version; {} or no meta also passes.
            {"current": {**obs, **authored("Practitioner/p1")}, "interaction": "delete"},
            {"current": obs, "interaction": "delete"},
            {"current": {**obs, **authored(service)}, "interaction": "delete"},
        ],
    ) == [False, True, True, True, True, True, False]

    review = json.loads((SUBSCRIPTIONS_DIR / "review.json").read_text(encoding="utf-8"))
    task = {"resourceType": "Task", "intent": "proposal"}
    clinician = "Practitioner/clinician-alice"
    assert evaluate(
        review,
        [
            {
                "current": {**task, **authored(clinician, status="completed")},
                "interaction": "update",
                "previous": {**task, **authored(service, status="requested")},
            },
            {
                "current": {**task, **authored(service, status="cancelled")},
                "interaction": "update",
                "previous": {**task, **authored(service, status="requested")},
            },
            {
                "current": {**task, **authored(clinician, status="requested")},
                "interaction": "update",
                "previous": {**task, **authored(service, status="requested")},
            },
            {
                "current": {**task, **authored(clinician, status="requested")},
                "interaction": "create",
            },
            {
                "current": {**task, **authored(clinician, status="requested")},
                "interaction": "delete",
                "previous": {**task, **authored(clinician, status="requested")},
            },
        ],
    ) == [True, False, False, False, False]
