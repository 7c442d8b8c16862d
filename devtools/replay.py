"""Recorded notifications (``tests/fixtures/notifications/*.json``) and effect rendering.

A fixture is one JSON object::

    {"bot": "bmi", "interaction": "create", "resource": {...Observation...},
     "context": {"patient": {...Patient...}, "prefetched": {"weights": [...], ...},
                 "now": "2024-05-01T10:00:00Z"}}

``context.now`` is optional; for a delete, ``resource`` may be ``{}`` with a ``reference``
("Observation/123") next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.botkit.declaration import (
    Bot,
    BotContext,
    BotEvent,
    Effect,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
    Retract,
)
from app.fhir.resource_json import JSONObject, JSONValue, get_object, get_str
from app.fhir.views import ObservationView, PatientView, ResourceView, parse_datetime
from bots import bot_by_name

if TYPE_CHECKING:
    from app.clinical.result import Citation


class FixtureError(ValueError):
    """A recorded notification is malformed; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Recorded:
    bot: Bot
    event: BotEvent
    context: BotContext


def _view(resource: JSONObject) -> ResourceView:
    if get_str(resource, "resourceType") == "Observation":
        return ObservationView(resource)
    return ResourceView(resource)


def parse_fixture(document: JSONValue) -> Recorded:
    """Turn a fixture document into the bot, event and context to run."""
    if not isinstance(document, dict):
        msg = "a fixture must be a JSON object"
        raise FixtureError(msg)
    name = get_str(document, "bot")
    if name is None:
        msg = "the fixture has no 'bot' name"
        raise FixtureError(msg)
    try:
        bot = bot_by_name(name)
    except KeyError as exc:
        raise FixtureError(str(exc.args[0])) from exc
    try:
        interaction = Interaction(get_str(document, "interaction") or "create")
    except ValueError as exc:
        msg = f"interaction must be create, update or delete, got {document.get('interaction')!r}"
        raise FixtureError(msg) from exc
    resource = get_object(document, "resource") or {}
    context_json = get_object(document, "context") or {}
    patient_json = get_object(context_json, "patient")
    patient = PatientView(patient_json) if patient_json is not None else None
    prefetched: dict[str, list[JSONObject]] = {}
    for key, value in (get_object(context_json, "prefetched") or {}).items():
        if not isinstance(value, list):
            msg = f"context.prefetched.{key} must be a list of resources"
            raise FixtureError(msg)
        prefetched[key] = [item for item in value if isinstance(item, dict)]
    view = _view(resource) if resource and interaction is not Interaction.DELETE else None
    reference = get_str(document, "reference") or (view.reference if view else "")
    if not reference:
        msg = "the fixture needs a 'resource' (or a 'reference' for a delete)"
        raise FixtureError(msg)
    subject = get_object(resource, "subject")
    patient_reference = (get_str(subject, "reference") if subject else None) or (
        patient.reference if patient is not None else None
    )
    event = BotEvent(
        interaction=interaction,
        resource=view,
        reference=reference,
        version_id=view.version_id if view else None,
        patient=patient_reference,
    )
    context = BotContext(
        patient=patient,
        prefetched=prefetched,
        now=parse_datetime(get_str(context_json, "now")),
    )
    return Recorded(bot, event, context)


def _citation(citation: Citation) -> JSONObject:
    return {"title": citation.title, "source": citation.source, "url": citation.url}


def effect_json(effect: Effect) -> JSONObject:
    """One effect as plain JSON (``type`` plus its fields; times in ISO 8601)."""
    match effect:
        case ProposeObservation():
            return {
                "type": "ProposeObservation",
                "slot": effect.slot,
                "loinc": effect.loinc,
                "display": effect.display,
                "value": effect.value,
                "unit": effect.unit,
                "effective": effect.effective.isoformat(),
                "category": effect.category,
                "components": [
                    {"loinc": c.loinc, "display": c.display, "value": c.value, "unit": c.unit}
                    for c in effect.components
                ],
                "evidence": [e.versioned for e in effect.evidence],
            }
        case ProposeRequest():
            return {
                "type": "ProposeRequest",
                "slot": effect.slot,
                "kind": effect.kind,
                "code_system": effect.code_system,
                "code": effect.code,
                "display": effect.display,
                "evidence": [e.versioned for e in effect.evidence],
            }
        case OpenReviewTask():
            return {
                "type": "OpenReviewTask",
                "slot": effect.slot,
                "title": effect.title,
                "priority": effect.priority,
                "rationale": effect.rationale,
                "evidence": [e.versioned for e in effect.evidence],
                "citation": _citation(effect.citation),
                "severity": effect.severity,
            }
        case Retract():
            return {
                "type": "Retract",
                "slot": effect.slot,
                "reason": effect.reason,
                "evidence_time": effect.evidence_time.isoformat(),
            }
        case NoResult():
            return {"type": "NoResult", "outcome": effect.outcome, "reason": effect.reason}


def describe(effect: Effect) -> str:
    """One effect as readable lines."""
    match effect:
        case ProposeObservation():
            if effect.components:
                value = " / ".join(f"{c.display} {c.value:g} {c.unit}" for c in effect.components)
            else:
                value = f"{effect.value:g} {effect.unit}" if effect.value is not None else "-"
            return (
                f"propose Observation [{effect.slot}] LOINC {effect.loinc}: {value}"
                f" ({effect.category}) at {effect.effective.isoformat()}\n"
                f"  evidence: {', '.join(e.versioned for e in effect.evidence)}"
            )
        case ProposeRequest():
            return (
                f"propose {effect.kind} [{effect.slot}] {effect.code_system}|{effect.code} "
                f"{effect.display}\n"
                f"  evidence: {', '.join(e.versioned for e in effect.evidence)}"
            )
        case OpenReviewTask():
            return (
                f"open review Task [{effect.slot}] ({effect.priority}): {effect.title}\n"
                f"  {effect.rationale}"
            )
        case Retract():
            return f"withdraw a pending [{effect.slot}] suggestion if older: {effect.reason}"
        case NoResult():
            return f"no result ({effect.outcome}): {effect.reason}"
