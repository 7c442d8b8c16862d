"""FHIR resources the development tools write as a partner would (tests, demo, benchmarks)."""

from __future__ import annotations

from typing import Any

VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category"


def vital_sign(patient: str, loinc: str, value: float, unit: str, when: str) -> dict[str, Any]:
    """A final vital-sign Observation (``patient`` is ``Patient/<id>``, ``unit`` a UCUM code)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": VITAL_SIGNS, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": patient},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }
