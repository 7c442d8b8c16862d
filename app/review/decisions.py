"""The clinician's decision on a review Task (pure).

This module is the only place that produces ``final`` Observations and ``active`` requests, and
only for a Task status change made by a clinician: a Practitioner holding an active
PractitionerRole with a clinician role code. ``completed`` / ``accepted`` approve, ``rejected``
/ ``cancelled`` retract; any other author (the service itself, a partner client, a patient, a
non-clinical Practitioner) is refused: the proposal is not touched and the Task is returned to
``requested`` for a clinician.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from app.botkit.identifiers import (
    BOT_VERSION_URL,
    PROVENANCE_SYSTEM,
    TAG_CODE,
    TAG_SYSTEM,
    TASK_SYSTEM,
    digest,
    tag,
)
from app.botkit.statuses import APPROVING, REJECTING, proposal_status_after
from app.fhir.resource_json import JSONObject, JSONValue, get_object, get_objects, get_str
from app.fhir.views import ResourceView, TaskView
from app.fhir.writes import PlannedWrite, strip_meta

type Decision = Literal["approve", "reject"]
type ReviewOutcome = Literal[
    "finalised", "retracted", "refused", "no_decision", "already_decided", "not_ours"
]


def decision_of(status: str | None) -> Decision | None:
    if status in APPROVING:
        return "approve"
    if status in REJECTING:
        return "reject"
    return None


def has_clinician_role(roles: list[JSONObject], practitioner: str, codes: frozenset[str]) -> bool:
    """True when one of ``roles`` is an active PractitionerRole of ``practitioner`` with a
    code ``system|code`` in ``codes``."""
    for role in roles:
        if get_str(role, "resourceType") != "PractitionerRole" or role.get("active") is False:
            continue
        who = get_object(role, "practitioner")
        if who is None or get_str(who, "reference") != practitioner:
            continue
        for concept in get_objects(role, "code"):
            for coding in get_objects(concept, "coding"):
                if f"{get_str(coding, 'system')}|{get_str(coding, 'code')}" in codes:
                    return True
    return False


@dataclass(slots=True)
class ReviewPlan:
    outcome: ReviewOutcome
    decision: Decision | None = None
    decider: str | None = None
    writes: list[PlannedWrite] = field(default_factory=list[PlannedWrite])
    reasons: list[str] = field(default_factory=list[str])


def bot_version_of(task: TaskView) -> str | None:
    for extension in get_objects(task.json, "extension"):
        if get_str(extension, "url") == BOT_VERSION_URL:
            return get_str(extension, "valueString")
    return None


def plan_review(
    task: TaskView,
    *,
    decider: str | None,
    decider_is_clinician: bool,
    focus: JSONObject | None,
    now: datetime,
) -> ReviewPlan:
    """The writes that carry out the decision recorded in this Task version."""
    if task.identifier_value(TASK_SYSTEM) is None or not task.tagged(TAG_SYSTEM, TAG_CODE):
        return ReviewPlan("not_ours", reasons=["the Task is not a Starvit review Task"])
    decision = decision_of(task.status)
    if decision is None:
        return ReviewPlan("no_decision", reasons=[f"status {task.status} is not a decision"])
    if decider is None or not decider.startswith("Practitioner/") or not decider_is_clinician:
        return ReviewPlan(
            "refused",
            decision=decision,
            decider=decider,
            writes=[_returned_for_review(task)],
            reasons=[f"the {task.status} status was not set by a clinician"],
        )
    plan = ReviewPlan(
        "finalised" if decision == "approve" else "retracted", decision=decision, decider=decider
    )
    if focus is None:
        plan.reasons.append("the Task's focus could not be read")
        plan.writes.append(_decision_provenance(task, decider, decision, None, now))
        return plan
    view = ResourceView(focus)
    if not view.tagged(TAG_SYSTEM, TAG_CODE):
        # A crisis alert focuses on the evidence itself: the decision is recorded, the
        # clinician's data is never rewritten.
        plan.reasons.append("the focus is source data; only the decision is recorded")
        plan.writes.append(_decision_provenance(task, decider, decision, None, now))
        return plan
    new_status = proposal_status_after(view.resource_type, view.status, decision)
    if new_status is None:
        # Decided before (a re-delivery, or a later edit of a decided Task): the first
        # decision's Provenance stands; nothing is written again.
        plan.outcome = "already_decided"
        plan.reasons.append(f"the proposal is already {view.status}")
        return plan
    updated = strip_meta(focus)
    updated["status"] = new_status
    reason = task.status_reason
    if decision == "reject" and reason:
        notes = updated.get("note")
        note: JSONValue = {"text": f"Rejected by clinician: {reason}"}
        updated["note"] = [*(notes if isinstance(notes, list) else []), note]
    plan.writes.append(PlannedWrite("PUT", updated, if_match_version=view.version_id))
    plan.writes.append(_decision_provenance(task, decider, decision, view, now))
    return plan


def _returned_for_review(task: TaskView) -> PlannedWrite:
    """A refused status change is undone: the Task goes back to ``requested`` so that it stays
    in the clinicians' list (and can still expire), guarded by the version that was refused."""
    restored = strip_meta(task.json)
    restored["status"] = "requested"
    restored.pop("statusReason", None)
    restored["businessStatus"] = {
        "text": "Returned for clinician review: the status change was not made by a clinician"
    }
    return PlannedWrite("PUT", restored, if_match_version=task.version_id)


def _decision_provenance(
    task: TaskView,
    decider: str,
    decision: Decision,
    focus: ResourceView | None,
    now: datetime,
) -> PlannedWrite:
    key = digest(task.reference, task.version_id, "decision")
    targets: list[JSONValue] = [{"reference": task.versioned_reference}]
    if focus is not None:
        targets.insert(0, {"reference": focus.reference})
    entities: list[JSONValue] = [
        {"role": "source", "what": {"reference": task.versioned_reference}}
    ]
    entities.extend({"role": "source", "what": {"reference": ref}} for ref in task.input_references)
    agents: list[JSONValue] = [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "verifier",
                    }
                ]
            },
            "who": {"reference": decider},
        }
    ]
    bot = bot_version_of(task)
    if bot is not None:
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                        }
                    ]
                },
                "who": {"display": f"Starvit bot {bot}"},
            }
        )
    resource: JSONObject = {
        "resourceType": "Provenance",
        "meta": {"tag": [tag(), {"system": PROVENANCE_SYSTEM, "code": key}]},
        "target": targets,
        "recorded": now.isoformat(),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "UPDATE",
                }
            ],
            "text": "approved by clinician" if decision == "approve" else "rejected by clinician",
        },
        "reason": [{"text": task.status_reason}] if task.status_reason else [],
        "agent": agents,
        "entity": entities,
    }
    if not task.status_reason:
        del resource["reason"]
    return PlannedWrite("POST", resource, if_none_exist=f"_tag={PROVENANCE_SYSTEM}|{key}")
