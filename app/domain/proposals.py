"""Turn a bot's declarative effects into the FHIR resources written to Medplum (pure).

Everything the service writes is *pending*: a ``preliminary`` Observation, a ``draft`` request
with intent ``proposal``, a review ``Task`` (status ``requested``, intent ``proposal``) and a
``Provenance``, plus one ``AuditEvent`` per processed event recording inputs, outputs and the
bot version. Nothing here can produce ``final`` or ``active``: only :mod:`app.domain.review`
does, and only from a clinician's decision.

Identifiers are deterministic (bot, version, patient, slot, evidence versions), and every write
is a conditional create on them, so a replayed or re-delivered event writes nothing new. A
newer suggestion in the same slot supersedes the older pending Task of the same bot and patient
(cancelled with ``statusReason`` "superseded" and a link to its successor) and withdraws its
proposal.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from app.domain.bot import (
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.domain.fhir_json import JSONObject, JSONValue
from app.domain.fhir_views import LOINC, SNOMED, UCUM, ResourceView, TaskView

NAMESPACE = "https://fhir.starvit.health"
PROPOSAL_SYSTEM = f"{NAMESPACE}/sid/proposal"  # Observation / ServiceRequest / CarePlan
TASK_SYSTEM = f"{NAMESPACE}/sid/review-task"
PROVENANCE_SYSTEM = f"{NAMESPACE}/sid/provenance"
BOT_DEVICE_SYSTEM = f"{NAMESPACE}/sid/bot"
TASK_CODE_SYSTEM = f"{NAMESPACE}/CodeSystem/review-task"
STATUS_REASON_SYSTEM = f"{NAMESPACE}/CodeSystem/status-reason"
SUPERSEDED_BY_URL = f"{NAMESPACE}/StructureDefinition/superseded-by"
BOT_VERSION_URL = f"{NAMESPACE}/StructureDefinition/bot-version"
TAG_SYSTEM = f"{NAMESPACE}/CodeSystem/tags"
TAG_CODE = "starvit-generated"
RUN_SYSTEM = f"{NAMESPACE}/sid/run"
UUID_NAMESPACE = uuid.UUID("9f0c3a55-8e1e-4a33-9a57-3e3f0e0c7a10")

# SNOMED CT 158965000 "Medical practitioner" (the provider app's "Doctor" performer type).
DOCTOR: JSONObject = {"system": SNOMED, "code": "158965000", "display": "Medical practitioner"}
OPEN_TASK_STATUSES = ("requested", "ready", "received", "draft")


def tag() -> JSONObject:
    return {"system": TAG_SYSTEM, "code": TAG_CODE}


def task_code(bot: str, slot: str) -> str:
    return f"{bot}.{slot}"


def bot_device_reference(declaration: BotDeclaration) -> JSONObject:
    """A logical reference to the bot's Device (created by ``starvit subscriptions sync``)."""
    return {
        "type": "Device",
        "identifier": {
            "system": BOT_DEVICE_SYSTEM,
            "value": f"{declaration.name}@{declaration.version}",
        },
        "display": f"Starvit bot {declaration.name} {declaration.version}",
    }


def bot_device(declaration: BotDeclaration) -> JSONObject:
    return {
        "resourceType": "Device",
        "identifier": [
            {"system": BOT_DEVICE_SYSTEM, "value": f"{declaration.name}@{declaration.version}"}
        ],
        "status": "active",
        "deviceName": [{"name": f"Starvit bot {declaration.name}", "type": "model-name"}],
        "version": [{"value": declaration.version}],
        "meta": {"tag": [tag()]},
    }


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def urn(key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(UUID_NAMESPACE, key)}"


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    method: Literal["POST", "PUT"]
    resource: JSONObject
    full_url: str | None = None
    if_none_exist: str | None = None  # conditional create
    if_match_version: str | None = None  # guarded update (PUT)


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
    audit: PlannedWrite | None = None
    no_results: list[NoResult] = field(default_factory=list[NoResult])
    superseded: int = 0

    @property
    def empty(self) -> bool:
        return not self.slots


def _refs(evidence: tuple[Evidence, ...]) -> list[JSONValue]:
    return [{"reference": e.versioned} for e in evidence]


def _evidence_inputs(evidence: tuple[Evidence, ...]) -> list[JSONValue]:
    return [
        {"type": {"text": "evidence"}, "valueReference": {"reference": e.versioned}}
        for e in evidence
    ]


def _evidence_key(evidence: tuple[Evidence, ...]) -> str:
    return ",".join(sorted(e.versioned for e in evidence))


def _observation(
    effect: ProposeObservation, key: str, patient: str, declaration: BotDeclaration
) -> JSONObject:
    category = "vital-signs" if effect.loinc in ("39156-5", "85354-9") else "laboratory"
    resource: JSONObject = {
        "resourceType": "Observation",
        "meta": {"tag": [tag()]},
        "identifier": [{"system": PROPOSAL_SYSTEM, "value": key}],
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": effect.loinc, "display": effect.display}]},
        "subject": {"reference": patient},
        "effectiveDateTime": effect.effective.isoformat(),
        "derivedFrom": _refs(effect.evidence),
        "device": bot_device_reference(declaration),
    }
    if effect.value is not None:
        resource["valueQuantity"] = {
            "value": effect.value,
            "unit": effect.unit,
            "system": UCUM,
            "code": effect.unit,
        }
    if effect.components:
        resource["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": c.loinc, "display": c.display}]},
                "valueQuantity": {"value": c.value, "unit": c.unit, "system": UCUM, "code": c.unit},
            }
            for c in effect.components
        ]
    if effect.category:
        resource["interpretation"] = [{"text": effect.category}]
    return resource


def _request(effect: ProposeRequest, key: str, patient: str, now: datetime) -> JSONObject:
    coding: JSONObject = {
        "system": effect.code_system,
        "code": effect.code,
        "display": effect.display,
    }
    if effect.kind == "CarePlan":
        return {
            "resourceType": "CarePlan",
            "meta": {"tag": [tag()]},
            "identifier": [{"system": PROPOSAL_SYSTEM, "value": key}],
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [coding]}],
            "title": effect.display,
            "subject": {"reference": patient},
            "created": now.isoformat(),
            "supportingInfo": _refs(effect.evidence),
        }
    return {
        "resourceType": "ServiceRequest",
        "meta": {"tag": [tag()]},
        "identifier": [{"system": PROPOSAL_SYSTEM, "value": key}],
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [coding], "text": effect.display},
        "subject": {"reference": patient},
        "authoredOn": now.isoformat(),
        "reasonReference": _refs(effect.evidence),
    }


def _task(  # noqa: PLR0917 - internal builder, called once
    effect: OpenReviewTask,
    key: str,
    patient: str,
    focus_url: str,
    declaration: BotDeclaration,
    now: datetime,
    due_days: int,
) -> JSONObject:
    return {
        "resourceType": "Task",
        "meta": {"tag": [tag()]},
        "extension": [
            {"url": BOT_VERSION_URL, "valueString": f"{declaration.name}@{declaration.version}"}
        ],
        "identifier": [{"system": TASK_SYSTEM, "value": key}],
        "status": "requested",
        "businessStatus": {"text": "Awaiting clinician review"},
        "intent": "proposal",
        "priority": effect.priority,
        "code": {
            "coding": [
                {
                    "system": TASK_CODE_SYSTEM,
                    "code": task_code(declaration.name, effect.slot),
                    "display": declaration.title,
                }
            ],
            "text": effect.title[:139],
        },
        "description": effect.rationale,
        "for": {"reference": patient},
        "focus": {"reference": focus_url},
        **(
            {"reasonReference": {"reference": effect.evidence[0].versioned}}
            if effect.evidence
            else {}
        ),
        "input": [
            *_evidence_inputs(effect.evidence),
            {
                "type": {"text": "guideline"},
                "valueString": f"{effect.citation.title}. {effect.citation.source}",
            },
        ],
        "authoredOn": now.isoformat(),
        "requester": bot_device_reference(declaration),
        "performerType": [{"coding": [DOCTOR], "text": "Doctor"}],
        "restriction": {"period": {"end": (now + timedelta(days=due_days)).isoformat()}},
    }


def _provenance(  # noqa: PLR0917 - internal builder, called once
    key: str,
    targets: list[str],
    evidence: tuple[Evidence, ...],
    declaration: BotDeclaration,
    policy: str,
    now: datetime,
) -> JSONObject:
    return {
        "resourceType": "Provenance",
        "meta": {"tag": [tag(), {"system": PROVENANCE_SYSTEM, "code": key}]},
        "target": [{"reference": t} for t in targets],
        "recorded": now.isoformat(),
        "policy": [policy],
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                }
            ]
        },
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
                "who": bot_device_reference(declaration),
            }
        ],
        "entity": [{"role": "source", "what": {"reference": e.versioned}} for e in evidence],
    }


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


def strip_meta(resource: JSONObject) -> JSONObject:
    """Drop server-managed meta (versionId, lastUpdated, author...) but keep the tags."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    stripped = {k: v for k, v in resource.items() if k != "meta"}
    if isinstance(tags, list):
        stripped["meta"] = {"tag": tags}
    return stripped


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
    for task in tasks:
        if task.status not in OPEN_TASK_STATUSES:
            continue
        cancelled = dict(task.json)
        cancelled["status"] = "cancelled"
        cancelled["statusReason"] = _status_reason(code, text)
        cancelled["businessStatus"] = {"text": text}
        cancelled["lastModified"] = now.isoformat()
        writes.append(PlannedWrite("PUT", strip_meta(cancelled), if_match_version=task.version_id))
        target = focus.get(task.focus or "")
        if target is not None:
            writes.extend(_withdraw_proposal(ResourceView(target), text))
    return writes


def _withdraw_proposal(view: ResourceView, reason: str) -> list[PlannedWrite]:
    if not view.tagged(TAG_SYSTEM, TAG_CODE):
        return []
    new_status = {
        ("Observation", "preliminary"): "cancelled",
        ("ServiceRequest", "draft"): "revoked",
        ("CarePlan", "draft"): "revoked",
    }.get((view.resource_type, view.status or ""))
    if new_status is None:
        return []
    withdrawn = dict(view.json)
    withdrawn["status"] = new_status
    notes = withdrawn.get("note")
    withdrawn["note"] = [*(notes if isinstance(notes, list) else []), {"text": reason}]
    return [PlannedWrite("PUT", strip_meta(withdrawn), if_match_version=view.version_id)]


def audit_event(
    *,
    handler: str,
    version: str,
    event_reference: str,
    event_version: str,
    inputs: list[str],
    outputs: list[JSONObject],
    outcome: str,
    reasons: list[str],
    succeeded: bool,
    now: datetime,
) -> PlannedWrite:
    """One AuditEvent per processed event: inputs (version-specific references), outputs
    (logical references by identifier or direct), the handler and its version, the outcome
    and the recorded reasons. Keyed by handler, version and event so a replay writes it once."""
    key = digest(handler, version, event_reference, event_version)
    entities: list[JSONValue] = [
        {"what": {"reference": ref}, "role": {"code": "3", "display": "Report"}, "name": "input"}
        for ref in inputs
    ]
    entities.extend(
        {"what": output, "role": {"code": "4", "display": "Domain Resource"}, "name": "output"}
        for output in outputs
    )
    resource: JSONObject = {
        "resourceType": "AuditEvent",
        "meta": {"tag": [tag(), {"system": RUN_SYSTEM, "code": key}]},
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110100",
            "display": "Application Activity",
        },
        "subtype": [{"system": f"{NAMESPACE}/CodeSystem/handler", "code": handler}],
        "action": "E",
        "recorded": now.isoformat(),
        "outcome": "0" if succeeded else "4",
        "outcomeDesc": f"{outcome}: " + "; ".join(reasons) if reasons else outcome,
        "agent": [
            {
                "type": {"text": "bot"},
                "who": {
                    "type": "Device",
                    "identifier": {"system": BOT_DEVICE_SYSTEM, "value": f"{handler}@{version}"},
                    "display": f"Starvit {handler} {version}",
                },
                "requestor": False,
            }
        ],
        "source": {
            "observer": {"display": "Starvit clinical event processor"},
            "type": [{"code": "4", "display": "Application Server"}],
        },
        "entity": [
            {"what": {"reference": f"{event_reference}/_history/{event_version}"}, "name": "event"}
            if event_version != "deleted"
            else {"what": {"reference": event_reference}, "name": "event (deleted)"},
            *entities,
        ],
    }
    return PlannedWrite("POST", resource, if_none_exist=f"_tag={RUN_SYSTEM}|{key}")


def _slot_key(
    declaration: BotDeclaration, patient: str, slot: str, evidence: tuple[Evidence, ...]
) -> str:
    return digest(declaration.name, declaration.version, patient, slot, _evidence_key(evidence))


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
        writes: list[PlannedWrite] = []
        targets: list[str] = []
        focus_url: str | None = None
        if (observation := observations.get(slot)) is not None:
            obs_url = urn(f"obs:{key}")
            writes.append(
                PlannedWrite(
                    "POST",
                    _observation(observation, key, patient, declaration),
                    full_url=obs_url,
                    if_none_exist=f"identifier={PROPOSAL_SYSTEM}|{key}",
                )
            )
            targets.append(obs_url)
            focus_url = obs_url
        if (request := requests.get(slot)) is not None:
            request_key = digest(key, "request")
            req_url = urn(f"req:{key}")
            writes.append(
                PlannedWrite(
                    "POST",
                    _request(request, request_key, patient, now),
                    full_url=req_url,
                    if_none_exist=f"identifier={PROPOSAL_SYSTEM}|{request_key}",
                )
            )
            targets.append(req_url)
            focus_url = req_url
        task_url = urn(f"task:{key}")
        if focus_url is None:
            # A Task with nothing to approve but itself (a crisis alert): it focuses on the
            # notified evidence.
            focus_url = evidence[0].versioned if evidence else event.reference
        writes.append(
            PlannedWrite(
                "POST",
                _task(review, key, patient, focus_url, declaration, now, due_days),
                full_url=task_url,
                if_none_exist=f"identifier={TASK_SYSTEM}|{key}",
            )
        )
        targets.append(task_url)
        provenance_key = digest(key, "provenance")
        writes.append(
            PlannedWrite(
                "POST",
                _provenance(
                    provenance_key, targets, evidence, declaration, review.citation.url, now
                ),
                # Provenance has no identifier element: its key is a meta.tag, and `_tag` is
                # searchable on every resource type.
                if_none_exist=f"_tag={PROVENANCE_SYSTEM}|{provenance_key}",
            )
        )
        code = task_code(declaration.name, slot)
        for old in pending_tasks:
            if old.identifier_value(TASK_SYSTEM) == key or old.status not in OPEN_TASK_STATUSES:
                continue
            if any(c.get("code") == code for c in _task_codings(old)):
                focus = (pending_focus or {}).get(old.focus or "")
                writes.extend(_supersede(old, key, focus, now))
                plan.superseded += 1
        plan.slots.append(SlotPlan(slot=slot, writes=writes, task_key=key))
    return plan


def _task_codings(task: TaskView) -> list[JSONObject]:
    code = task.json.get("code")
    if not isinstance(code, dict):
        return []
    codings = code.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []
