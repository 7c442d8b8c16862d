"""The event pipeline end to end: the Medplum stand-in delivers real rest-hook notifications to
the production receiver (Gunicorn + Uvicorn), a real worker process processes them against the
stand-in, and everything is checked as a clinician and as ops would see it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.signature import subscription_secret
from app.integrations.medplum import MedplumForbidden
from app.review.expiry import escalate_tasks, expire_tasks
from app.settings import load_settings
from app.wiring import medplum_client
from bots.obesity import BOT as OBESITY
from devtools.clinician import approve, login, reject
from devtools.devserver import DevServer
from tests.integration.pipeline_support import (
    Pipeline,
    days_ago,
    eventually,
    observation,
    running_pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_quota_window")]
TAG = f"{TAG_SYSTEM}|{TAG_CODE}"


@pytest.fixture(scope="module")
async def pipeline(module_devserver: DevServer, module_database: str) -> AsyncIterator[Pipeline]:
    """One running service for the module; each test works on its own patients."""
    # Spans go to the console exporter so that the PHI canary test reads them with the logs.
    # No periodic sweep: the sweep tests run `starvit sweep` when they need it, and a sweep in
    # the middle of another test would change what that test observes.
    async with running_pipeline(
        module_devserver,
        module_database,
        STARVIT_OTEL_EXPORTER="console",
        STARVIT_SWEEP_INTERVAL_SECONDS="0",
    ) as running:
        yield running


# A weight of 95 kg at 165 cm (BMI 34.9) is actionable: the obesity protocol's referral Task.
# The BMI itself calls for no action and is listed on the patient's results-review Task.
def live(tasks: list[dict[str, Any]], code_prefix: str = "obesity.") -> list[dict[str, Any]]:
    return [
        t
        for t in tasks
        if t["status"] == "requested" and t["code"]["coding"][0]["code"].startswith(code_prefix)
    ]


async def test_evidence_becomes_one_pending_suggestion_with_provenance(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient, weight=95.0)
    await pipeline.settled()
    tasks = live(await pipeline.tasks_for(patient))
    assert len(tasks) == 1
    task = tasks[0]
    assert task["code"]["text"].startswith(
        "Offer intensive behavioural weight-management counselling (BMI 34.9)"
    )
    assert task["priority"] == "routine"
    assert task["intent"] == "proposal"
    assert task["for"] == {"reference": patient}
    assert task["restriction"]["period"]["end"]
    assert task["performerType"][0]["coding"][0]["code"] == "158965000"
    focus = await pipeline.read(task["focus"]["reference"])
    assert focus["resourceType"] == "ServiceRequest"
    assert focus["status"] == "draft"
    assert f"Observation/{weight['id']}/_history/{weight['meta']['versionId']}" in str(
        focus["reasonReference"]
    )
    provenances = await pipeline.search("Provenance", target=task["focus"]["reference"])
    assert len(provenances) == 1
    assert f"obesity@{OBESITY.declaration.version}" in str(provenances[0]["agent"])
    # The BMI is on the results-review list, its own Provenance, no Task of its own.
    [review] = live(await pipeline.tasks_for(patient), "results-review")
    [item] = [i["valueReference"]["reference"] for i in review["input"]]
    bmi = await pipeline.read(item)
    assert bmi["status"] == "preliminary"
    assert bmi["valueQuantity"]["value"] == pytest.approx(34.9, abs=0.05)
    assert len(await pipeline.search("Provenance", target=item)) == 1
    assert live(await pipeline.tasks_for(patient), "bmi.") == []
    # A success is recorded by its Provenance (and the events table), not by an AuditEvent
    # (STARVIT_MEDPLUM_AUDIT_EVENTS=failures, the default).
    audits = await pipeline.search("AuditEvent", _tag=TAG)
    assert not any(f"Observation/{weight['id']}" in str(a["entity"]) for a in audits)
    # Two Medplum round trips per processed event: one batch read, one transaction.
    processed = [e for e in pipeline.events() if e[6] == "proposed"]
    assert processed


async def test_redelivered_notifications_make_one_set_of_effects(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    before = len(await pipeline.search("Observation", subject=patient, _tag=TAG))
    # Medplum's manual re-send, five times: every copy is a duplicate of the recorded version.
    for _ in range(5):
        await pipeline.admin.operation(
            "Observation", weight["id"], "resend", {"interaction": "update"}
        )
    await pipeline.settled()
    assert len(live(await pipeline.tasks_for(patient))) == 1
    assert len(await pipeline.search("Observation", subject=patient, _tag=TAG)) == before


async def test_newer_evidence_updates_in_place_and_withdraws_what_no_longer_holds(
    pipeline: Pipeline,
) -> None:
    """Finding 9 end to end: the obesity referral built on BMI 34.9 is withdrawn, with the
    reason, when the newest weight puts the BMI at 25.7; the BMI item is updated in place."""
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient, weight=95.0, when=days_ago(40))
    await pipeline.settled()
    [referral] = live(await pipeline.tasks_for(patient))
    # Two new weights at once, written out of order: the later one in time is written first.
    await pipeline.partner.create(observation(patient, "29463-7", 70, "kg", days_ago(10)))
    await pipeline.partner.create(observation(patient, "29463-7", 80, "kg", days_ago(20)))
    await pipeline.settled()
    tasks = await pipeline.tasks_for(patient)
    assert live(tasks) == []
    withdrawn = await pipeline.read(f"Task/{referral['id']}")
    assert withdrawn["status"] == "cancelled"
    assert withdrawn["statusReason"]["coding"][0]["code"] == "no-longer-supported"
    assert "25.7" in withdrawn["statusReason"]["text"]
    assert (await pipeline.read(referral["focus"]["reference"]))["status"] == "revoked"
    [review] = live(tasks, "results-review")
    assert "25.7" in review["description"]  # 70 kg / 1.65 m squared, the newest weight
    bmi = [
        o
        for o in await pipeline.search("Observation", subject=patient, _tag=TAG)
        if o["code"]["coding"][0]["code"] == "39156-5"
    ]
    # One BMI Observation, updated in place: nothing written and then cancelled.
    assert [o["status"] for o in bmi] == ["preliminary"]
    assert len([t for t in tasks if t["status"] == "cancelled"]) == 1


async def test_clinician_approval_finalises_and_rejection_retracts(pipeline: Pipeline) -> None:
    first = await pipeline.new_patient()
    second = await pipeline.new_patient()
    await pipeline.weight_and_height(first)
    await pipeline.weight_and_height(second)
    await pipeline.settled()
    approve_task = live(await pipeline.tasks_for(first))[0]
    reject_task = live(await pipeline.tasks_for(second))[0]
    session = await login(pipeline.devserver.base_url, "clinician-alice")
    try:
        await approve(session, approve_task["id"])
        await reject(session, reject_task["id"], "Height measured with shoes on")
    finally:
        await session.aclose()
    await pipeline.settled()
    approved = await pipeline.read(approve_task["focus"]["reference"])
    rejected = await pipeline.read(reject_task["focus"]["reference"])
    assert approved["status"] == "active"
    assert rejected["status"] == "revoked"
    assert "Height measured with shoes on" in str(rejected["note"])
    verifications = await pipeline.search("Provenance", target=approve_task["focus"]["reference"])
    verifier = [p for p in verifications if "verifier" in str(p["agent"])]
    assert len(verifier) == 1
    assert "Practitioner/clinician-alice" in str(verifier[0]["agent"])
    assert f"obesity@{OBESITY.declaration.version}" in str(verifier[0]["agent"])


async def test_a_status_change_by_a_non_clinician_is_refused(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient)
    await pipeline.settled()
    task = live(await pipeline.tasks_for(patient))[0]
    # An admin client (not a clinician) marks it completed.
    await pipeline.admin.update({**task, "status": "completed"})
    # And an ops Practitioner without a clinical role does the same on another.
    session = await login(pipeline.devserver.base_url, "ops-olivia")
    try:
        other = await pipeline.new_patient()
        await pipeline.weight_and_height(other)
        await pipeline.settled()
        other_task = live(await pipeline.tasks_for(other))[0]
        await approve(session, other_task["id"])
    finally:
        await session.aclose()
    await pipeline.settled()
    for focus in (task["focus"]["reference"], other_task["focus"]["reference"]):
        assert (await pipeline.read(focus))["status"] == "draft"
    for refused_task in (task, other_task):
        # Back in the clinicians' list, not left "completed" by someone who may not decide.
        assert (await pipeline.read(f"Task/{refused_task['id']}"))["status"] == "requested"
    decisions = {e[3]: e[6] for e in pipeline.events() if e[1] == "review"}
    assert decisions[task["id"]] == "refused"
    assert decisions[other_task["id"]] == "refused"


async def test_entered_in_error_evidence_withdraws_the_suggestion(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    task = live(await pipeline.tasks_for(patient))[0]
    await pipeline.partner.update({**weight, "status": "entered-in-error"})
    await pipeline.settled()
    withdrawn = await pipeline.read(f"Task/{task['id']}")
    assert withdrawn["status"] == "cancelled"
    assert withdrawn["statusReason"]["coding"][0]["code"] == "evidence-withdrawn"
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "revoked"


async def test_medplum_failures_are_retried_until_processed(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    # The worker's next three batch calls fail: 503, then 429 with a short reset, then 503.
    await pipeline.fault(status=503, count=1, method="POST", pathPattern="^/fhir/R4/?$")
    await pipeline.fault(
        status=429, count=1, method="POST", pathPattern="^/fhir/R4/?$", resetSeconds=1
    )
    await pipeline.fault(status=503, count=1, method="POST", pathPattern="^/fhir/R4/?$")
    await pipeline.weight_and_height(patient)
    await pipeline.settled(within=60)
    assert len(live(await pipeline.tasks_for(patient))) == 1
    assert all(e[5] == "processed" for e in pipeline.events())
    assert (await pipeline.stats())["faults_injected"] >= 3


async def test_a_longer_outage_is_retried_by_the_job_queue(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    # More consecutive failures than the client's own retries absorb: the job fails, is
    # retried with backoff, and succeeds once Medplum answers again. The failures are shared by
    # the four events (two bots, height and weight) processed side by side.
    await pipeline.fault(status=503, count=25, method="POST", pathPattern="^/fhir/R4/?$")
    await pipeline.weight_and_height(patient)
    await pipeline.settled(within=90)
    assert len(live(await pipeline.tasks_for(patient))) == 1
    mine = [e for e in pipeline.events() if e[5] == "processed" and e[8] > 1]
    assert mine, "no event needed a second job attempt"


async def test_a_worker_killed_before_processing_loses_nothing(pipeline: Pipeline) -> None:
    [worker] = [p for p in pipeline.stack.processes if p.name == "worker"]
    worker.kill()
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient)
    await eventually(
        lambda: _async(pipeline.events),
        lambda events: any(e[5] == "queued" and e[1] == "bmi" for e in events),
    )
    pipeline.stack.start_worker()
    await pipeline.settled(within=60)
    assert len(live(await pipeline.tasks_for(patient))) == 1


async def _async(function: Any) -> Any:
    return function()


async def test_the_sweep_catches_events_missed_while_a_subscription_was_off(
    pipeline: Pipeline,
) -> None:
    subscriptions = await pipeline.search("Subscription")
    weight_subscriptions = [
        s for s in subscriptions if "X-Starvit-Bot: bmi" in s["channel"].get("header", [])
    ]
    assert len(weight_subscriptions) == 1
    await pipeline.admin.update({**weight_subscriptions[0], "status": "off"})
    try:
        await _missed_weight_events_are_swept(pipeline)
    finally:
        pipeline.stack.run("subscriptions", "sync")  # whatever happened, the next tests need it


async def _missed_weight_events_are_swept(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient()
    height, weight = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    missed = {height["id"], weight["id"]}
    assert not [e for e in pipeline.events() if e[1] == "bmi" and e[3] in missed]
    assert live(await pipeline.tasks_for(patient), "results-review") == []

    swept = pipeline.stack.run("sweep")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    await pipeline.settled()
    recovered = [e for e in pipeline.events() if e[1] == "bmi" and e[3] in missed]
    assert {e[3] for e in recovered} == missed
    assert len(live(await pipeline.tasks_for(patient), "results-review")) == 1

    status = pipeline.stack.run("subscriptions", "status")
    assert status.returncode == 1
    assert "off" in status.stdout
    synced = pipeline.stack.run("subscriptions", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "reenabled" in synced.stdout
    assert pipeline.stack.run("subscriptions", "status").returncode == 0


CANARIES = ("Zyxqorbert", "Canaryfield", "1931-02-03", "Quuxcanary Lane", "Plinkton", "unicycle")


async def test_no_phi_reaches_logs_spans_or_the_database(pipeline: Pipeline) -> None:
    patient = await pipeline.new_patient(
        name=[{"given": ["Zyxqorbert"], "family": "Canaryfield"}],
        birthDate="1931-02-03",
        address=[{"line": ["42 Quuxcanary Lane"], "city": "Plinkton"}],
    )
    _height, weight = await pipeline.weight_and_height(patient)
    await pipeline.partner.update(
        {**weight, "note": [{"text": "fell off a unicycle, weighed at home"}]}
    )
    await pipeline.settled()
    session = await login(pipeline.devserver.base_url, "clinician-bob")
    try:
        task = live(await pipeline.tasks_for(patient))[0]
        await approve(session, task["id"])
    finally:
        await session.aclose()
    await pipeline.settled()
    # The canary did reach Medplum (where PHI belongs) and the service processed it...
    assert "Canaryfield" in str(await pipeline.read(patient))
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "active"
    # ... but no log line, span, or row of any table in the service's database holds it.
    output = "\n".join(line for p in pipeline.stack.processes for line in p.output)
    assert "event_processed" in output
    assert '"span_id"' in output  # spans were exported to the console
    for canary in CANARIES:
        assert canary not in output, canary
    with psycopg.connect(pipeline.database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert len(tables) >= 5
        dump = []
        for schema, table in tables:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchall()
            dump.extend(str(row[0]) for row in rows)
    text = "\n".join(dump)
    assert weight["id"] in text  # references are kept ...
    for canary in CANARIES:
        assert canary not in text, canary  # ... PHI never


async def test_undecided_tasks_expire_and_their_proposals_are_withdrawn(
    pipeline: Pipeline,
) -> None:
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient)
    await pipeline.settled()
    task = live(await pipeline.tasks_for(patient))[0]
    settings = load_settings(
        medplum_base_url=pipeline.devserver.base_url,
        medplum_client_secret=pipeline.stack.env()["STARVIT_MEDPLUM_CLIENT_SECRET"],
        task_expiry_days=30,
    )
    async with medplum_client(settings) as medplum:
        assert await expire_tasks(medplum, settings) == 0  # nothing is 30 days old yet
        later = datetime.now(UTC) + timedelta(days=31)
        assert await expire_tasks(medplum, settings, now=later) >= 1
    expired = await pipeline.read(f"Task/{task['id']}")
    assert expired["status"] == "cancelled"
    assert expired["statusReason"]["coding"][0]["code"] == "expired"
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "revoked"


async def test_an_urgent_task_never_expires_and_is_escalated_once_overdue(
    pipeline: Pipeline,
) -> None:
    """Finding 7: a crisis reading opens an urgent Task due in hours; it is escalated to the
    configured target when overdue, audited, and never withdrawn by the expiry."""
    patient = await pipeline.new_patient()
    panel = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": days_ago(0),
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {
                    "value": value,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
            for code, value in (("8480-6", 190), ("8462-4", 125))
        ],
    }
    await pipeline.partner.create(panel)
    await pipeline.settled()
    [task] = live(await pipeline.tasks_for(patient), "blood-pressure.hypertensive-crisis")
    assert task["priority"] == "urgent"
    assert "mmHg" in task["code"]["text"]
    due = datetime.fromisoformat(task["restriction"]["period"]["end"])
    authored = datetime.fromisoformat(task["authoredOn"])
    assert due - authored == timedelta(hours=4)
    settings = load_settings(
        medplum_base_url=pipeline.devserver.base_url,
        medplum_client_secret=pipeline.stack.env()["STARVIT_MEDPLUM_CLIENT_SECRET"],
        escalation_target="PractitionerRole/on-call",
    )
    async with medplum_client(settings) as medplum:
        assert await escalate_tasks(medplum, settings) == 0  # not overdue yet
        later = datetime.now(UTC) + timedelta(hours=5)
        assert await escalate_tasks(medplum, settings, now=later) >= 1
        assert await escalate_tasks(medplum, settings, now=later) == 0  # once
        await expire_tasks(medplum, settings, now=datetime.now(UTC) + timedelta(days=31))
    escalated = await pipeline.read(f"Task/{task['id']}")
    assert escalated["status"] == "requested"  # never expired
    assert escalated["priority"] == "stat"
    assert escalated["owner"] == {"reference": "PractitionerRole/on-call"}
    audits = await pipeline.search("AuditEvent", _tag=TAG)
    assert any(
        "escalated" in str(a.get("outcomeDesc")) and f"Task/{task['id']}" in str(a["entity"])
        for a in audits
    )


async def test_a_forged_delete_withdraws_nothing(pipeline: Pipeline) -> None:
    """Medplum signs only the ``{}`` body of a delete, never its headers: the worker confirms
    the deletion with Medplum before withdrawing anything."""
    patient = await pipeline.new_patient()
    _height, weight = await pipeline.weight_and_height(patient)
    await pipeline.settled()
    body = b"{}"
    key = subscription_secret(pipeline.stack.webhook_secret, "bmi").encode()
    signature = hmac.new(key, body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            pipeline.stack.receiver_url,
            content=body,
            headers={
                "Content-Type": "application/fhir+json",
                "X-Signature": signature,
                "X-Medplum-Interaction": "delete",
                "X-Medplum-Deleted-Resource": f"Observation/{weight['id']}",
                "X-Starvit-Bot": "bmi",
                "X-Medplum-Subscription": "0b7b1f5e-forged-4e1a-9b1e-000000000001",
            },
        )
    assert answer.status_code == 202
    await pipeline.settled()
    assert len(live(await pipeline.tasks_for(patient))) == 1


async def test_the_sweep_catches_a_decision_missed_while_review_was_off(
    pipeline: Pipeline,
) -> None:
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient)
    await pipeline.settled()
    task = live(await pipeline.tasks_for(patient))[0]
    [review] = [
        s
        for s in await pipeline.search("Subscription")
        if "X-Starvit-Bot: review" in s["channel"].get("header", [])
    ]
    await pipeline.admin.update({**review, "status": "off"})
    try:
        await _missed_decision_is_swept(pipeline, task)
    finally:
        pipeline.stack.run("subscriptions", "sync")


async def _missed_decision_is_swept(pipeline: Pipeline, task: dict[str, Any]) -> None:
    session = await login(pipeline.devserver.base_url, "clinician-alice")
    try:
        await approve(session, task["id"])
    finally:
        await session.aclose()
    await pipeline.settled()
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "draft"

    swept = pipeline.stack.run("sweep")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    await pipeline.settled()
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "active"
    synced = pipeline.stack.run("subscriptions", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr


async def test_a_partner_cannot_grant_the_clinician_role(pipeline: Pipeline) -> None:
    """Who counts as a clinician comes from PractitionerRole: the recommended policy lets a
    partner load roles (Synthea's practitioners) but never the clinician codes."""

    def role(system: str, code: str) -> dict[str, Any]:
        return {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": "Practitioner/ops-olivia"},
            "code": [{"coding": [{"system": system, "code": code}]}],
        }

    with pytest.raises(MedplumForbidden) as granted:
        await pipeline.partner.create(role("http://snomed.info/sct", "158965000"))
    assert granted.value.status_code == 403
    loaded = await pipeline.partner.create(role("http://nucc.org/provider-taxonomy", "208D00000X"))
    assert loaded.status_code == 201
