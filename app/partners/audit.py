"""What the service records in Medplum about a partner's request (pure).

* An AuditEvent per request in the shape of IHE Basic Audit Log Patterns (BALP): a RESTful
  interaction (``rest`` with the ``batch``/``transaction`` subtype), the partner as the
  requesting agent (its ClientApplication and client id), the service as the observer, the
  outcome, and entities for the correlation id (BALP's ``XrequestId``), the bundle and the
  resource types with their counts. Written by the service, conditional on a tag carrying the
  bundle id, so a replayed request records it once.
* A Provenance per forwarded request naming the partner as the author of every resource it
  wrote, the service as the agent that received and forwarded it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from app.fhir.resource_json import JSONObject, JSONValue

BUNDLE_TAG_SYSTEM = "urn:starvit:partner-bundle"
BALP_ENTITY_TYPE = "http://hl7.org/fhir/uv/ihe-balp/CodeSystem/BasicAuditEntityType"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
SECURITY_SOURCE = "http://terminology.hl7.org/CodeSystem/security-source-type"

# AuditEvent.outcome: 0 success, 4 minor failure (the request was refused), 8 serious failure
# (the request failed on the way to Medplum).
OUTCOME_SUCCESS = "0"
OUTCOME_REFUSED = "4"
OUTCOME_FAILED = "8"


def bundle_tag(bundle_id: str, kind: str) -> tuple[str, str]:
    """The tag (system, code) that keys what the service writes about one request."""
    return BUNDLE_TAG_SYSTEM, f"{kind}-{bundle_id}"


def balp_audit_event(
    *,
    partner_client_id: str,
    partner_name: str,
    service_client_id: str,
    bundle_id: str,
    bundle_type: str | None,
    correlation_id: str,
    counts: Mapping[str, int],
    outcome: str,
    outcome_code: str,
    dry_run: bool,
    now: datetime,
) -> JSONObject:
    system, code = bundle_tag(bundle_id, "audit")
    subtype = bundle_type if bundle_type in ("batch", "transaction") else "batch"
    details: list[JSONValue] = [
        {"type": resource_type, "valueString": str(count)}
        for resource_type, count in sorted(counts.items())
    ]
    if dry_run:
        details.append({"type": "dry-run", "valueString": "true"})
    return {
        "resourceType": "AuditEvent",
        "meta": {"tag": [{"system": system, "code": code}]},
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": subtype}],
        "action": "C" if not dry_run else "E",
        "recorded": now.isoformat(),
        "outcome": outcome,
        # A stable code, never text from the request.
        "outcomeDesc": outcome_code,
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110153",
                            "display": "Source Role ID",
                        }
                    ]
                },
                "who": {
                    "reference": f"ClientApplication/{partner_client_id}",
                    "display": partner_name,
                },
                "altId": partner_client_id,
                "requestor": True,
                "network": {"type": "5"},
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110152",
                            "display": "Destination Role ID",
                        }
                    ]
                },
                "who": {"reference": f"ClientApplication/{service_client_id}"},
                "requestor": False,
            },
        ],
        "source": {
            "observer": {"reference": f"ClientApplication/{service_client_id}"},
            "type": [{"system": SECURITY_SOURCE, "code": "4", "display": "Application Server"}],
        },
        "entity": [
            {
                "what": {"identifier": {"value": correlation_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
            },
            {
                "what": {"identifier": {"system": BUNDLE_TAG_SYSTEM, "value": bundle_id}},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "name": "bundle",
                "detail": details,
            },
        ],
    }


def partner_provenance(
    *,
    partner_client_id: str,
    partner_name: str,
    service_client_id: str,
    bundle_id: str,
    part: int,
    targets: Sequence[str],
    now: datetime,
) -> JSONObject:
    system, code = bundle_tag(bundle_id, f"provenance-{part}")
    return {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": system, "code": code}]},
        "target": [{"reference": target} for target in targets],
        "recorded": now.isoformat(),
        "policy": [f"{BUNDLE_TAG_SYSTEM}:{bundle_id}"],
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE"}]},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author"}]},
                "who": {
                    "reference": f"ClientApplication/{partner_client_id}",
                    "display": partner_name,
                },
            },
            {
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "custodian"}]},
                "who": {"reference": f"ClientApplication/{service_client_id}"},
                "onBehalfOf": {"reference": f"ClientApplication/{partner_client_id}"},
            },
        ],
    }
