"""Hand-built FHIR JSON and bot events for the bot tests (synthetic, no PHI)."""

from __future__ import annotations

from datetime import UTC, datetime

from app.botkit.declaration import Bot, BotContext, BotEvent, Effect, Interaction
from app.fhir.resource_json import JSONObject
from app.fhir.views import ObservationView, PatientView

PATIENT_REF = "Patient/p1"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def patient(
    birth_date: str | None = "1970-03-15", gender: str | None = "female", pid: str = "p1"
) -> JSONObject:
    resource: JSONObject = {"resourceType": "Patient", "id": pid, "meta": {"versionId": "1"}}
    if birth_date is not None:
        resource["birthDate"] = birth_date
    if gender is not None:
        resource["gender"] = gender
    return resource


def _coding(code: str) -> JSONObject:
    return {"coding": [{"system": "http://loinc.org", "code": code}]}


def _quantity(value: float, unit: str) -> JSONObject:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def observation(
    oid: str,
    code: str,
    value: float | None,
    unit: str,
    when: str | None,
    *,
    status: str = "final",
    version: str = "1",
    subject: str = PATIENT_REF,
) -> JSONObject:
    resource: JSONObject = {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": version},
        "status": status,
        "code": _coding(code),
        "subject": {"reference": subject},
    }
    if when is not None:
        resource["effectiveDateTime"] = when
    if value is not None:
        resource["valueQuantity"] = _quantity(value, unit)
    return resource


def weight(oid: str, kg: float, when: str, **kwargs: str) -> JSONObject:
    return observation(oid, "29463-7", kg, "kg", when, **kwargs)


def height(oid: str, cm: float, when: str, **kwargs: str) -> JSONObject:
    return observation(oid, "8302-2", cm, "cm", when, **kwargs)


def bp_panel(
    oid: str,
    systolic: float,
    diastolic: float,
    when: str,
    *,
    code: str = "85354-9",
    unit: str = "mm[Hg]",
    status: str = "final",
) -> JSONObject:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": "1"},
        "status": status,
        "code": _coding(code),
        "subject": {"reference": PATIENT_REF},
        "effectiveDateTime": when,
        "component": [
            {"code": _coding("8480-6"), "valueQuantity": _quantity(systolic, unit)},
            {"code": _coding("8462-4"), "valueQuantity": _quantity(diastolic, unit)},
        ],
    }


def condition(
    cid: str, snomed: str, status: str = "active", *, system: str = "http://snomed.info/sct"
) -> JSONObject:
    return {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"versionId": "1"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": status,
                }
            ]
        },
        "code": {"coding": [{"system": system, "code": snomed}]},
        "subject": {"reference": PATIENT_REF},
    }


def event(
    resource: JSONObject | None,
    interaction: Interaction = Interaction.CREATE,
    reference: str | None = None,
) -> BotEvent:
    view = ObservationView(resource) if resource is not None else None
    return BotEvent(
        interaction=interaction,
        resource=view,
        reference=reference or (view.reference if view else "Observation/gone"),
        version_id=view.version_id if view else None,
        patient=PATIENT_REF,
    )


def context(patient_json: JSONObject | None = None, **prefetched: list[JSONObject]) -> BotContext:
    return BotContext(
        patient=PatientView(patient_json) if patient_json is not None else None,
        prefetched=dict(prefetched),
        now=NOW,
    )


def run(
    bot: Bot,
    resource: JSONObject,
    patient_json: JSONObject | None = None,
    **prefetched: list[JSONObject],
) -> list[Effect]:
    if patient_json is None:
        patient_json = patient()
    return bot.compute(event(resource), context(patient_json, **prefetched))
