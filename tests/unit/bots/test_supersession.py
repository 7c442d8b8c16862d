"""Supersession by clinical time: a late older result never buries a newer pending suggestion."""

from __future__ import annotations

from datetime import UTC, datetime

from app.botkit.declaration import Bot, Effect, Evidence, NoResult, OpenReviewTask
from app.botkit.identifiers import EVIDENCE_TIME_URL, TASK_SYSTEM
from app.botkit.plan import OLDER_THAN_PENDING, WritePlan, plan_writes, task_evidence_time
from app.clinical.bmi import WHO_BMI_CLASSIFICATION
from app.fhir.resource_json import JSONObject, JSONValue
from app.fhir.views import TaskView
from bots.bmi import DECLARATION as BMI_DECLARATION
from bots.egfr import BOT as EGFR

from .fhir import NOW, PATIENT_REF, context, event, observation, patient

WOMAN_60 = patient(birth_date="1964-05-01", gender="female")


def _plan(
    bot: Bot, notified: JSONObject, pending: list[JSONObject], **prefetched: list[JSONObject]
) -> tuple[list[Effect], WritePlan]:
    effects = bot.compute(event(notified), context(WOMAN_60, **prefetched))
    plan = plan_writes(
        declaration=bot.declaration,
        event=event(notified),
        effects=effects,
        patient=PATIENT_REF,
        pending_tasks=[TaskView(t) for t in pending],
        now=NOW,
        due_days=7,
    )
    return effects, plan


def _written_tasks(plan: WritePlan) -> list[JSONObject]:
    """The Tasks a plan creates, as Medplum would store them (with an id and a version)."""
    tasks: list[JSONObject] = []
    for slot in plan.slots:
        for write in slot.writes:
            if write.method == "POST" and write.resource.get("resourceType") == "Task":
                stored = dict(write.resource)
                stored["id"] = f"t-{slot.task_key[:8]}"
                stored["meta"] = {"versionId": "1"}
                tasks.append(stored)
    return tasks


def _cancelled(plan: WritePlan) -> list[JSONObject]:
    return [
        w.resource
        for slot in plan.slots
        for w in slot.writes
        if w.method == "PUT" and w.resource.get("status") == "cancelled"
    ]


def test_a_late_older_creatinine_does_not_supersede_a_newer_pending_egfr() -> None:
    # June creatinine 3.0 mg/dL: eGFR 16 (G4); pending for review.
    june = observation("c-june", "2160-0", 3.0, "mg/dL", "2024-06-10T08:00:00Z")
    _, first = _plan(EGFR, june, [], creatinine=[june])
    [pending] = [t for t in _written_tasks(first) if "egfr.egfr" in str(t["code"])]
    assert "G4" in str(pending["code"])
    assert task_evidence_time(TaskView(pending)) == datetime(2024, 6, 10, 8, tzinfo=UTC)
    # A May creatinine of 0.8 (eGFR 84, G2) arrives later.
    may = observation("c-may", "2160-0", 0.8, "mg/dL", "2024-05-10T08:00:00Z")
    effects, late = _plan(EGFR, may, [pending], creatinine=[may, june])
    assert any(isinstance(e, OpenReviewTask) and "G2" in e.title for e in effects)
    assert [s.slot for s in late.slots] == []
    assert _cancelled(late) == []
    [refused] = [n for n in late.no_results if n.outcome == OLDER_THAN_PENDING]
    assert "older than the pending suggestion's evidence" in refused.reason


def test_a_newer_or_same_time_result_supersedes() -> None:
    may = observation("c-may", "2160-0", 0.8, "mg/dL", "2024-05-10T08:00:00Z")
    _, first = _plan(EGFR, may, [], creatinine=[may])
    [pending] = _written_tasks(first)
    june = observation("c-june", "2160-0", 3.0, "mg/dL", "2024-06-10T08:00:00Z")
    _, newer = _plan(EGFR, june, [pending], creatinine=[may, june])
    assert [s.slot for s in newer.slots] == ["egfr"]
    [cancelled] = _cancelled(newer)
    assert cancelled["statusReason"] == {
        "coding": [
            {
                "system": "https://fhir.starvit.health/CodeSystem/status-reason",
                "code": "superseded",
            }
        ],
        "text": "superseded",
    }
    # A corrected version of the same specimen (same clinical time) supersedes as before.
    corrected = observation(
        "c-may", "2160-0", 0.9, "mg/dL", "2024-05-10T08:00:00Z", status="corrected", version="2"
    )
    _, same_time = _plan(EGFR, corrected, [pending], creatinine=[corrected])
    assert [s.slot for s in same_time.slots] == ["egfr"]
    assert len(_cancelled(same_time)) == 1


def _review(evidence_time: datetime | None, version: str) -> OpenReviewTask:
    return OpenReviewTask(
        "bmi",
        "Review BMI",
        "why",
        "routine",
        (Evidence("Observation/w", version),),
        WHO_BMI_CLASSIFICATION,
        evidence_time=evidence_time,
    )


def _pending_bmi(evidence_time: datetime | None) -> JSONObject:
    extension: list[JSONValue] = []
    if evidence_time is not None:
        extension.append({"url": EVIDENCE_TIME_URL, "valueDateTime": evidence_time.isoformat()})
    return {
        "resourceType": "Task",
        "id": "old",
        "meta": {"versionId": "3"},
        "status": "requested",
        "identifier": [{"system": TASK_SYSTEM, "value": "old-key"}],
        "code": {"coding": [{"code": "bmi.bmi"}]},
        "extension": extension,
    }


def _bmi_plan(new_time: datetime | None, pending: JSONObject) -> WritePlan:
    return plan_writes(
        declaration=BMI_DECLARATION,
        event=event(None),
        effects=[_review(new_time, "2")],
        patient=PATIENT_REF,
        pending_tasks=[TaskView(pending)],
        now=NOW,
        due_days=7,
    )


def test_the_task_records_the_evidence_time() -> None:
    when = datetime(2024, 3, 1, 9, tzinfo=UTC)
    plan = _bmi_plan(when, _pending_bmi(None))
    [task] = [
        w.resource
        for w in plan.slots[0].writes
        if w.method == "POST" and w.resource["resourceType"] == "Task"
    ]
    extensions = task["extension"]
    assert isinstance(extensions, list)
    assert {"url": EVIDENCE_TIME_URL, "valueDateTime": "2024-03-01T09:00:00+00:00"} in extensions


def test_without_a_time_on_either_side_the_newer_suggestion_wins_as_before() -> None:
    june = datetime(2024, 6, 1, tzinfo=UTC)
    may = datetime(2024, 5, 1, tzinfo=UTC)
    assert len(_cancelled(_bmi_plan(may, _pending_bmi(None)))) == 1
    assert len(_cancelled(_bmi_plan(None, _pending_bmi(june)))) == 1
    refused = _bmi_plan(may, _pending_bmi(june))
    assert refused.slots == []
    assert [n.outcome for n in refused.no_results] == [OLDER_THAN_PENDING]
    assert isinstance(refused.no_results[0], NoResult)
