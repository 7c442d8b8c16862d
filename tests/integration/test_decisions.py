"""Decision integrity end to end (docs/backend/SECURITY.md, "Decision integrity"): the stand-in
(strict 5.0 mode) delivers real notifications to the receiver and a real worker answers them.

* an admin client acting On-Behalf-Of a clinician is refused and audited;
* who is a clinician comes from roles and Practitioners the partner cannot change, and an
  inactive clinician's decision is refused;
* a later, conflicting decision and a decision on a superseded suggestion are answered on the
  Task: Task and proposal never disagree;
* a clinician cannot hide a decision by dropping the tag or the identifier;
* with ``STARVIT_DECISION_SCOPE=related`` only a clinician related to the patient decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.integrations.medplum import MedplumForbidden
from devtools.clinician import ClinicianError, approve, login, reject
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, DevServer
from tests.integration.conftest import fresh_database
from tests.integration.pipeline_support import (
    Pipeline,
    days_ago,
    observation,
    running_pipeline,
    start_pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_quota_window")]
TAG = f"{TAG_SYSTEM}|{TAG_CODE}"
ALICE = "Practitioner/clinician-alice"
BOB = "Practitioner/clinician-bob"


@pytest.fixture(scope="module")
async def pipeline(module_devserver: DevServer, module_database: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        module_devserver, module_database, STARVIT_SWEEP_INTERVAL_SECONDS="0"
    ) as running:
        yield running


async def pending_task(pipeline: Pipeline) -> dict[str, Any]:
    patient = await pipeline.new_patient()
    await pipeline.weight_and_height(patient)
    await pipeline.settled()
    [task] = [
        t
        for t in await pipeline.tasks_for(patient)
        if t["status"] == "requested" and t["code"]["coding"][0]["code"].startswith("obesity.")
    ]
    return task  # the weight-management referral (BMI 34.9); its focus is a draft request


async def audits_of(pipeline: Pipeline, task: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        a
        for a in await pipeline.search("AuditEvent", _tag=TAG)
        if f"Task/{task['id']}/_history/" in str(a.get("entity"))
        and "review" in str(a.get("subtype"))
    ]


async def admin_put(pipeline: Pipeline, resource: dict[str, Any], **headers: str) -> int:
    """A PUT as the ops-admin client with extra headers (X-Medplum-On-Behalf-Of)."""
    base = pipeline.devserver.base_url
    async with httpx.AsyncClient() as http:
        tok = await http.post(
            base + "oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": ADMIN_CLIENT_ID,
                "client_secret": ADMIN_CLIENT_SECRET,
            },
        )
        token = tok.json()["access_token"]
        answer = await http.put(
            f"{base}fhir/R4/{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/fhir+json",
                **headers,
            },
        )
        return answer.status_code


async def test_an_admin_client_acting_on_behalf_of_a_clinician_is_refused(
    pipeline: Pipeline,
) -> None:
    task = await pending_task(pipeline)
    status = await admin_put(
        pipeline, {**task, "status": "completed"}, **{"X-Medplum-On-Behalf-Of": ALICE}
    )
    assert status == 200  # Medplum lets a project admin impersonate; the service does not
    await pipeline.settled()
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "draft"
    returned = await pipeline.read(f"Task/{task['id']}")
    assert returned["status"] == "requested"
    assert "made on behalf of Practitioner/clinician-alice" in str(returned["note"])
    assert not [
        p
        for p in await pipeline.search("Provenance", target=task["focus"]["reference"])
        if "verifier" in str(p["agent"])
    ]
    [audit] = await audits_of(pipeline, task)
    assert audit["outcome"] == "4"
    assert "made on behalf of Practitioner/clinician-alice" in audit["outcomeDesc"]
    assert "decided by ClientApplication/ops-admin" in audit["outcomeDesc"]


async def test_a_partner_cannot_demote_a_clinician(pipeline: Pipeline) -> None:
    role = await pipeline.read("PractitionerRole/role-clinician-alice")
    with pytest.raises(MedplumForbidden):
        await pipeline.partner.update({**role, "code": [{"text": "Nurse"}]})
    alice = await pipeline.read("Practitioner/clinician-alice")
    with pytest.raises(MedplumForbidden):
        await pipeline.partner.update({**alice, "active": False})
    unchanged = await pipeline.read("PractitionerRole/role-clinician-alice")
    assert unchanged["meta"]["versionId"] == role["meta"]["versionId"]


async def test_an_inactive_clinician_cannot_approve(pipeline: Pipeline) -> None:
    task = await pending_task(pipeline)
    bob = await pipeline.read(BOB)
    await pipeline.admin.update({**bob, "active": False})  # an administrator may
    try:
        session = await login(pipeline.devserver.base_url, "clinician-bob")
        try:
            await approve(session, task["id"])
        finally:
            await session.aclose()
        await pipeline.settled()
    finally:
        await pipeline.admin.update({**(await pipeline.read(BOB)), "active": True})
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "draft"
    returned = await pipeline.read(f"Task/{task['id']}")
    assert returned["status"] == "requested"
    assert "not an active clinician" in str(returned["note"])


async def test_a_later_rejection_does_not_undo_an_approval(pipeline: Pipeline) -> None:
    """Alice approves; Bob, who opened the Task before, rejects it (the app's full PUT without
    If-Match): the approval stands and the Task says so; Bob's rejection is audited."""
    task = await pending_task(pipeline)
    alice = await login(pipeline.devserver.base_url, "clinician-alice")
    bob = await login(pipeline.devserver.base_url, "clinician-bob")
    try:
        await approve(alice, task["id"])
        await pipeline.settled()
        await reject(bob, task["id"], "Not indicated")
        await pipeline.settled()
    finally:
        await alice.aclose()
        await bob.aclose()
    focus = await pipeline.read(task["focus"]["reference"])
    final = await pipeline.read(f"Task/{task['id']}")
    assert focus["status"] == "active"
    assert final["status"] == "completed"
    assert "already approved by Practitioner/clinician-alice" in str(final["note"])
    assert "later rejection by Practitioner/clinician-bob was not applied" in str(final["note"])
    outcomes = {
        a["outcomeDesc"].split(":")[0]: a["outcome"] for a in await audits_of(pipeline, task)
    }
    # The approval is recorded by its decision Provenance; the refused rejection by an AuditEvent.
    assert outcomes == {"overruled": "4"}


async def test_a_later_approval_does_not_undo_a_rejection(pipeline: Pipeline) -> None:
    task = await pending_task(pipeline)
    alice = await login(pipeline.devserver.base_url, "clinician-alice")
    bob = await login(pipeline.devserver.base_url, "clinician-bob")
    try:
        await reject(alice, task["id"], "Scale not calibrated")
        await pipeline.settled()
        await approve(bob, task["id"])
        await pipeline.settled()
    finally:
        await alice.aclose()
        await bob.aclose()
    assert (await pipeline.read(task["focus"]["reference"]))["status"] == "revoked"
    final = await pipeline.read(f"Task/{task['id']}")
    assert final["status"] == "rejected"
    assert final["statusReason"]["text"] == "Scale not calibrated"
    assert "already rejected by Practitioner/clinician-alice" in str(final["note"])


async def test_an_approval_after_withdrawal_changes_nothing_and_says_so(
    pipeline: Pipeline,
) -> None:
    old = await pending_task(pipeline)
    patient = old["for"]["reference"]
    # A newer weight puts the BMI below 30: the referral no longer holds and is withdrawn.
    await pipeline.partner.create(observation(patient, "29463-7", 70.0, "kg", days_ago(5)))
    await pipeline.settled()
    assert (await pipeline.read(f"Task/{old['id']}"))["status"] == "cancelled"
    session = await login(pipeline.devserver.base_url, "clinician-alice")
    try:
        await approve(session, old["id"])  # from a list that was not refreshed
    finally:
        await session.aclose()
    await pipeline.settled()
    answered = await pipeline.read(f"Task/{old['id']}")
    assert answered["status"] == "cancelled"
    assert answered["statusReason"]["coding"][0]["code"] == "no-longer-supported"
    assert "before your decision; nothing was changed" in str(answered["note"])
    assert (await pipeline.read(old["focus"]["reference"]))["status"] == "revoked"
    [audit] = [a for a in await audits_of(pipeline, old) if "withdrawn_before" in a["outcomeDesc"]]
    assert audit["outcome"] == "4"


async def test_a_clinician_cannot_hide_a_decision_by_dropping_the_tag(pipeline: Pipeline) -> None:
    task = await pending_task(pipeline)
    session = await login(pipeline.devserver.base_url, "clinician-alice")
    try:
        bare = {
            "resourceType": "Task",
            "id": task["id"],
            "status": "completed",
            "intent": task["intent"],
            "for": task["for"],
            "focus": task["focus"],
        }
        with pytest.raises(ClinicianError) as refused:
            await session.put(bare)
        assert refused.value.status_code == 403
        without_identifier = {k: v for k, v in task.items() if k != "identifier"}
        with pytest.raises(ClinicianError):
            await session.put({**without_identifier, "status": "completed"})
    finally:
        await session.aclose()
    assert (await pipeline.read(f"Task/{task['id']}"))["status"] == "requested"


@pytest.fixture(scope="module")
def related_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url) as url:
        yield url


async def test_related_scope_only_a_clinician_related_to_the_patient_decides(
    module_devserver: DevServer, related_database: str
) -> None:
    running = await start_pipeline(
        module_devserver,
        related_database,
        STARVIT_SWEEP_INTERVAL_SECONDS="0",
        STARVIT_DECISION_SCOPE="related",
    )
    try:
        task = await pending_task(running)
        bob = await login(running.devserver.base_url, "clinician-bob")
        try:
            await approve(bob, task["id"])  # approve() makes Bob the owner: that does not count
            await running.settled()
            returned = await running.read(f"Task/{task['id']}")
            assert returned["status"] == "requested"
            assert "not related to the patient" in str(returned["businessStatus"])
            assert (await running.read(task["focus"]["reference"]))["status"] == "draft"

            await running.partner.create(
                {
                    "resourceType": "CareTeam",
                    "status": "active",
                    "subject": task["for"],
                    "participant": [{"member": {"reference": BOB}}],
                }
            )
            await approve(bob, task["id"])
            await running.settled()
        finally:
            await bob.aclose()
        assert (await running.read(task["focus"]["reference"]))["status"] == "active"
        assert (await running.read(f"Task/{task['id']}"))["status"] == "completed"
    finally:
        running.stack.close()
        await running.partner.aclose()
        await running.admin.aclose()
