"""The FHIR resources a bot's effects become (pure): the pending proposal (a ``preliminary``
Observation, a ``draft`` request with intent ``proposal``), the clinician's review ``Task``, the
``Provenance`` and the bot's ``Device``. Nothing here can produce ``final`` or ``active``: only
the clinician-decision loop (:mod:`app.review`) does, and only from a clinician's decision.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.botkit.declaration import (
    BotDeclaration,
    Evidence,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.botkit.identifiers import (
    BOT_DEVICE_SYSTEM,
    BOT_VERSION_URL,
    EVIDENCE_TIME_URL,
    PROPOSAL_SYSTEM,
    PROVENANCE_SYSTEM,
    TASK_CODE_SYSTEM,
    TASK_SYSTEM,
    tag,
    task_code,
)
from app.fhir.resource_json import JSONObject, JSONValue
from app.fhir.views import LOINC, SNOMED, UCUM

# SNOMED CT 158965000 "Medical practitioner" (the provider app's "Doctor" performer type).
DOCTOR: JSONObject = {"system": SNOMED, "code": "158965000", "display": "Medical practitioner"}


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


def evidence_refs(evidence: tuple[Evidence, ...]) -> list[JSONValue]:
    return [{"reference": e.versioned} for e in evidence]


def _evidence_inputs(evidence: tuple[Evidence, ...]) -> list[JSONValue]:
    return [
        {"type": {"text": "evidence"}, "valueReference": {"reference": e.versioned}}
        for e in evidence
    ]


def observation(
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
        "derivedFrom": evidence_refs(effect.evidence),
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


def request(effect: ProposeRequest, key: str, patient: str, now: datetime) -> JSONObject:
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
            "supportingInfo": evidence_refs(effect.evidence),
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
        "reasonReference": evidence_refs(effect.evidence),
    }


def task(  # noqa: PLR0917 - internal builder, called once
    effect: OpenReviewTask,
    key: str,
    patient: str,
    focus_url: str,
    declaration: BotDeclaration,
    now: datetime,
    due_days: int,
    *,
    evidence_time: datetime | None = None,
) -> JSONObject:
    extensions: list[JSONValue] = [
        {"url": BOT_VERSION_URL, "valueString": f"{declaration.name}@{declaration.version}"}
    ]
    if evidence_time is not None:
        extensions.append({"url": EVIDENCE_TIME_URL, "valueDateTime": evidence_time.isoformat()})
    return {
        "resourceType": "Task",
        "meta": {"tag": [tag()]},
        "extension": extensions,
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


def provenance(  # noqa: PLR0917 - internal builder, called once
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
