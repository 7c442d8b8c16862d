"""The de-identification allow-list: what is kept, how, and what is dropped."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.research.deid import (
    AGE_90_OR_OLDER_URL,
    AllowListDeidentifier,
    Deidentified,
    Dropped,
    Pseudonyms,
    load_policy,
    shift_date,
)
from app.research.keys import PseudonymKey

KEY = PseudonymKey("v1", b"unit-test-key-" + b"a" * 32)
OTHER_KEY = PseudonymKey("v2", b"unit-test-key-" + b"b" * 32)
TODAY = date(2026, 12, 1)


def engine(key: PseudonymKey = KEY) -> AllowListDeidentifier:
    return AllowListDeidentifier(load_policy(), key, today=TODAY)


def patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p-1",
        "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z", "source": "x"},
        "identifier": [{"system": "urn:mrn", "value": "MRN123"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "telecom": [{"system": "phone", "value": "555-1234"}],
        "gender": "female",
        "birthDate": "1980-06-15",
        "address": [
            {"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02139"}
        ],
        "text": {"status": "generated", "div": "<div>Jane Doe</div>"},
        **extra,
    }


def kept(outcome: Deidentified | Dropped) -> dict[str, Any]:
    assert isinstance(outcome, Deidentified), outcome
    return outcome.resource


def test_a_patient_keeps_only_the_listed_elements() -> None:
    out = kept(engine().deidentify(patient()))
    assert set(out) == {"resourceType", "id", "meta", "gender", "birthDate", "address"}
    assert out["address"] == [{"state": "MA", "postalCode": "021"}]
    assert len(out["birthDate"]) == 4
    assert out["id"] == engine().pseudonyms.pseudonym("Patient", "p-1")
    assert [s["code"] for s in out["meta"]["security"]] == ["PSEUDED", "REDACTED"]
    text = json.dumps(out)
    for phi in ("MRN123", "Doe", "Jane", "555-1234", "Main", "Boston", "1980-06-15", "p-1"):
        assert phi not in text


@pytest.mark.parametrize(
    ("zip_code", "expected"),
    [("03601", "000"), ("82301", "000"), ("89301-1234", "000"), ("02139", "021"), ("x", None)],
)
def test_zip_codes_become_three_digits_and_restricted_areas_become_000(
    zip_code: str, expected: str | None
) -> None:
    out = kept(engine().deidentify(patient(address=[{"postalCode": zip_code}])))
    assert out.get("address") == ([{"postalCode": expected}] if expected else None)


def test_ages_over_89_collapse_into_one_birth_year() -> None:
    old = kept(engine().deidentify(patient(birthDate="1930-02-01")))
    older = kept(engine().deidentify(patient(id="p-2", birthDate="1901-11-30")))
    assert old["birthDate"] == older["birthDate"] == str(TODAY.year - 90)
    assert old["extension"] == [{"url": AGE_90_OR_OLDER_URL, "valueBoolean": True}]
    young = kept(engine().deidentify(patient(birthDate="1940-01-01")))  # 86
    assert "extension" not in young


def test_an_unknown_modifier_extension_drops_the_whole_resource() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": "Patient/p-1"},
        "component": [{"modifierExtension": [{"url": "urn:x", "valueBoolean": True}]}],
    }
    assert engine().deidentify(observation) == Dropped("Observation", "unknown modifierExtension")


def test_types_outside_the_allow_list_and_orphans_are_dropped() -> None:
    assert engine().deidentify({"resourceType": "DocumentReference", "id": "d"}) == Dropped(
        "DocumentReference", "type not in the allow-list"
    )
    orphan = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Group/g"}}
    assert engine().deidentify(orphan) == Dropped("Condition", "no patient reference")


def test_an_observation_keeps_codes_values_and_references_not_text() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o-1",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}],
            "text": "glucose fasting for Jane",
        },
        "subject": {"reference": "Patient/p-1", "display": "Jane Doe"},
        "effectiveDateTime": "2024-03-05T08:30:00Z",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org"},
        "note": [{"text": "drawn late"}],
        "performer": [{"reference": "Practitioner/dr"}],
        "device": {
            "identifier": {"system": "https://fhir.starvit.health/sid/bot", "value": "egfr@1.0.0"}
        },
        "extension": [{"url": "urn:x", "valueString": "secret"}],
    }
    out = kept(engine().deidentify(observation))
    names = engine().pseudonyms
    assert out["code"] == {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}
    assert out["subject"] == {"reference": f"Patient/{names.pseudonym('Patient', 'p-1')}"}
    assert out["valueQuantity"]["value"] == 5.4
    assert out["device"]["identifier"]["value"] == "egfr@1.0.0"
    assert {"note", "performer", "extension"}.isdisjoint(out)
    shift = names.shift_days(names.pseudonym("Patient", "p-1"))
    assert out["effectiveDateTime"] == shift_date("2024-03-05T08:30:00Z", shift)


def test_one_shift_per_patient_keeps_intervals() -> None:
    names = engine().pseudonyms
    shift = names.shift_days(names.pseudonym("Patient", "p-1"))
    a = shift_date("2020-01-01", shift)
    b = shift_date("2020-03-01", shift)
    assert a
    assert b
    assert (date.fromisoformat(b) - date.fromisoformat(a)).days == 60
    shifts = {names.shift_days(names.pseudonym("Patient", f"p-{i}")) for i in range(50)}
    assert len(shifts) > 40
    assert 0 not in shifts
    assert all(-365 <= s <= 365 for s in shifts)


def test_pseudonyms_are_stable_under_a_key_and_change_with_another() -> None:
    one, again, other = Pseudonyms(KEY, 365), Pseudonyms(KEY, 365), Pseudonyms(OTHER_KEY, 365)
    assert one.pseudonym("Patient", "x") == again.pseudonym("Patient", "x")
    assert one.pseudonym("Patient", "x") != other.pseudonym("Patient", "x")
    assert one.pseudonym("Patient", "x") != one.pseudonym("Observation", "x")


def test_the_configuration_hash_is_recorded_and_changes_with_the_policy() -> None:
    policy = load_policy()
    assert len(policy.config_hash) == 64
    changed = type(policy)(
        {**policy.document, "date_shift_days": 30},
        policy.restricted_zip3,
        policy.zip3_version,
        policy.zip3_replacement,
    )
    assert changed.config_hash != policy.config_hash


@given(
    st.dates(min_value=date(1900, 1, 1), max_value=date(2090, 12, 31)),
    st.integers(-365, 365),
    st.sampled_from(["", "T10:11:12Z", "T00:00:00+02:00", "T23:59:59.123-05:00"]),
)
def test_shifting_keeps_precision_and_time(day: date, shift: int, time: str) -> None:
    shifted = shift_date(day.isoformat() + time, shift)
    assert shifted is not None
    assert shifted.endswith(time)
    assert (date.fromisoformat(shifted[:10]) - day).days == shift
    month = shift_date(day.isoformat()[:7], shift)
    assert month is not None
    assert len(month) == 7
