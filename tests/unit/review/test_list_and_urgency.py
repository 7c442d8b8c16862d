"""The results-review list decided in one step, and urgent Tasks that never expire silently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM, TASK_SYSTEM
from app.botkit.review_list import ListItem, list_items, review_list_task
from app.fhir.resource_json import JSONObject, get_object, get_objects
from app.fhir.views import TaskView
from app.review.decisions import Actor, plan_list_review
from app.review.expiry import escalated, escalation_writes, never_expires, overdue

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLINICIAN = "Practitioner/alice"


def item(oid: str, status: str = "preliminary") -> JSONObject:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1", "tag": [{"system": TAG_SYSTEM, "code": TAG_CODE}]},
        "status": status,
    }


def review_list(status: str) -> TaskView:
    task = review_list_task(
        key="k1",
        patient="Patient/p1",
        items=[
            ListItem("bmi.bmi", "Observation/o1", "BMI 23.1 kg/m2 (normal weight)"),
            ListItem("egfr.egfr", "Observation/o2", "eGFR 95 (G1)"),
        ],
        now=NOW,
        due_days=7,
        existing=None,
    )
    meta = {**(get_object(task, "meta") or {}), "versionId": "4"}
    return TaskView({**task, "id": "t1", "meta": meta, "status": status})


def test_the_list_names_its_items_and_is_low_priority() -> None:
    task = review_list("requested")
    assert [i.reference for i in list_items(task)] == ["Observation/o1", "Observation/o2"]
    assert task.json["priority"] == "routine"
    assert "eGFR 95 (G1)" in str(task.json["description"])
    assert task.identifier_value(TASK_SYSTEM) == "k1"


def test_one_approval_finalises_every_pending_item_each_with_its_own_provenance() -> None:
    plan = plan_list_review(
        review_list("completed"),
        actor=Actor(CLINICIAN, None, is_clinician=True),
        items=[item("o1"), item("o2"), item("o3", status="final")],
        now=NOW,
    )
    assert plan.outcome == "finalised"
    puts = [w.resource for w in plan.writes if w.method == "PUT"]
    assert [(r["id"], r["status"]) for r in puts] == [("o1", "final"), ("o2", "final")]
    provenances = [w for w in plan.writes if w.resource["resourceType"] == "Provenance"]
    assert len(provenances) == 2
    assert len({w.if_none_exist for w in provenances}) == 2  # one key per item
    for write, oid in zip(provenances, ("o1", "o2"), strict=True):
        assert {"reference": f"Observation/{oid}"} in get_objects(write.resource, "target")
        assert "verifier" in str(write.resource["agent"])


def test_a_rejection_cancels_every_pending_item_with_the_reason() -> None:
    task = review_list("rejected")
    task = TaskView({**task.json, "statusReason": {"text": "duplicate results"}})
    plan = plan_list_review(
        task, actor=Actor(CLINICIAN, None, is_clinician=True), items=[item("o1")], now=NOW
    )
    assert plan.outcome == "retracted"
    [put] = [w.resource for w in plan.writes if w.method == "PUT"]
    assert put["status"] == "cancelled"
    assert "duplicate results" in str(put["note"])


def test_nothing_is_final_without_a_clinician_acting_as_themselves() -> None:
    for actor in (
        Actor("ClientApplication/admin", None, is_clinician=False),
        Actor("ClientApplication/admin", CLINICIAN, is_clinician=True),
        Actor("Practitioner/bob", None, is_clinician=False),
    ):
        plan = plan_list_review(
            review_list("completed"), actor=actor, items=[item("o1"), item("o2")], now=NOW
        )
        assert plan.outcome == "refused"
        assert all(w.resource.get("status") != "final" for w in plan.writes)
        [task] = [w.resource for w in plan.writes]
        assert task["status"] == "requested"


def _urgent(authored: datetime) -> TaskView:
    return TaskView(
        {
            "resourceType": "Task",
            "id": "u1",
            "meta": {"versionId": "2"},
            "status": "requested",
            "priority": "urgent",
            "authoredOn": authored.isoformat(),
            "restriction": {"period": {"end": (authored + timedelta(hours=4)).isoformat()}},
        }
    )


def test_urgent_tasks_and_the_list_never_expire() -> None:
    assert never_expires(_urgent(NOW - timedelta(days=90)))
    assert never_expires(review_list("requested"))
    routine = TaskView({**_urgent(NOW).json, "priority": "routine"})
    assert not never_expires(routine)


def test_an_overdue_urgent_task_is_escalated_once_to_the_target() -> None:
    task = _urgent(NOW - timedelta(hours=5))
    assert overdue(task, NOW)
    assert not overdue(_urgent(NOW - timedelta(hours=3)), NOW)
    [write] = escalation_writes(task, "PractitionerRole/on-call", NOW)
    assert write.if_match_version == "2"
    escalated_task = TaskView({**write.resource, "meta": {"versionId": "3"}})
    assert escalated_task.json["priority"] == "stat"
    assert escalated_task.owner == "PractitionerRole/on-call"
    assert "Escalated" in str(escalated_task.json["businessStatus"])
    assert escalated(escalated_task)
    assert not escalated(task)
