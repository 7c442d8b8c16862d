"""Turn a bot's declarative effects into the writes for Medplum (pure).

Effects are grouped by *slot* (the kind of suggestion within a bot). Each slot's proposal, review
Task and Provenance refer to each other through ``urn:uuid`` full URLs and travel together; every
one is a conditional create on a deterministic identifier, so a replayed event writes nothing
new. A newer suggestion in the same slot supersedes the older pending Task of the same bot and
patient (cancelled with ``statusReason`` "superseded" and a link to its successor) and
withdraws its proposal, but only when its evidence is at least as recent by clinical time (the
evidence's effective time, recorded on the Task): results arrive late and out of order, and a
late older result must not bury a suggestion made from newer evidence. Such a result opens
nothing for the slot and is reported as a ``NoResult``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from app.botkit.declaration import (
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.botkit.identifiers import (
    EVIDENCE_TIME_URL,
    PROPOSAL_SYSTEM,
    PROVENANCE_SYSTEM,
    STATUS_REASON_SYSTEM,
    SUPERSEDED_BY_URL,
    TAG_CODE,
    TAG_SYSTEM,
    TASK_SYSTEM,
    digest,
    task_code,
    urn,
)
from app.botkit.resources import observation, provenance, request, task
from app.botkit.statuses import OPEN_TASK_STATUSES, proposal_status_after
from app.fhir.resource_json import JSONObject, JSONValue, get_objects, get_str
from app.fhir.views import ResourceView, TaskView, parse_datetime
from app.fhir.writes import PlannedWrite, strip_meta


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """The writes for one suggestion: proposals and Task and Provenance reference each other
    through ``urn:uuid`` full URLs, so they travel together."""

    slot: str
    writes: list[PlannedWrite]
    task_key: str


@dataclass(slots=True)
class WritePlan:
    slots: list[SlotPlan] = field(default_factory=list[SlotPlan])
    no_results: list[NoResult] = field(default_factory=list[NoResult])


def _without_extension(resource: JSONObject, url: str) -> list[JSONValue]:
    extensions = resource.get("extension")
    if not isinstance(extensions, list):
        return []
    return [e for e in extensions if not (isinstance(e, dict) and e.get("url") == url)]


def _status_reason(code: str, text: str) -> JSONObject:
    return {"coding": [{"system": STATUS_REASON_SYSTEM, "code": code}], "text": text}


def _supersede(
    task: TaskView, successor_key: str, focus: JSONObject | None, now: datetime
) -> list[PlannedWrite]:
    cancelled = dict(task.json)
    cancelled["status"] = "cancelled"
    cancelled["statusReason"] = _status_reason("superseded", "superseded")
    cancelled["businessStatus"] = {"text": "Superseded by a newer suggestion"}
    cancelled["lastModified"] = now.isoformat()
    extensions = _without_extension(task.json, SUPERSEDED_BY_URL)
    extensions.append(
        {
            "url": SUPERSEDED_BY_URL,
            "valueReference": {
                "type": "Task",
                "identifier": {"system": TASK_SYSTEM, "value": successor_key},
            },
        }
    )
    cancelled["extension"] = extensions
    writes = [PlannedWrite("PUT", strip_meta(cancelled), if_match_version=task.version_id)]
    if focus is not None:
        writes.extend(_withdraw_proposal(ResourceView(focus), "Superseded by a newer suggestion"))
    return writes


def withdraw_writes(
    tasks: list[TaskView],
    focus: dict[str, JSONObject],
    *,
    code: str,
    text: str,
    now: datetime,
) -> list[PlannedWrite]:
    """Cancel pending review Tasks and withdraw their pending proposals (``preliminary`` ->
    ``cancelled``, ``draft`` -> ``revoked``), keeping the reason. Resources already decided by
    a clinician are never touched: only the service's own pending work is withdrawn."""
    writes: list[PlannedWrite] = []
    for pending in tasks:
        if pending.status not in OPEN_TASK_STATUSES:
            continue
        cancelled = dict(pending.json)
        cancelled["status"] = "cancelled"
        cancelled["statusReason"] = _status_reason(code, text)
        cancelled["businessStatus"] = {"text": text}
        cancelled["lastModified"] = now.isoformat()
        writes.append(
            PlannedWrite("PUT", strip_meta(cancelled), if_match_version=pending.version_id)
        )
        target = focus.get(pending.focus or "")
        if target is not None:
            writes.extend(_withdraw_proposal(ResourceView(target), text))
    return writes


def _withdraw_proposal(view: ResourceView, reason: str) -> list[PlannedWrite]:
    if not view.tagged(TAG_SYSTEM, TAG_CODE):
        return []
    new_status = proposal_status_after(view.resource_type, view.status, "withdraw")
    if new_status is None:
        return []
    withdrawn = dict(view.json)
    withdrawn["status"] = new_status
    notes = withdrawn.get("note")
    withdrawn["note"] = [*(notes if isinstance(notes, list) else []), {"text": reason}]
    return [PlannedWrite("PUT", strip_meta(withdrawn), if_match_version=view.version_id)]


# NoResult outcome of a suggestion refused because a pending one rests on newer evidence.
OLDER_THAN_PENDING = "older_than_pending"


def task_evidence_time(task: TaskView) -> datetime | None:
    """The clinical time of the newest evidence of a pending Task (``EVIDENCE_TIME_URL``);
    None for a Task written without it."""
    for extension in get_objects(task.json, "extension"):
        if get_str(extension, "url") == EVIDENCE_TIME_URL:
            return parse_datetime(get_str(extension, "valueDateTime"))
    return None


def _newer_pending(candidates: list[TaskView], evidence_time: datetime | None) -> TaskView | None:
    """A pending Task of the slot whose evidence is more recent than ``evidence_time``.

    Without a time on either side nothing can be compared, and the newer suggestion wins as
    it always did (Tasks written before the time was recorded carry none)."""
    if evidence_time is None:
        return None
    for old in candidates:
        old_time = task_evidence_time(old)
        if old_time is not None and old_time > evidence_time:
            return old
    return None


def evidence_key(evidence: tuple[Evidence, ...]) -> str:
    return ",".join(sorted(e.versioned for e in evidence))


def _slot_key(
    declaration: BotDeclaration, patient: str, slot: str, evidence: tuple[Evidence, ...]
) -> str:
    return digest(declaration.name, declaration.version, patient, slot, evidence_key(evidence))


def plan_writes(
    *,
    declaration: BotDeclaration,
    event: BotEvent,
    effects: list[Effect],
    patient: str,
    pending_tasks: list[TaskView],
    now: datetime,
    due_days: int,
    pending_focus: Mapping[str, JSONObject] | None = None,
) -> WritePlan:
    """Group effects by slot and build the conditional writes for each."""
    plan = WritePlan()
    observations: dict[str, ProposeObservation] = {}
    requests: dict[str, ProposeRequest] = {}
    tasks: dict[str, OpenReviewTask] = {}
    for effect in effects:
        match effect:
            case ProposeObservation():
                observations[effect.slot] = effect
            case ProposeRequest():
                requests[effect.slot] = effect
            case OpenReviewTask():
                tasks[effect.slot] = effect
            case NoResult():
                plan.no_results.append(effect)
    for slot, review in tasks.items():
        evidence = review.evidence
        key = _slot_key(declaration, patient, slot, evidence)
        evidence_time = review.evidence_time
        if evidence_time is None and (proposed_obs := observations.get(slot)) is not None:
            evidence_time = proposed_obs.effective
        code = task_code(declaration.name, slot)
        same_slot = [
            old
            for old in pending_tasks
            if old.identifier_value(TASK_SYSTEM) != key
            and old.status in OPEN_TASK_STATUSES
            and any(c.get("code") == code for c in _task_codings(old))
        ]
        if evidence_time is not None and (newer := _newer_pending(same_slot, evidence_time)):
            plan.no_results.append(
                NoResult(
                    f"{slot}: evidence of {evidence_time.isoformat()} is older than the pending "
                    f"suggestion's evidence ({newer.reference}, evidence of "
                    f"{_iso(task_evidence_time(newer))}); the pending suggestion stands",
                    OLDER_THAN_PENDING,
                )
            )
            continue
        writes: list[PlannedWrite] = []
        targets: list[str] = []
        focus_url: str | None = None
        proposals: list[tuple[str, str, JSONObject]] = []
        if (proposed := observations.get(slot)) is not None:
            proposals.append((f"obs:{key}", key, observation(proposed, key, patient, declaration)))
        if (requested := requests.get(slot)) is not None:
            request_key = digest(key, "request")
            proposals.append(
                (f"req:{key}", request_key, request(requested, request_key, patient, now))
            )
        for url_key, identifier, resource in proposals:
            # The Task focuses on the last proposal of the slot (the request when there is one).
            focus_url = urn(url_key)
            writes.append(
                PlannedWrite(
                    "POST",
                    resource,
                    full_url=focus_url,
                    if_none_exist=f"identifier={PROPOSAL_SYSTEM}|{identifier}",
                )
            )
            targets.append(focus_url)
        task_url = urn(f"task:{key}")
        if focus_url is None:
            # A Task with nothing to approve but itself (a crisis alert): it focuses on the
            # notified evidence.
            focus_url = evidence[0].versioned if evidence else event.reference
        writes.append(
            PlannedWrite(
                "POST",
                task(
                    review,
                    key,
                    patient,
                    focus_url,
                    declaration,
                    now,
                    due_days,
                    evidence_time=evidence_time,
                ),
                full_url=task_url,
                if_none_exist=f"identifier={TASK_SYSTEM}|{key}",
            )
        )
        targets.append(task_url)
        provenance_key = digest(key, "provenance")
        writes.append(
            PlannedWrite(
                "POST",
                provenance(
                    provenance_key, targets, evidence, declaration, review.citation.url, now
                ),
                # Provenance has no identifier element: its key is a meta.tag, and `_tag` is
                # searchable on every resource type.
                if_none_exist=f"_tag={PROVENANCE_SYSTEM}|{provenance_key}",
            )
        )
        for old in same_slot:
            focus = (pending_focus or {}).get(old.focus or "")
            writes.extend(_supersede(old, key, focus, now))
        plan.slots.append(SlotPlan(slot=slot, writes=writes, task_key=key))
    return plan


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "unknown"


def _task_codings(task: TaskView) -> list[JSONObject]:
    code = task.json.get("code")
    if not isinstance(code, dict):
        return []
    codings = code.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []
