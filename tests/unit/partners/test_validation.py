"""The pure checks of a posted bundle: what a partner may not write (forbidden) and what is not
valid (invalid), each naming the entry, the element and a stable code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.partners.registry import Partner, PartnerRegistry, RegistryError
from app.partners.validation import CheckPolicy, check_bundle, parse_fhir_time, vital_sign_units
from devtools import vital_sign_units as extractor

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = CheckPolicy(
    clinician_role_codes=frozenset({("http://snomed.info/sct", "158965000")}),
    future_tolerance=timedelta(minutes=5),
)
PARTNER = Partner.model_validate(
    {
        "client_id": "lab-1",
        "name": "Lab",
        "project": "tenant-1",
        "resources": {
            "Patient": ["create"],
            "Observation": ["create", "update"],
            "PractitionerRole": ["create"],
        },
        "limits": {"max_entries": 5},
    }
)


def _json(value: object) -> Any:
    return value


def weight(
    unit: str = "kg", system: str = "http://unitsofmeasure.org", **extra: object
) -> dict[str, Any]:
    return {
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
            "effectiveDateTime": "2026-11-30T10:00:00Z",
            "valueQuantity": {"value": 70, "unit": unit, "system": system, "code": unit},
            **extra,
        },
        "request": {"method": "POST", "url": "Observation"},
    }


PATIENT: dict[str, Any] = {
    "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
    "resource": {"resourceType": "Patient", "birthDate": "1970-01-01"},
    "request": {"method": "POST", "url": "Patient"},
}


def check(*entries: Any, bundle_type: str = "batch") -> list[tuple[int, str, str, str]]:
    result = check_bundle(
        _json({"resourceType": "Bundle", "type": bundle_type, "entry": list(entries)}),
        PARTNER,
        POLICY,
        now=NOW,
    )
    return [(p.index, p.path, p.code, p.severity) for p in result.problems]


def test_a_valid_bundle_has_no_problems_and_counts_its_types() -> None:
    result = check_bundle(
        _json({"resourceType": "Bundle", "type": "transaction", "entry": [PATIENT, weight()]}),
        PARTNER,
        POLICY,
        now=NOW,
    )
    assert result.problems == []
    assert result.counts == {"Patient": 1, "Observation": 1}


@pytest.mark.parametrize(
    ("unit", "system", "code"),
    [
        ("cm", "http://unitsofmeasure.org", "unit_wrong_for_code"),
        ("kilo", "http://unitsofmeasure.org", "unit_invalid"),
        ("kg", "http://example.org/units", "unit_system_not_ucum"),
    ],
)
def test_units_are_ucum_and_right_for_the_loinc_code(unit: str, system: str, code: str) -> None:
    problems = check(PATIENT, weight(unit, system))
    assert (
        1,
        f"Observation.valueQuantity.{'system' if 'system' in code else 'code'}",
        code,
        "invalid",
    ) in problems


def test_pounds_are_a_body_weight_unit() -> None:
    assert check(PATIENT, weight("[lb_av]")) == []


def test_dates_in_the_future_beyond_the_tolerance() -> None:
    soon = (NOW + timedelta(minutes=4)).isoformat()
    later = (NOW + timedelta(minutes=6)).isoformat()
    assert check(PATIENT, weight(effectiveDateTime=soon)) == []
    assert check(PATIENT, weight(effectiveDateTime=later)) == [
        (1, "Observation.effectiveDateTime", "date_in_future", "invalid")
    ]


def test_partial_dates_mean_their_first_instant() -> None:
    assert parse_fhir_time("2027") == datetime(2027, 1, 1, tzinfo=UTC)
    assert parse_fhir_time("2026-12-01T13:00:00+02:00") == datetime(2026, 12, 1, 11, tzinfo=UTC)
    assert parse_fhir_time("yesterday") is None


def test_forbidden_properties_types_and_roles() -> None:
    task = {"resource": {"resourceType": "Task"}, "request": {"method": "POST", "url": "Task"}}
    condition = {
        "resource": {"resourceType": "Condition"},
        "request": {"method": "POST", "url": "Condition"},
    }
    stamped = {
        "resource": {"resourceType": "Patient", "meta": {"project": "other", "security": []}},
        "request": {"method": "POST", "url": "Patient"},
    }
    role = {
        "resource": {
            "resourceType": "PractitionerRole",
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}]}],
        },
        "request": {"method": "POST", "url": "PractitionerRole"},
    }
    update = {
        "resource": {"resourceType": "Patient", "id": "p1"},
        "request": {"method": "PUT", "url": "Patient/p1"},
    }
    elsewhere = weight()
    assert isinstance(elsewhere["resource"], dict)
    elsewhere["resource"]["subject"] = {"reference": "https://other.example/fhir/Patient/1"}
    forbidden = [p for p in check(task, condition, stamped, role, update) if p[3] == "forbidden"]
    assert forbidden == [
        (0, "Task", "resource_type_forbidden", "forbidden"),
        (1, "Condition", "resource_type_not_allowed", "forbidden"),
        (2, "Patient.meta.project", "element_forbidden", "forbidden"),
        (2, "Patient.meta.security", "element_forbidden", "forbidden"),
        (3, "PractitionerRole.code", "clinician_role_forbidden", "forbidden"),
        (4, "Patient", "interaction_not_allowed", "forbidden"),
    ]
    assert (1, "Observation.subject.reference", "reference_outside_tenant", "forbidden") in check(
        PATIENT, elsewhere
    )


def test_bundle_level_problems() -> None:
    assert check(bundle_type="searchset") == [
        (-1, "Bundle.type", "bundle_type_unsupported", "invalid")
    ]
    assert check(*[PATIENT] * 6) == [(-1, "Bundle.entry", "too_many_entries", "invalid")]
    many = [
        {**PATIENT, "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000001{i}"} for i in range(5)
    ]
    assert PARTNER.limits.max_entries == 5
    # Medplum's cap: a transaction with a conditional entry holds at most eight entries.
    big = Partner.model_validate({**PARTNER.model_dump(), "limits": {"max_entries": 20}})
    result = check_bundle(
        _json({"resourceType": "Bundle", "type": "transaction", "entry": many * 2}),
        big,
        POLICY,
        now=NOW,
    )
    assert ("Bundle.entry", "transaction_too_large") in [(p.path, p.code) for p in result.problems]


def test_an_unresolvable_urn_and_fhir_structure_errors_are_invalid() -> None:
    dangling = weight()
    assert isinstance(dangling["resource"], dict)
    dangling["resource"]["subject"] = {"reference": "urn:uuid:00000000-0000-4000-8000-0000000000ff"}
    assert (0, "Observation.subject.reference", "reference_unresolved", "invalid") in check(
        dangling
    )
    extra = weight(flavour="vanilla")
    assert (1, "Observation.flavour", "fhir_invalid", "invalid") in check(PATIENT, extra)


def test_the_registry_refuses_what_can_never_be_granted(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(
        '{"partners": [{"client_id": "x", "name": "X", "project": "p", '
        '"resources": {"Task": ["create"]}}]}'
    )
    with pytest.raises(RegistryError, match="Task can never be granted"):
        PartnerRegistry.load(path)
    path.write_text("{")
    with pytest.raises(RegistryError, match="not JSON"):
        PartnerRegistry.load(path)
    assert len(PartnerRegistry.load(None)) == 0


def test_the_vital_sign_units_are_medplums_definitions() -> None:
    if not (extractor.DEFINITIONS / "profiles-others.json").exists():
        pytest.skip("the stand-in's packages are not installed")
    committed = {code: sorted(units) for code, units in vital_sign_units().items()}
    assert committed == extractor.extract()
    assert committed["8480-6"] == ["mm[Hg]"]


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("[pH]", True),
        ("{score}", True),
        ("mL/min/{1.73_m2}", True),
        ("10*3/uL", True),
        ("kg/m2", True),
        ("stone", False),
        ("kg/m^2", False),
        ("kilograms", False),
    ],
)
def test_ucum_validity_is_the_grammar_not_convertibility(code: str, valid: bool) -> None:
    from app.partners.validation import ucum_valid  # noqa: PLC0415

    assert ucum_valid(code) is valid
