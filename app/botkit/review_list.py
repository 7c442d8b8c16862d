"""The patient's rolling results-review Task (pure).

A derived result that calls for no action of its own (a normal BMI, a G1 eGFR) still needs a
clinician's approval before it is final, but not a Task of its own: it becomes an *item* of one
low-priority review Task per patient, which lists every pending item and is approved (or
rejected) in one decision. Each item is a pending proposal with its own Provenance; a newer
result of the same protocol replaces the protocol's item in place (the chart holds only what
is current). The clinician-decision loop finalises or retracts every pending item of the list
(:func:`app.review.decisions.plan_list_review`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.botkit.identifiers import TASK_CODE_SYSTEM, TASK_SYSTEM, tag
from app.fhir.resource_json import JSONObject, JSONValue, get_object, get_objects, get_str
from app.fhir.views import SNOMED, TaskView

RESULTS_REVIEW_CODE = "results-review"
ITEM_TEXT = "review item"
# A rolling list is due like a routine suggestion but lists only current results, so it is
# never expired by the clock (app/review/expiry.py leaves it alone).
_DOCTOR: JSONObject = {"system": SNOMED, "code": "158965000", "display": "Medical practitioner"}


@dataclass(frozen=True, slots=True)
class ListItem:
    code: str  # the protocol: "<bot>.<slot>"
    reference: str  # the pending proposal: "Observation/123" or a urn:uuid in a new bundle
    display: str  # the row a clinician reads: "BMI 23.1 kg/m2 (normal weight), 2024-05-01"


def is_results_review(task: TaskView) -> bool:
    code = get_object(task.json, "code")
    return any(
        get_str(c, "system") == TASK_CODE_SYSTEM and get_str(c, "code") == RESULTS_REVIEW_CODE
        for c in (get_objects(code, "coding") if code else [])
    )


def list_items(task: TaskView) -> list[ListItem]:
    items: list[ListItem] = []
    for entry in get_objects(task.json, "input"):
        kind = get_object(entry, "type")
        if kind is None or get_str(kind, "text") != ITEM_TEXT:
            continue
        codings = get_objects(kind, "coding")
        value = get_object(entry, "valueReference")
        reference = get_str(value, "reference") if value else None
        if codings and reference:
            items.append(
                ListItem(
                    get_str(codings[0], "code") or "",
                    reference,
                    (get_str(value, "display") if value else None) or reference,
                )
            )
    return items


def _item_input(item: ListItem) -> JSONValue:
    return {
        "type": {"coding": [{"system": TASK_CODE_SYSTEM, "code": item.code}], "text": ITEM_TEXT},
        "valueReference": {"reference": item.reference, "display": item.display},
    }


def review_list_task(
    *,
    key: str,
    patient: str,
    items: list[ListItem],
    now: datetime,
    due_days: int,
    existing: TaskView | None,
) -> JSONObject:
    """The list Task holding ``items`` (a new one, or ``existing`` rewritten in place)."""
    count = len(items)
    noun = "result" if count == 1 else "results"
    resource: JSONObject = {
        "resourceType": "Task",
        "meta": {"tag": [tag()]},
        "identifier": [{"system": TASK_SYSTEM, "value": key}],
        "status": "requested",
        "businessStatus": {"text": "Awaiting clinician review"},
        "intent": "proposal",
        "priority": "routine",
        "code": {
            "coding": [
                {
                    "system": TASK_CODE_SYSTEM,
                    "code": RESULTS_REVIEW_CODE,
                    "display": "Derived results for review",
                }
            ],
            "text": f"Review {count} derived {noun} needing no action (approve records them)",
        },
        "description": (
            "Derived results that call for no action of their own. Approving this Task makes "
            "each listed result final; rejecting it cancels them. Items:\n"
            + "\n".join(f"- {item.display}" for item in items)
        ),
        "for": {"reference": patient},
        "input": [_item_input(item) for item in items],
        "authoredOn": now.isoformat(),
        "requester": {"display": "Starvit results review"},
        "performerType": [{"coding": [_DOCTOR], "text": "Doctor"}],
        "restriction": {"period": {"end": (now + timedelta(days=due_days)).isoformat()}},
    }
    if existing is not None:
        resource["id"] = existing.id
        identifier = existing.identifier_value(TASK_SYSTEM)
        if identifier:
            resource["identifier"] = [{"system": TASK_SYSTEM, "value": identifier}]
        authored = get_str(existing.json, "authoredOn")
        if authored:
            resource["authoredOn"] = authored
        resource["lastModified"] = now.isoformat()
    return resource
