"""The clinician's decision on a review Task (pure).

This module is the only place that produces ``final`` Observations and ``active`` requests, and
only for a Task status change made by a clinician acting as themselves: the version's
``meta.author`` is a Practitioner who is active and holds an active PractitionerRole, within its
period, with a clinician role code, and the version carries no ``meta.onBehalfOf`` (an admin
client impersonating a clinician is the client's change, not the clinician's). With the
``related`` decision scope the clinician must also be related to the Task's patient.

``completed`` / ``accepted`` approve, ``rejected`` / ``cancelled`` retract. Whatever happens, the
Task's status and the proposal's status agree once the plan is carried out:

* a refused decision on a pending suggestion returns the Task to ``requested``, saying why;
* a decision on a suggestion that was already decided puts the Task back to the status of the
  decision that stands (the first one carried out) and says who made it;
* a decision on a superseded, withdrawn or expired suggestion puts the Task back to
  ``cancelled``: nothing was changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
from app.botkit.statuses import (
    APPROVING,
    PROPOSAL_TRANSITIONS,
    REJECTING,
    proposal_status_after,
)
from app.fhir.resource_json import JSONObject, JSONValue, get_object, get_objects, get_str
from app.fhir.views import ResourceView, TaskView, parse_datetime
from app.fhir.writes import PlannedWrite, strip_meta

type Decision = Literal["approve", "reject"]
type DecisionScope = Literal["project", "related"]
type ReviewOutcome = Literal[
    "finalised",
    "retracted",
    "refused",
    "no_decision",
    "already_decided",
    "not_ours",
    "overruled",
    "withdrawn_before_decision",
    "reopened",
]

# A proposal in one of these statuses was approved; any other non-pending status means it was
# rejected by a clinician or withdrawn by the service (superseded, evidence withdrawn, expired).
APPROVED_PROPOSAL_STATUSES = frozenset(t["approve"] for t in PROPOSAL_TRANSITIONS.values())
APPROVED_ACTIVITY = "approved by clinician"
REJECTED_ACTIVITY = "rejected by clinician"
# The status the Task is put back to for the decision that stands. `completed` and `rejected`
# are what the Medplum provider app sets; the service's policy lets it restore them only over a
# decided status written by someone else (docs/backend/MEDPLUM_CONFIGURATION.md, section 2).
STANDING_TASK_STATUS: dict[str, str] = {
    "approve": "completed",
    "reject": "rejected",
    "withdrawn": "cancelled",
}
# The Task statuses the service's own policy lets it write over any status.
SERVICE_TASK_STATUSES = frozenset({"requested", "ready", "cancelled", "in-progress", "draft"})
_WITHDRAWAL_TEXT = {
    "superseded": "superseded by a newer suggestion",
    "expired": "withdrawn because it expired without a decision",
    "evidence-withdrawn": "withdrawn because its evidence was deleted or entered in error",
    "no-longer-supported": "withdrawn because newer evidence no longer supports it",
    "patient-deceased": "withdrawn because the patient is recorded as deceased",
}


def decision_of(status: str | None) -> Decision | None:
    if status in APPROVING:
        return "approve"
    if status in REJECTING:
        return "reject"
    return None


def _period_end(text: str | None) -> datetime | None:
    """The first instant after a period's ``end``: a date, month or year covers all of it."""
    parsed = parse_datetime(text)
    if parsed is None or text is None:
        return None
    if len(text) == 4:
        return parsed.replace(year=parsed.year + 1)
    if len(text) == 7:
        return (parsed + timedelta(days=32)).replace(day=1)
    if len(text) == 10:
        return parsed + timedelta(days=1)
    return parsed


def _within(obj: JSONObject, now: datetime) -> bool:
    """True when ``obj.period`` (if any) covers ``now``."""
    period = get_object(obj, "period")
    if period is None:
        return True
    start = parse_datetime(get_str(period, "start"))
    end = _period_end(get_str(period, "end"))
    if start is not None and now < start:
        return False
    return end is None or now < end


def has_clinician_role(
    roles: list[JSONObject],
    practitioner: str,
    codes: frozenset[str],
    *,
    practitioner_resource: JSONObject | None,
    now: datetime,
) -> bool:
    """True when ``practitioner`` is an active Practitioner (``practitioner_resource``, read
    from Medplum; unreadable means no) and one of ``roles`` is an active PractitionerRole of
    theirs, within its ``period`` at ``now``, with a code ``system|code`` in ``codes``."""
    if practitioner_resource is None:
        return False
    person = ResourceView(practitioner_resource)
    if person.resource_type != "Practitioner" or person.reference != practitioner:
        return False
    if practitioner_resource.get("active") is False:
        return False
    for role in roles:
        if get_str(role, "resourceType") != "PractitionerRole" or role.get("active") is False:
            continue
        who = get_object(role, "practitioner")
        if who is None or get_str(who, "reference") != practitioner:
            continue
        if not _within(role, now):
            continue
        for concept in get_objects(role, "code"):
            for coding in get_objects(concept, "coding"):
                if f"{get_str(coding, 'system')}|{get_str(coding, 'code')}" in codes:
                    return True
    return False


def owner_before_decision(
    history: list[JSONObject], version_id: str, decider: str | None
) -> str | None:
    """The Task's owner as assigned before the decision in ``version_id``: the owner of the
    newest earlier version written by someone other than the decider (a clinician who assigns
    the Task to themselves and decides it is not its owner for this purpose). ``history`` is
    Medplum's history, newest first; ``None`` when the version is not in it."""
    versions = [ResourceView(v) for v in history if get_str(v, "resourceType") == "Task"]
    index = next((i for i, v in enumerate(versions) if v.version_id == version_id), None)
    if index is None:
        return None
    for earlier in versions[index + 1 :]:
        if earlier.author != decider:
            return TaskView(earlier.json).owner
    return None


def previous_version(history: list[JSONObject], version_id: str) -> TaskView | None:
    """The version just before ``version_id`` in Medplum's history (newest first)."""
    versions = [TaskView(v) for v in history if get_str(v, "resourceType") == "Task"]
    index = next((i for i, v in enumerate(versions) if v.version_id == version_id), None)
    if index is None or index + 1 >= len(versions):
        return None
    return versions[index + 1]


def clinician_relation(
    decider: str,
    *,
    decider_roles: list[JSONObject],
    owner: str | None,
    patient: JSONObject | None,
    care_teams: list[JSONObject],
    now: datetime,
) -> str | None:
    """How the clinician ``decider`` is related to the Task's patient, or ``None``: the Task's
    owner (as assigned before the decision), the patient's general practitioner, or a
    participant of an active CareTeam whose subject is the patient. A reference to one of the
    decider's own PractitionerRoles counts as the decider."""
    mine = {decider}
    for role in decider_roles:
        who = get_object(role, "practitioner")
        if who is not None and get_str(who, "reference") == decider:
            mine.add(ResourceView(role).reference)
    if owner in mine:
        return "the Task's owner"
    if patient is None:
        return None
    patient_ref = ResourceView(patient).reference
    for gp in get_objects(patient, "generalPractitioner"):
        if get_str(gp, "reference") in mine:
            return "the patient's general practitioner"
    for team in care_teams:
        view = ResourceView(team)
        if view.resource_type != "CareTeam" or view.status != "active":
            continue
        if view.reference_of("subject") != patient_ref or not _within(team, now):
            continue
        for participant in get_objects(team, "participant"):
            member = get_object(participant, "member")
            ref = get_str(member, "reference") if member is not None else None
            if ref in mine and _within(participant, now):
                return "a participant of the patient's active care team"
    return None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made the notified Task version, as Medplum recorded it, and what is known of them."""

    reference: str | None  # meta.author: the identity that acted
    on_behalf_of: str | None = None  # meta.onBehalfOf: set when an admin client impersonated
    is_clinician: bool = False
    # How the clinician is related to the patient (scope "related"); None: not related or not
    # checked. With scope "project" it is not consulted.
    relation: str | None = None


@dataclass(frozen=True, slots=True)
class StandingDecision:
    """What already stands for a proposal that is no longer pending."""

    kind: Literal["approve", "reject", "withdrawn"]
    decider: str | None = None
    recorded: str | None = None
    reason: str | None = None  # a rejection's reason, or how it was withdrawn


def _verdict(provenance: JSONObject) -> tuple[Decision, str | None] | None:
    activity = get_object(provenance, "activity")
    text = get_str(activity, "text") if activity else None
    if text == APPROVED_ACTIVITY:
        verdict: Decision = "approve"
    elif text == REJECTED_ACTIVITY:
        verdict = "reject"
    else:
        return None
    for agent in get_objects(provenance, "agent"):
        if "verifier" in str(agent.get("type")):
            who = get_object(agent, "who")
            return verdict, get_str(who, "reference") if who else None
    return verdict, None


def standing_decision(
    focus: ResourceView,
    provenances: list[JSONObject],
    withdrawal: TaskView | None = None,
) -> StandingDecision | None:
    """The decision that stands for a decided or withdrawn proposal; ``None`` while it is
    pending. ``provenances`` are the service's own Provenances targeting the proposal (the
    first decision recorded wins); ``withdrawal`` is the service's version of the Task that
    withdrew it, if known (its ``statusReason`` says how)."""
    if proposal_status_after(focus.resource_type, focus.status, "approve") is not None:
        return None
    decided: list[tuple[str, Decision, str | None, JSONObject]] = []
    for provenance in provenances:
        targets = [get_str(t, "reference") for t in get_objects(provenance, "target")]
        verdict = _verdict(provenance)
        if focus.reference in targets and verdict is not None:
            decided.append((get_str(provenance, "recorded") or "", *verdict, provenance))
    decided.sort(key=lambda item: item[0])
    wanted: Decision = "approve" if focus.status in APPROVED_PROPOSAL_STATUSES else "reject"
    for recorded, verdict, who, provenance in decided:
        if verdict == wanted:
            reasons = [get_str(r, "text") for r in get_objects(provenance, "reason")]
            return StandingDecision(
                verdict, who, recorded or None, next((r for r in reasons if r), None)
            )
    if wanted == "approve":
        # Final without a recorded decision: the proposal's status is what stands.
        return StandingDecision("approve")
    code = withdrawal.status_reason_code if withdrawal is not None else None
    return StandingDecision("withdrawn", reason=_WITHDRAWAL_TEXT.get(code or "", "withdrawn"))


@dataclass(slots=True)
class ReviewPlan:
    outcome: ReviewOutcome
    decision: Decision | None = None
    decider: str | None = None
    writes: list[PlannedWrite] = field(default_factory=list[PlannedWrite])
    reasons: list[str] = field(default_factory=list[str])

    @property
    def carried_out(self) -> bool:
        """The status change took effect (or was an exact replay of one that did)."""
        return self.outcome in ("finalised", "retracted", "already_decided")


def bot_version_of(task: TaskView) -> str | None:
    for extension in get_objects(task.json, "extension"):
        if get_str(extension, "url") == BOT_VERSION_URL:
            return get_str(extension, "valueString")
    return None


def _ours(task: TaskView) -> bool:
    return task.identifier_value(TASK_SYSTEM) is not None and task.tagged(TAG_SYSTEM, TAG_CODE)


def why_not_allowed(actor: Actor, scope: DecisionScope) -> str | None:
    """Why this actor's status change cannot count as a clinician's decision, or ``None``."""
    if actor.on_behalf_of is not None:
        return (
            f"made on behalf of {actor.on_behalf_of} by {actor.reference or 'unknown'}; "
            "a decision must be made by the clinician themselves"
        )
    if actor.reference is None or not actor.reference.startswith("Practitioner/"):
        return f"not made by a clinician ({actor.reference or 'unknown'})"
    if not actor.is_clinician:
        return f"{actor.reference} is not an active clinician"
    if scope == "related" and actor.relation is None:
        return (
            f"{actor.reference} is not related to the patient (not the Task's owner, the "
            "patient's general practitioner or on an active care team of the patient)"
        )
    return None


def _describe(standing: StandingDecision) -> str:
    if standing.kind == "withdrawn":
        return f"this suggestion was {standing.reason or 'withdrawn'}"
    verb = "approved" if standing.kind == "approve" else "rejected"
    who = f" by {standing.decider}" if standing.decider else ""
    when = f" at {standing.recorded}" if standing.recorded else ""
    return f"this suggestion was already {verb}{who}{when}"


def own_write(task: TaskView, service: str) -> bool:
    """A Task version the service wrote as itself (a note, a put-back)."""
    return task.author == service and task.on_behalf_of is None


def needs_no_answer(task: TaskView, focus: JSONObject | None, service: str) -> bool:
    """The service's own version of a Task is not a decision to answer (its Subscription
    excludes them; a sweep or a redelivery may still bring one, and answering would need a
    write the service's policy refuses over its own version), unless it carries a decided
    status over a proposal still pending: the service never decides, so such a version is
    refused like any other (returned for review, a status the service may always write)."""
    if not own_write(task, service):
        return False
    if decision_of(task.status) is None or focus is None:
        return True
    view = ResourceView(focus)
    pending = (
        view.tagged(TAG_SYSTEM, TAG_CODE)
        and proposal_status_after(view.resource_type, view.status, "approve") is not None
    )
    return not pending


def plan_review(
    task: TaskView,
    *,
    actor: Actor,
    focus: JSONObject | None,
    now: datetime,
    scope: DecisionScope = "project",
    standing: StandingDecision | None = None,
    previous: TaskView | None = None,
) -> ReviewPlan:
    """The writes that answer the status change recorded in this Task version.

    ``standing`` is the decision that stands when the focus is a proposal that is no longer
    pending (see :func:`standing_decision`); ``previous`` is the Task version before this one,
    used to recognise a review Task whose identifier or tag was removed."""
    tampered = previous is not None and _ours(previous) and not _ours(task)
    if not _ours(task) and not tampered:
        return ReviewPlan("not_ours", reasons=["the Task is not a Starvit review Task"])
    decision = decision_of(task.status)
    decider = actor.reference
    view = ResourceView(focus) if focus is not None else None
    proposal = view is not None and view.tagged(TAG_SYSTEM, TAG_CODE)
    if not proposal:
        standing = None  # source data or unreadable focus: only the decision is recorded
    problem = why_not_allowed(actor, scope) if decision is not None else None
    if tampered:
        problem = "the Task's Starvit identifier or tag was removed"
    restore_from = previous if tampered else None

    if decision is None and not tampered:
        if standing is None:
            return ReviewPlan("no_decision", reasons=[f"status {task.status} is not a decision"])
        # A decided or withdrawn suggestion moved back to an open status.
        text = f"{_describe(standing)}; the status change to {task.status} has no effect"
        if standing.kind == "withdrawn":
            return ReviewPlan(
                "reopened",
                decider=decider,
                writes=[_put_back(task, standing, text, now, restore_from)],
                reasons=[text],
            )
        # The service's policy does not let it set `completed`/`rejected` over an open status
        # (that would let it decide), so the Task keeps the status and carries the answer, when
        # the policy lets the service write that status at all.
        writes = [_noted(task, text, now)] if task.status in SERVICE_TASK_STATUSES else []
        return ReviewPlan("reopened", decider=decider, writes=writes, reasons=[text])

    if problem is not None:
        text = f"The status change to {task.status} was refused: {problem}"
        if standing is not None:
            text += f"; {_describe(standing)}"
            write = _put_back(task, standing, text, now, restore_from)
        else:
            write = _returned_for_review(task, text, now, restore_from)
        return ReviewPlan(
            "refused", decision=decision, decider=decider, writes=[write], reasons=[text]
        )
    if decision is None or decider is None:  # unreachable: why_not_allowed checked both
        return ReviewPlan("no_decision", reasons=["no decision by a known author"])

    if standing is not None:
        if standing.kind == decision:
            status = view.status if view is not None else None
            # Re-delivered, or a second clinician agreeing: the first decision's Provenance
            # stands and the Task already agrees with the proposal.
            return ReviewPlan(
                "already_decided",
                decision=decision,
                decider=decider,
                reasons=[f"{_describe(standing)}; the proposal is already {status}"],
            )
        verb = "approval" if decision == "approve" else "rejection"
        if standing.kind == "withdrawn":
            text = f"{_describe(standing)} before your decision; nothing was changed"
            outcome: ReviewOutcome = "withdrawn_before_decision"
        else:
            text = f"{_describe(standing)}; this later {verb} by {decider} was not applied"
            outcome = "overruled"
        return ReviewPlan(
            outcome,
            decision=decision,
            decider=decider,
            writes=[_put_back(task, standing, text, now, None)],
            reasons=[text],
        )

    plan = ReviewPlan(
        "finalised" if decision == "approve" else "retracted", decision=decision, decider=decider
    )
    if actor.relation:
        plan.reasons.append(f"decided by {actor.relation}")
    if view is None or focus is None:
        plan.reasons.append("the Task's focus could not be read")
        plan.writes.append(_decision_provenance(task, decider, decision, None, now))
        return plan
    if not proposal:
        # A crisis alert focuses on the evidence itself: the decision is recorded, the
        # clinician's data is never rewritten.
        plan.reasons.append("the focus is source data; only the decision is recorded")
        plan.writes.append(_decision_provenance(task, decider, decision, None, now))
        return plan
    new_status = proposal_status_after(view.resource_type, view.status, decision)
    if new_status is None:
        # Not pending and no standing decision given: nothing is written again.
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


def plan_list_review(
    task: TaskView,
    *,
    actor: Actor,
    items: list[JSONObject],
    now: datetime,
    scope: DecisionScope = "project",
    previous: TaskView | None = None,
) -> ReviewPlan:
    """The clinician's one decision on the patient's results-review list
    (:mod:`app.botkit.review_list`): every listed result still pending is finalised (approve)
    or cancelled (reject), each with its own decision Provenance. Who may decide is checked
    exactly as for a single suggestion (:func:`plan_review`)."""
    first = plan_review(task, actor=actor, focus=None, now=now, scope=scope, previous=previous)
    if first.outcome not in ("finalised", "retracted") or first.decision is None:
        return first
    decision, decider = first.decision, first.decider
    if decider is None:  # unreachable: plan_review returned a decision by a known author
        return ReviewPlan("no_decision", reasons=["no decision by a known author"])
    pending = [
        ResourceView(item)
        for item in items
        if ResourceView(item).tagged(TAG_SYSTEM, TAG_CODE)
        and proposal_status_after(
            ResourceView(item).resource_type, ResourceView(item).status, decision
        )
        is not None
    ]
    if not pending:
        return ReviewPlan(
            "already_decided",
            decision=decision,
            decider=decider,
            reasons=["no listed result is pending; nothing was changed"],
        )
    verb = "finalised" if decision == "approve" else "cancelled"
    plan = ReviewPlan(
        first.outcome,
        decision=decision,
        decider=decider,
        reasons=[
            *[r for r in first.reasons if "focus" not in r],
            f"{len(pending)} listed result(s) {verb}",
        ],
    )
    reason = task.status_reason
    for view in sorted(pending, key=lambda v: v.reference):
        new_status = proposal_status_after(view.resource_type, view.status, decision)
        updated = strip_meta(view.json)
        updated["status"] = new_status
        if decision == "reject" and reason:
            notes = updated.get("note")
            note: JSONValue = {"text": f"Rejected by clinician: {reason}"}
            updated["note"] = [*(notes if isinstance(notes, list) else []), note]
        plan.writes.append(PlannedWrite("PUT", updated, if_match_version=view.version_id))
        plan.writes.append(_decision_provenance(task, decider, decision, view, now, per_item=True))
    return plan


def _with_note(resource: JSONObject, text: str, now: datetime) -> None:
    notes = resource.get("note")
    note: JSONValue = {"text": text, "time": now.isoformat()}
    resource["note"] = [*(notes if isinstance(notes, list) else []), note]


def _restored(task: TaskView, restore_from: TaskView | None) -> JSONObject:
    """The Task as the service writes it back: the notified version, with the service's
    identifier and tag put back if they were removed."""
    restored = strip_meta(task.json)
    if restore_from is not None:
        if not task.tagged(TAG_SYSTEM, TAG_CODE):
            meta = restored.get("meta")
            tags = meta.get("tag") if isinstance(meta, dict) else None
            restored["meta"] = {"tag": [*(tags if isinstance(tags, list) else []), tag()]}
        if task.identifier_value(TASK_SYSTEM) is None:
            identifiers = [
                i
                for i in get_objects(restore_from.json, "identifier")
                if get_str(i, "system") == TASK_SYSTEM
            ]
            existing = restored.get("identifier")
            restored["identifier"] = [
                *(existing if isinstance(existing, list) else []),
                *identifiers,
            ]
    return restored


def _returned_for_review(
    task: TaskView, text: str, now: datetime, restore_from: TaskView | None
) -> PlannedWrite:
    """A refused status change is undone: the Task goes back to ``requested`` so that it stays
    in the clinicians' list (and can still expire), guarded by the version that was refused."""
    restored = _restored(task, restore_from)
    restored["status"] = "requested"
    restored.pop("statusReason", None)
    restored["businessStatus"] = {"text": f"Returned for clinician review. {text}"}
    _with_note(restored, text, now)
    return PlannedWrite("PUT", restored, if_match_version=task.version_id)


def _put_back(
    task: TaskView,
    standing: StandingDecision,
    text: str,
    now: datetime,
    restore_from: TaskView | None,
) -> PlannedWrite:
    """The Task back to the status of the decision that stands, saying what stands and who
    decided it; guarded by the version being answered."""
    restored = _restored(task, restore_from)
    restored["status"] = STANDING_TASK_STATUS[standing.kind]
    if standing.kind == "approve":
        restored.pop("statusReason", None)
    elif standing.kind == "reject":
        if standing.reason:
            restored["statusReason"] = {"text": standing.reason}
        else:
            restored.pop("statusReason", None)
    restored["businessStatus"] = {"text": text[:1].upper() + text[1:]}
    _with_note(restored, text[:1].upper() + text[1:], now)
    return PlannedWrite("PUT", restored, if_match_version=task.version_id)


def _noted(task: TaskView, text: str, now: datetime) -> PlannedWrite:
    noted = strip_meta(task.json)
    noted["businessStatus"] = {"text": text[:1].upper() + text[1:]}
    _with_note(noted, text[:1].upper() + text[1:], now)
    return PlannedWrite("PUT", noted, if_match_version=task.version_id)


def _decision_provenance(
    task: TaskView,
    decider: str,
    decision: Decision,
    focus: ResourceView | None,
    now: datetime,
    *,
    per_item: bool = False,
) -> PlannedWrite:
    # One decision Provenance per Task version; for a results-review list one per item.
    parts = [task.reference, task.version_id, "decision"]
    if per_item and focus is not None:
        parts.append(focus.reference)
    key = digest(*parts)
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
            "text": APPROVED_ACTIVITY if decision == "approve" else REJECTED_ACTIVITY,
        },
        "reason": [{"text": task.status_reason}] if task.status_reason else [],
        "agent": agents,
        "entity": entities,
    }
    if not task.status_reason:
        del resource["reason"]
    return PlannedWrite("POST", resource, if_none_exist=f"_tag={PROVENANCE_SYSTEM}|{key}")
