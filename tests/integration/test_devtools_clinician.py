"""The scripted clinician against the Medplum stand-in: sign-in as the Medplum app does it
(``/auth/login`` with PKCE, then the code exchange), the task list, approve / reject as full PUTs,
and the provenance chain. Tasks are created by the project admin client
(``ops-admin``), one per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from app.botkit.review_list import ListItem, review_list_task
from app.fhir.resource_json import JSONObject, get_object, get_str
from app.integrations.medplum import BundleRequest, MedplumClient, MedplumClientConfig
from devtools import clinician
from devtools.clinician import ClinicianLoginError, ClinicianSession
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, DevServer

pytestmark = pytest.mark.integration

BOT_SYSTEM = "https://fhir.starvit.health/sid/bot"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer.start() as running:
        yield running


@pytest.fixture(scope="module")
async def admin(server: DevServer) -> AsyncIterator[MedplumClient]:
    config = MedplumClientConfig(
        base_url=server.base_url, client_id=ADMIN_CLIENT_ID, client_secret=ADMIN_CLIENT_SECRET
    )
    async with MedplumClient(config) as client:
        yield client


@pytest.fixture(scope="module")
async def alice(server: DevServer) -> AsyncIterator[ClinicianSession]:
    async with await clinician.login(server.base_url) as session:
        yield session


async def make_task(admin: MedplumClient, *, priority: str = "urgent") -> tuple[str, str, str]:
    """A Patient, a preliminary Observation and a review Task on it: (task id, patient ref,
    observation ref)."""
    family = f"Lovelace{uuid.uuid4().hex[:6]}"
    patient = await admin.create(
        {"resourceType": "Patient", "name": [{"given": ["Ada"], "family": family}]}
    )
    observation = await admin.create(
        {
            "resourceType": "Observation",
            "status": "preliminary",
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "39156-5", "display": "BMI"}]
            },
            "subject": {"reference": str(patient.reference)},
            "valueQuantity": {"value": 31.2, "unit": "kg/m2"},
        }
    )
    task = await admin.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "proposal",
            "priority": priority,
            "code": {"text": f"Confirm BMI 31.2 for {family}"},
            "description": "Weight 90 kg and height 170 cm give BMI 31.2 (WHO obesity class I).",
            "for": {"reference": str(patient.reference)},
            "focus": {"reference": str(observation.reference)},
            "restriction": {"period": {"end": "2030-01-02T10:00:00Z"}},
            "extension": [
                {
                    "url": "https://fhir.starvit.health/StructureDefinition/bot-version",
                    "valueString": "bmi@1.0.0",
                }
            ],
        }
    )
    assert task.id
    return task.id, str(patient.reference), str(observation.reference)


async def test_login_signs_in_the_practitioner(alice: ClinicianSession) -> None:
    # Signed in through POST /auth/login + the code exchange, every call through MedplumClient.
    assert isinstance(alice.medplum, MedplumClient)
    assert alice.medplum.token_request_count == 2
    assert alice.practitioner == "Practitioner/clinician-alice"
    assert alice.claims.get("profile") == "Practitioner/clinician-alice"
    assert alice.claims.get("aud") == "starvit-clinician-app"
    assert alice.display == "Alice Clinician"
    me = await alice.read(alice.practitioner)
    assert get_str(me, "id") == "clinician-alice"


async def test_login_of_an_unknown_user_fails(server: DevServer) -> None:
    with pytest.raises(ClinicianLoginError, match=r"User not found.*HTTP 400"):
        await clinician.login(
            server.base_url, user="nobody@starvit.example", password="whatever-password"
        )
    with pytest.raises(ClinicianLoginError, match="neither an email address nor a seeded user"):
        await clinician.login(server.base_url, user="nobody")


async def test_login_with_a_wrong_password_fails_clearly(server: DevServer) -> None:
    with pytest.raises(ClinicianLoginError) as caught:
        await clinician.login(server.base_url, "clinician-alice", password="not-her-password")
    message = str(caught.value)
    assert "clinician-alice could not sign in" in message
    assert "Email or password is invalid" in message
    assert "HTTP 400" in message
    assert "not-her-password" not in message
    assert caught.value.status_code == 400


async def test_pending_tasks_lists_title_patient_priority_and_due(
    admin: MedplumClient, alice: ClinicianSession
) -> None:
    task_id, patient, _ = await make_task(admin, priority="asap")
    rows = await clinician.pending_tasks(alice)
    row = next(r for r in rows if r.id == task_id)
    assert row.title.startswith("Confirm BMI 31.2 for Lovelace")
    assert row.patient.startswith("Ada Lovelace")
    assert row.patient_reference == patient
    assert row.priority == "asap"
    assert row.due == "2030-01-02T10:00:00Z"
    assert row.rationale
    assert row.rationale.startswith("Weight 90 kg")
    assert row.focus
    assert row.focus.startswith("Observation/")
    assert row.version
    assert rows[0].id == task_id  # newest first
    only = await clinician.pending_tasks(alice, patient=patient)
    assert [r.id for r in only] == [task_id]
    table = clinician.render_rows(only)
    assert row.patient in table
    assert "asap" in table
    assert "2030-01-02" in table
    assert "why: Weight 90 kg" in table


async def test_approve_completes_the_task_as_the_clinician(
    admin: MedplumClient, alice: ClinicianSession
) -> None:
    task_id, patient, _ = await make_task(admin)
    before = await admin.read("Task", task_id)
    version = await clinician.approve(alice, task_id)
    assert version != before.version_id
    after = await admin.read("Task", task_id)
    assert after.version_id == version
    assert get_str(after.resource, "status") == "completed"
    owner = get_object(after.resource, "owner")
    assert owner is not None
    assert get_str(owner, "reference") == "Practitioner/clinician-alice"
    # the write is the clinician's own (meta.author), and the Task has left the pending list
    extended = await admin.batch([BundleRequest.read("Task", task_id)], extended=True)
    stored = extended.entries[0].resource
    assert stored is not None
    meta = get_object(stored, "meta")
    author = get_object(meta, "author") if meta else None
    assert author is not None
    assert get_str(author, "reference") == "Practitioner/clinician-alice"
    assert task_id not in [r.id for r in await clinician.pending_tasks(alice, patient=patient)]


async def test_reject_records_the_reason(admin: MedplumClient, alice: ClinicianSession) -> None:
    task_id, _, _ = await make_task(admin)
    before = await admin.read("Task", task_id)
    version = await clinician.reject(alice, task_id, "Height measurement looks wrong")
    assert version != before.version_id
    after = (await admin.read("Task", task_id)).resource
    assert get_str(after, "status") == "rejected"
    reason = get_object(after, "statusReason")
    assert reason == {"text": "Height measurement looks wrong"}
    with pytest.raises(ValueError, match="reason"):
        await clinician.reject(alice, task_id, "  ")


async def test_provenance_chain_without_provenance_says_none_yet(
    admin: MedplumClient, alice: ClinicianSession
) -> None:
    task_id, _, observation = await make_task(admin)
    lines = await clinician.provenance_chain(alice, task_id)
    text = "\n".join(lines)
    assert lines[0].startswith(f"Task/{task_id}")
    assert f"Focus: {observation}" in text
    assert "status=preliminary" in text
    assert "value=31.2 kg/m2" in text
    assert "Provenance: (none yet)" in text
    assert "Evidence: (none yet)" in text
    assert "Bot: bmi@1.0.0 (no Device found)" in text
    assert "Decision: (none yet)" in text
    assert "Verified (Provenance agent verifier): (none yet)" in text


def verified_by_alice(target: str) -> JSONObject:
    """The Provenance a clinician's decision leaves on ``target``: alice as its verifier."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": "2026-01-02T00:00:00Z",
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "verifier",
                        }
                    ]
                },
                "who": {"reference": "Practitioner/clinician-alice"},
            }
        ],
    }


async def test_provenance_chain_follows_evidence_bot_and_decision(
    admin: MedplumClient, alice: ClinicianSession
) -> None:
    task_id, patient, observation = await make_task(admin)
    weight = await admin.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}
                ]
            },
            "subject": {"reference": patient},
            "valueQuantity": {"value": 90, "unit": "kg"},
            "effectiveDateTime": "2020-01-01",
        }
    )
    device = await admin.create(
        {
            "resourceType": "Device",
            "identifier": [{"system": BOT_SYSTEM, "value": "bmi@1.0.0"}],
            "version": [{"value": "1.0.0"}],
        }
    )
    who: JSONObject = {"type": "Device", "identifier": {"system": BOT_SYSTEM, "value": "bmi@1.0.0"}}
    await admin.create(
        {
            "resourceType": "Provenance",
            "target": [{"reference": observation}],
            "recorded": "2026-01-01T00:00:00Z",
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "assembler",
                            }
                        ]
                    },
                    "who": who,
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {"reference": f"{weight.reference}/_history/{weight.version_id}"},
                }
            ],
        }
    )
    await clinician.approve(alice, task_id)
    await admin.create(verified_by_alice(observation))
    text = "\n".join(await clinician.provenance_chain(alice, task_id))
    assert "Provenance (2):" in text
    assert "agent assembler: Device bmi@1.0.0" in text
    assert f"entity source: {weight.reference}/_history/{weight.version_id}" in text
    assert "Evidence (1):" in text
    assert "code=29463-7 Body weight value=90 kg at 2020-01-01" in text
    assert f"Bot: bmi@1.0.0 -> {device.reference} version 1.0.0" in text
    assert "Decision: completed by Practitioner/clinician-alice (Alice Clinician)" in text
    assert "Verified: Practitioner/clinician-alice in Provenance/" in text


async def test_provenance_chain_of_a_results_review_list_follows_its_items(
    admin: MedplumClient, alice: ClinicianSession
) -> None:
    task_id, patient, observation = await make_task(admin, priority="routine")
    rows = review_list_task(
        key="list-key",
        patient=patient,
        items=[ListItem("bmi.bmi", observation, "BMI 31.2 kg/m2 (obesity class I)")],
        now=datetime.now(UTC),
        due_days=7,
        existing=None,
    )
    await admin.update({**rows, "id": task_id}, idempotent=True)
    # The clinician's decision on the list names each listed result, not the list Task.
    await admin.create(verified_by_alice(observation))
    text = "\n".join(await clinician.provenance_chain(alice, task_id))
    assert "Verified: Practitioner/clinician-alice in Provenance/" in text
