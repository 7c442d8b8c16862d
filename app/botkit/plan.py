"""Turn a bot's declarative effects into the writes for Medplum (pure).

Effects are grouped by *slot*: one protocol of a bot (``bmi.bmi``, ``egfr.ckd-referral``). The
clinician's worklist holds **one living suggestion per patient and protocol**:

* no open Task for the protocol: the proposal, review Task and Provenance are written together
  (``urn:uuid`` full URLs, conditional creates on deterministic identifiers, so a replayed event
  writes nothing new);
* an open Task for the protocol whose evidence is no newer (by clinical time, the evidence's
  effective time recorded on the Task): the Task and its pending proposal are **updated in
  place** (same resources, new content, a new Provenance), guarded by their versions;
* an open Task whose evidence is newer: nothing is written (a late older result never buries a
  newer suggestion), a ``NoResult`` says so;
* a ``Retract`` effect (the protocol's suggestion no longer holds on newer evidence) withdraws
  the open Task and its proposal with the reason.

Before anything opens: evidence older than the protocol's window opens nothing; a suggestion
whose order a clinician approved and which is still active is not repeated; a rejected one is
snoozed for the protocol's period unless the evidence is in a worse category. A protocol whose
result calls for no action (``SlotPolicy.actionable`` False) opens no Task of its own: its
proposal becomes an item of the patient's rolling results-review Task
(:mod:`app.botkit.review_list`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from app.botkit.declaration import (
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
    Retract,
)
from app.botkit.identifiers import (
    EVIDENCE_TIME_URL,
    IDENTIFIER_BASE,
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
from app.botkit.review_list import (
    RESULTS_REVIEW_CODE,
    ListItem,
    list_items,
    review_list_task,
)
from app.botkit.statuses import APPROVING, OPEN_TASK_STATUSES, REJECTING, proposal_status_after
from app.fhir.resource_json import JSONObject, JSONValue, get_objects, get_str
from app.fhir.views import ResourceView, TaskView, parse_datetime
from app.fhir.writes import PlannedWrite, strip_meta

type SlotAction = Literal["created", "updated", "listed", "withdrawn"]


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """The writes for one suggestion: proposals and Task and Provenance reference each other
    through ``urn:uuid`` full URLs, so they travel together. ``action``: a Task created, a
    Task updated in place, an item put on the results-review list, or Tasks withdrawn."""

    slot: str
    writes: list[PlannedWrite]
    task_key: str
    action: SlotAction = "created"
    urgent: bool = False
    withdrawn: tuple[str, ...] = ()
    listed: tuple[str, ...] = ()


@dataclass(slots=True)
class WritePlan:
    slots: list[SlotPlan] = field(default_factory=list[SlotPlan])
    no_results: list[NoResult] = field(default_factory=list[NoResult])
    # Slots whose suggestion already stands exactly as computed (a replay): nothing to write.
    unchanged: list[str] = field(default_factory=list[str])


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


# NoResult outcomes of the planning rules (recorded in the AuditEvent).
OUTSIDE_WINDOW = "outside_window"
PATIENT_DECEASED = "patient_deceased"  # the bots' NoResult outcome for a deceased patient
ALREADY_ORDERED = "already_ordered"
SNOOZED = "snoozed"
# Status reasons the service itself writes on the Tasks it withdraws (a clinician's rejection
# carries none of these).
SERVICE_WITHDRAWALS = frozenset(
    {"superseded", "expired", "evidence-withdrawn", "no-longer-supported", "patient-deceased"}
)
# On a review Task: the rank of its evidence's category within the protocol (higher is worse).
SEVERITY_URL = f"{IDENTIFIER_BASE}/StructureDefinition/severity"


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The configurable parts of planning (``app.settings``): routine due days, the due time of
    an urgent suggestion in hours, and per-protocol snooze overrides (``"<bot>.<slot>"`` ->
    days)."""

    due_days: int = 7
    urgent_due_hours: int = 4
    snooze_days: Mapping[str, int] = field(default_factory=dict[str, int])


def identifier_values(resource: JSONObject, system: str) -> list[str]:
    """Every value of ``system`` a resource carries: a suggestion updated in place keeps the
    keys of every content it held, so a replay of any of them is recognised."""
    return [
        get_str(i, "value") or ""
        for i in get_objects(resource, "identifier")
        if get_str(i, "system") == system
    ]


def _add_identifier(resource: JSONObject, previous: JSONObject, system: str, value: str) -> None:
    kept = list(get_objects(previous, "identifier"))
    values = identifier_values(previous, system)
    if value not in values:
        kept.append({"system": system, "value": value})
    resource["identifier"] = list[JSONValue](kept)


def _codes(task: TaskView) -> set[str]:
    return {get_str(c, "code") or "" for c in _task_codings(task)}


def task_severity(task: TaskView) -> int:
    for extension in get_objects(task.json, "extension"):
        if get_str(extension, "url") == SEVERITY_URL:
            value = extension.get("valueInteger")
            return value if isinstance(value, int) else 0
    return 0


def _decided_at(task: TaskView) -> datetime | None:
    return task.last_updated or parse_datetime(get_str(task.json, "lastModified"))


def _decided_block(
    code: str,
    review: OpenReviewTask,
    decided: list[TaskView],
    focus: Mapping[str, JSONObject],
    *,
    snooze: timedelta,
    now: datetime,
) -> NoResult | None:
    """Why a clinician's earlier decision on the protocol keeps this suggestion from opening."""
    for old in sorted(decided, key=lambda t: _decided_at(t) or now, reverse=True):
        if code not in _codes(old):
            continue
        if old.status in APPROVING:
            order = focus.get(old.focus or "")
            order_view = ResourceView(order) if order is not None else None
            if (
                order_view is not None
                and order_view.resource_type in ("ServiceRequest", "CarePlan")
                and order_view.status == "active"
            ):
                return NoResult(
                    f"{review.slot}: the suggestion approved in {old.reference} is still "
                    f"active ({order_view.reference}); not repeated",
                    ALREADY_ORDERED,
                )
        elif old.status in REJECTING and old.status_reason_code not in SERVICE_WITHDRAWALS:
            at = _decided_at(old)
            if at is None or now >= at + snooze or review.severity > task_severity(old):
                continue
            reason = old.status_reason or "no reason given"
            return NoResult(
                f"{review.slot}: rejected by a clinician in {old.reference} on "
                f"{at.date().isoformat()} ({reason}); snoozed until "
                f"{(at + snooze).date().isoformat()} unless the evidence gets worse",
                SNOOZED,
            )
    return None


def _due(review: OpenReviewTask, resource: JSONObject, now: datetime, settings: PlanSettings):
    if review.priority == "urgent":
        resource["restriction"] = {
            "period": {"end": (now + timedelta(hours=settings.urgent_due_hours)).isoformat()}
        }
    extensions = resource.get("extension")
    extensions = extensions if isinstance(extensions, list) else []
    extensions.append({"url": SEVERITY_URL, "valueInteger": review.severity})
    resource["extension"] = extensions


@dataclass(frozen=True, slots=True)
class _Slot:
    review: OpenReviewTask
    observation: ProposeObservation | None
    request: ProposeRequest | None
    key: str
    code: str
    evidence_time: datetime | None


def plan_writes(
    *,
    declaration: BotDeclaration,
    event: BotEvent,
    effects: list[Effect],
    patient: str,
    pending_tasks: list[TaskView],
    now: datetime,
    due_days: int | None = None,
    pending_focus: Mapping[str, JSONObject] | None = None,
    decided_tasks: list[TaskView] | None = None,
    review_list: TaskView | None = None,
    pending_items: Mapping[str, JSONObject] | None = None,
    settings: PlanSettings | None = None,
) -> WritePlan:
    """Group effects by slot and build the writes for each (see the module docstring).

    ``pending_tasks``: the bot's open review Tasks of the patient; ``pending_focus``: their
    focus resources (and those of ``decided_tasks``) by reference; ``decided_tasks``: the
    bot's recently decided Tasks of the patient; ``review_list``: the patient's open
    results-review Task; ``pending_items``: the pending proposals it lists, by reference."""
    config = settings or PlanSettings(due_days=due_days or 7)
    if due_days is not None and settings is None:
        config = PlanSettings(due_days=due_days)
    focus_map = dict(pending_focus or {})
    items_map = dict(pending_items or {})
    plan = WritePlan()
    observations: dict[str, ProposeObservation] = {}
    requests: dict[str, ProposeRequest] = {}
    tasks: dict[str, OpenReviewTask] = {}
    retracts: dict[str, Retract] = {}
    for effect in effects:
        match effect:
            case ProposeObservation():
                observations[effect.slot] = effect
            case ProposeRequest():
                requests[effect.slot] = effect
            case OpenReviewTask():
                tasks[effect.slot] = effect
            case Retract():
                retracts[effect.slot] = effect
            case NoResult():
                plan.no_results.append(effect)
    listing = _Listing(review_list, items_map, patient, now, config.due_days)
    if any(n.outcome == PATIENT_DECEASED for n in plan.no_results):
        # No new suggestion for a deceased patient, and the pending ones are withdrawn.
        open_tasks = [t for t in pending_tasks if t.status in OPEN_TASK_STATUSES]
        if review_list is not None and review_list.status in OPEN_TASK_STATUSES:
            open_tasks.append(review_list)
        if open_tasks:
            plan.slots.append(
                SlotPlan(
                    "deceased",
                    [
                        *withdraw_writes(
                            open_tasks,
                            {**items_map, **focus_map},
                            code="patient-deceased",
                            text="Withdrawn: the patient is recorded as deceased",
                            now=now,
                        ),
                        *(
                            w
                            for item in (list_items(review_list) if review_list else [])
                            if (listed := items_map.get(item.reference)) is not None
                            for w in _withdraw_proposal(
                                ResourceView(listed),
                                "Withdrawn: the patient is recorded as deceased",
                            )
                        ),
                    ],
                    digest(patient, "deceased", *(t.reference for t in open_tasks)),
                    "withdrawn",
                    withdrawn=tuple(t.reference for t in open_tasks),
                )
            )
        return plan
    for slot, review in tasks.items():
        key = _slot_key(declaration, patient, slot, review.evidence)
        evidence_time = review.evidence_time
        if evidence_time is None and (proposed_obs := observations.get(slot)) is not None:
            evidence_time = proposed_obs.effective
        info = _Slot(
            review,
            observations.get(slot),
            requests.get(slot),
            key,
            task_code(declaration.name, slot),
            evidence_time,
        )
        policy = declaration.policy(slot)
        if (
            policy.window is not None
            and evidence_time is not None
            and now - evidence_time > policy.window
        ):
            plan.no_results.append(
                NoResult(
                    f"{slot}: evidence of {evidence_time.date().isoformat()} is older than the "
                    f"protocol's window of {policy.window.days} days; nothing is opened",
                    OUTSIDE_WINDOW,
                )
            )
            continue
        if not policy.actionable:
            listing.add(info, declaration, plan)
            continue
        open_tasks = [
            old
            for old in pending_tasks
            if old.status in OPEN_TASK_STATUSES and info.code in _codes(old)
        ]
        if any(
            key in identifier_values(old.json, TASK_SYSTEM)
            for old in [*pending_tasks, *(decided_tasks or [])]
        ):
            # This exact suggestion stands, or was decided or withdrawn already: a replay.
            plan.unchanged.append(slot)
            continue
        if evidence_time is not None and (newer := _newer_pending(open_tasks, evidence_time)):
            plan.no_results.append(
                NoResult(
                    f"{slot}: evidence of {evidence_time.isoformat()} is older than the pending "
                    f"suggestion's evidence ({newer.reference}, evidence of "
                    f"{_iso(task_evidence_time(newer))}); the pending suggestion stands",
                    OLDER_THAN_PENDING,
                )
            )
            continue
        snooze = timedelta(days=config.snooze_days.get(info.code, policy.snooze.days))
        blocked = _decided_block(
            info.code, review, decided_tasks or [], focus_map, snooze=snooze, now=now
        )
        if blocked is not None:
            plan.no_results.append(blocked)
            continue
        if open_tasks:
            newest = max(open_tasks, key=lambda t: task_evidence_time(t) or now)
            known = {**items_map, **focus_map}
            writes = _update_in_place(info, newest, declaration, patient, event, now, known, config)
            for old in open_tasks:
                if old is not newest:
                    writes.extend(_supersede(old, key, focus_map.get(old.focus or ""), now))
            plan.slots.append(
                SlotPlan(slot, writes, key, "updated", urgent=review.priority == "urgent")
            )
            continue
        writes = _create(info, declaration, patient, event, now=now, config=config)
        plan.slots.append(
            SlotPlan(slot, writes, key, "created", urgent=review.priority == "urgent")
        )
    for slot, retract in retracts.items():
        if slot in tasks:
            continue
        code = task_code(declaration.name, slot)
        if not declaration.policy(slot).actionable:
            listing.remove(code, retract, plan)
            continue
        stale = [
            old
            for old in pending_tasks
            if old.status in OPEN_TASK_STATUSES
            and code in _codes(old)
            and (task_evidence_time(old) or retract.evidence_time) <= retract.evidence_time
        ]
        if stale:
            writes = withdraw_writes(
                stale, focus_map, code="no-longer-supported", text=retract.reason, now=now
            )
            plan.slots.append(
                SlotPlan(
                    slot,
                    writes,
                    digest(code, *(t.reference for t in stale), "withdrawn"),
                    "withdrawn",
                    withdrawn=tuple(t.reference for t in stale),
                )
            )
    listing.finish(plan)
    return plan


def _proposals(info: _Slot, patient: str, declaration: BotDeclaration, now: datetime):
    proposals: list[tuple[str, str, JSONObject]] = []
    if info.observation is not None:
        proposals.append(
            (
                f"obs:{info.key}",
                info.key,
                observation(info.observation, info.key, patient, declaration),
            )
        )
    if info.request is not None:
        request_key = digest(info.key, "request")
        proposals.append(
            (f"req:{info.key}", request_key, request(info.request, request_key, patient, now))
        )
    return proposals


def _task_json(
    info: _Slot,
    focus_ref: str,
    declaration: BotDeclaration,
    patient: str,
    *,
    now: datetime,
    config: PlanSettings,
) -> JSONObject:
    resource = task(
        info.review,
        info.key,
        patient,
        focus_ref,
        declaration,
        now,
        config.due_days,
        evidence_time=info.evidence_time,
    )
    _due(info.review, resource, now, config)
    return resource


def _provenance_write(
    info: _Slot, targets: list[str], declaration: BotDeclaration, now: datetime
) -> PlannedWrite:
    provenance_key = digest(info.key, "provenance")
    return PlannedWrite(
        "POST",
        provenance(
            provenance_key,
            targets,
            info.review.evidence,
            declaration,
            info.review.citation.url,
            now,
        ),
        # Provenance has no identifier element: its key is a meta.tag, and `_tag` is
        # searchable on every resource type.
        if_none_exist=f"_tag={PROVENANCE_SYSTEM}|{provenance_key}",
    )


def _create(
    info: _Slot,
    declaration: BotDeclaration,
    patient: str,
    event: BotEvent,
    *,
    now: datetime,
    config: PlanSettings,
) -> list[PlannedWrite]:
    writes: list[PlannedWrite] = []
    targets: list[str] = []
    focus_url: str | None = None
    for url_key, identifier, resource in _proposals(info, patient, declaration, now):
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
    if focus_url is None:
        # A Task with nothing to approve but itself (a crisis alert): it focuses on the
        # notified evidence.
        evidence = info.review.evidence
        focus_url = evidence[0].versioned if evidence else event.reference
    task_url = urn(f"task:{info.key}")
    task_json = _with_proposal_inputs(
        _task_json(info, focus_url, declaration, patient, now=now, config=config), targets[:-1]
    )
    writes.append(
        PlannedWrite(
            "POST",
            task_json,
            full_url=task_url,
            if_none_exist=f"identifier={TASK_SYSTEM}|{info.key}",
        )
    )
    targets.append(task_url)
    writes.append(_provenance_write(info, targets, declaration, now))
    return writes


PROPOSAL_INPUT = "proposal"


def _task_proposals(task: TaskView) -> list[str]:
    """The proposals a review Task was written for (its focus and its ``proposal`` inputs)."""
    refs = [task.focus] if task.focus else []
    for entry in get_objects(task.json, "input"):
        kind = entry.get("type")
        value = entry.get("valueReference")
        if (
            isinstance(kind, dict)
            and kind.get("text") == PROPOSAL_INPUT
            and isinstance(value, dict)
        ):
            ref = get_str(value, "reference")
            if ref and ref not in refs:
                refs.append(ref)
    return refs


def _with_proposal_inputs(resource: JSONObject, proposals: list[str]) -> JSONObject:
    inputs = resource.get("input")
    listed: list[JSONValue] = [
        {"type": {"text": PROPOSAL_INPUT}, "valueReference": {"reference": ref}}
        for ref in proposals
    ]
    resource["input"] = [*(inputs if isinstance(inputs, list) else []), *listed]
    return resource


def _update_in_place(  # noqa: PLR0917 - internal step of plan_writes
    info: _Slot,
    old: TaskView,
    declaration: BotDeclaration,
    patient: str,
    event: BotEvent,
    now: datetime,
    known: Mapping[str, JSONObject],
    config: PlanSettings,
) -> list[PlannedWrite]:
    """The open Task of the protocol rewritten for newer evidence, its pending proposals too
    (the same resource for the same kind), and a Provenance for the new content. Pending
    proposals the new suggestion has no use for are withdrawn. The rewritten Task and
    proposals keep their earlier identifiers and gain the new ones, so a replay of any earlier
    content finds them instead of writing anew."""
    writes: list[PlannedWrite] = []
    targets: list[str] = []
    pending: list[ResourceView] = []
    for ref in _task_proposals(old):
        resource = known.get(ref)
        if resource is None:
            continue
        view = ResourceView(resource)
        if view.tagged(TAG_SYSTEM, TAG_CODE) and (
            proposal_status_after(view.resource_type, view.status, "withdraw") is not None
        ):
            pending.append(view)
    focus_ref: str | None = None
    for url_key, identifier, resource in _proposals(info, patient, declaration, now):
        same_kind = next(
            (v for v in pending if v.resource_type == resource.get("resourceType")), None
        )
        if same_kind is not None:
            pending.remove(same_kind)
            updated = {**resource, "id": same_kind.id}
            _add_identifier(updated, same_kind.json, PROPOSAL_SYSTEM, identifier)
            writes.append(PlannedWrite("PUT", updated, if_match_version=same_kind.version_id))
            focus_ref = same_kind.reference
        else:
            focus_ref = urn(url_key)
            writes.append(
                PlannedWrite(
                    "POST",
                    resource,
                    full_url=focus_ref,
                    if_none_exist=f"identifier={PROPOSAL_SYSTEM}|{identifier}",
                )
            )
        targets.append(focus_ref)
    for leftover in pending:
        writes.extend(_withdraw_proposal(leftover, "Replaced by a suggestion on newer evidence"))
    proposals = list(targets)
    if focus_ref is None:
        evidence = info.review.evidence
        focus_ref = evidence[0].versioned if evidence else event.reference
    updated_task = _task_json(info, focus_ref, declaration, patient, now=now, config=config)
    _with_proposal_inputs(updated_task, proposals[:-1])
    updated_task["id"] = old.id
    _add_identifier(updated_task, old.json, TASK_SYSTEM, info.key)
    updated_task["lastModified"] = now.isoformat()
    updated_task["businessStatus"] = {
        "text": "Awaiting clinician review (updated in place for newer evidence)"
    }
    writes.append(PlannedWrite("PUT", updated_task, if_match_version=old.version_id))
    targets.append(old.reference)
    writes.append(_provenance_write(info, targets, declaration, now))
    return writes


class _Listing:
    """The changes to the patient's rolling results-review Task gathered over one plan."""

    def __init__(
        self,
        existing: TaskView | None,
        items_map: dict[str, JSONObject],
        patient: str,
        now: datetime,
        due_days: int,
    ) -> None:
        self.existing = existing if existing and existing.status in OPEN_TASK_STATUSES else None
        self.items = list_items(self.existing) if self.existing is not None else []
        self.items_map = items_map
        self.patient = patient
        self.now = now
        self.due_days = due_days
        self.writes: list[PlannedWrite] = []
        self.changed = False
        self.first_key: str | None = None
        self.slots: list[SlotPlan] = []

    def add(self, info: _Slot, declaration: BotDeclaration, plan: WritePlan) -> None:
        current = next((i for i in self.items if i.code == info.code), None)
        if info.observation is None:
            plan.no_results.append(
                NoResult(f"{info.review.slot}: nothing to list", "not_applicable")
            )
            return
        display = f"{info.review.title} ({_day(info.evidence_time)})"
        resource = observation(info.observation, info.key, self.patient, declaration)
        previous = self.items_map.get(current.reference) if current is not None else None
        if previous is not None:
            prior = ResourceView(previous)
            if info.key in identifier_values(previous, PROPOSAL_SYSTEM):
                plan.unchanged.append(info.review.slot)
                return
            prior_time = parse_datetime(get_str(previous, "effectiveDateTime"))
            if (
                info.evidence_time is not None
                and prior_time is not None
                and prior_time > info.evidence_time
            ):
                plan.no_results.append(
                    NoResult(
                        f"{info.review.slot}: evidence of {info.evidence_time.isoformat()} is "
                        f"older than the listed result's ({prior.reference}); it stands",
                        OLDER_THAN_PENDING,
                    )
                )
                return
            replaced = {**resource, "id": prior.id}
            _add_identifier(replaced, previous, PROPOSAL_SYSTEM, info.key)
            writes = [PlannedWrite("PUT", replaced, if_match_version=prior.version_id)]
            reference = prior.reference
            action = "updated"
        else:
            reference = urn(f"obs:{info.key}")
            writes = [
                PlannedWrite(
                    "POST",
                    resource,
                    full_url=reference,
                    if_none_exist=f"identifier={PROPOSAL_SYSTEM}|{info.key}",
                )
            ]
            action = "listed"
        self.items = [i for i in self.items if i.code != info.code]
        self.items.append(ListItem(info.code, reference, display))
        self.first_key = self.first_key or info.key
        self.changed = True
        writes.append(_provenance_write(info, [reference, self._task_ref()], declaration, self.now))
        self.writes.extend(writes)
        self.slots.append(SlotPlan(info.review.slot, [], info.key, action))

    def remove(self, code: str, retract: Retract, plan: WritePlan) -> None:
        del plan
        current = next((i for i in self.items if i.code == code), None)
        previous = self.items_map.get(current.reference) if current is not None else None
        if current is None or previous is None:
            return
        prior_time = parse_datetime(get_str(previous, "effectiveDateTime"))
        if prior_time is not None and prior_time > retract.evidence_time:
            return
        self.items = [i for i in self.items if i.code != code]
        self.writes.extend(_withdraw_proposal(ResourceView(previous), retract.reason))
        self.changed = True

    def _task_ref(self) -> str:
        if self.existing is not None:
            return self.existing.reference
        return urn(f"review-list:{self.patient}:{self.first_key}")

    def finish(self, plan: WritePlan) -> None:
        if not self.changed:
            return
        if self.existing is not None and not self.items:
            writes = withdraw_writes(
                [self.existing],
                {},
                code="no-longer-supported",
                text="No result left to review",
                now=self.now,
            )
            task_write = writes
        else:
            key = (
                self.existing.identifier_value(TASK_SYSTEM) or ""
                if self.existing is not None
                else digest("results-review", self.patient, self.first_key or "")
            )
            resource = review_list_task(
                key=key,
                patient=self.patient,
                items=self.items,
                now=self.now,
                due_days=self.due_days,
                existing=self.existing,
            )
            if self.existing is not None:
                task_write = [
                    PlannedWrite("PUT", resource, if_match_version=self.existing.version_id)
                ]
            else:
                task_write = [
                    PlannedWrite(
                        "POST",
                        resource,
                        full_url=self._task_ref(),
                        if_none_exist=f"identifier={TASK_SYSTEM}|{key}",
                    )
                ]
        # The list Task first: its version guard keeps a concurrent decision from being
        # overwritten (a decided list fails the guard and the whole group with it).
        writes = [*task_write, *self.writes]
        list_key = self.slots[0].task_key if self.slots else digest(self.patient, "list")
        plan.slots.append(
            SlotPlan(
                self.slots[0].slot if self.slots else RESULTS_REVIEW_CODE,
                writes,
                list_key,
                self.slots[0].action if self.slots else "withdrawn",
                listed=tuple(s.slot for s in self.slots),
            )
        )


def _day(moment: datetime | None) -> str:
    return moment.date().isoformat() if moment is not None else "date unknown"


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "unknown"


def _task_codings(task: TaskView) -> list[JSONObject]:
    code = task.json.get("code")
    if not isinstance(code, dict):
        return []
    codings = code.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def withdraw_listed(
    review_list: TaskView | None,
    items: Mapping[str, JSONObject],
    evidence: str,
    *,
    bot: str,
    text: str,
    now: datetime,
) -> list[PlannedWrite]:
    """Remove from the results-review list the bot's pending items derived from ``evidence``
    (deleted or entered in error) and withdraw them; the list is cancelled when nothing is
    left. Guarded by the list's version."""
    if review_list is None or review_list.status not in OPEN_TASK_STATUSES:
        return []
    prefix = f"{evidence}/_history/"
    keep: list[ListItem] = []
    withdrawn: list[PlannedWrite] = []
    for item in list_items(review_list):
        resource = items.get(item.reference)
        derived = (
            resource is not None
            and item.code.startswith(f"{bot}.")
            and any(
                (ref := get_str(d, "reference")) is not None
                and (ref == evidence or ref.startswith(prefix))
                for d in get_objects(resource, "derivedFrom")
            )
        )
        if resource is not None and derived:
            withdrawn.extend(_withdraw_proposal(ResourceView(resource), text))
        else:
            keep.append(item)
    if not withdrawn:
        return []
    if not keep:
        task_writes = withdraw_writes(
            [review_list], {}, code="evidence-withdrawn", text=text, now=now
        )
    else:
        resource = review_list_task(
            key=review_list.identifier_value(TASK_SYSTEM) or "",
            patient=review_list.patient or "",
            items=keep,
            now=now,
            due_days=7,
            existing=review_list,
        )
        resource["restriction"] = review_list.json.get("restriction", resource["restriction"])
        task_writes = [PlannedWrite("PUT", resource, if_match_version=review_list.version_id)]
    return [*task_writes, *withdrawn]
