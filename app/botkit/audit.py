"""The AuditEvent every handler writes for the events it acts on (pure): inputs, outputs, the
handler and its version, the outcome and the reasons."""

from __future__ import annotations

from datetime import datetime

from app.botkit.identifiers import BOT_DEVICE_SYSTEM, HANDLER_CODE_SYSTEM, RUN_SYSTEM, digest, tag
from app.fhir.resource_json import JSONObject, JSONValue
from app.fhir.writes import PlannedWrite


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
    required: bool = False,
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
        "subtype": [{"system": HANDLER_CODE_SYSTEM, "code": handler}],
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
    return PlannedWrite(
        "POST", resource, if_none_exist=f"_tag={RUN_SYSTEM}|{key}", audit_required=required
    )
