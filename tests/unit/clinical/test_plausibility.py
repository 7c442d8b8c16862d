"""Plausibility guards: implausible values, mislabelled units and bounds are refused."""

import pytest

from app.clinical.plausibility import (
    BODY_HEIGHT,
    BODY_WEIGHT,
    CREATININE,
    DIASTOLIC,
    HBA1C,
    MAX_AGE_YEARS,
    RANGES_BY_LOINC,
    SYSTOLIC,
    check,
    check_age,
    check_value,
)
from app.clinical.result import Outcome


@pytest.mark.parametrize(
    ("loinc", "value", "unit"),
    [
        ("29463-7", 70, "kg"),
        ("29463-7", 0.5, "kg"),  # an extremely preterm newborn
        ("29463-7", 180, "[lb_av]"),
        ("8302-2", 175, "cm"),
        ("8302-2", 1.75, "m"),
        ("8302-2", 45, "cm"),  # a newborn
        ("2160-0", 0.3, "mg/dL"),
        ("2160-0", 12.0, "mg/dL"),  # kidney failure is disease, not implausible
        ("14682-9", 88, "umol/L"),
        ("14682-9", 1100, "umol/L"),
        ("4548-4", 5.4, "%"),
        ("4548-4", 14.0, "%"),
        ("4548-4", 48, "mmol/mol"),
        ("59261-8", 48, "mmol/mol"),
        ("17856-6", 6.1, "%{HbA1c}"),
        ("8480-6", 250, "mm[Hg]"),  # severe, but real
        ("8480-6", 60, "mm[Hg]"),  # shock, real
        ("8462-4", 130, "mm[Hg]"),
    ],
)
def test_plausible_values_pass(loinc: str, value: float, unit: str) -> None:
    assert check(loinc, value, unit) is None


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "outcome", "reason_part"),
    [
        # A height in metres labelled cm (BMI 228,571 before).
        ("8302-2", 1.75, "cm", Outcome.UNIT_MISLABELLED, "plausible as 1.75 m"),
        ("8302-2", 1750, "cm", Outcome.IMPLAUSIBLE_VALUE, "20-280 cm"),
        ("29463-7", 70000, "kg", Outcome.UNIT_MISLABELLED, "plausible as 70000 g"),
        ("29463-7", 0.07, "kg", Outcome.IMPLAUSIBLE_VALUE, "0.2-700 kg"),
        # umol/L sent as mg/dL ("eGFR 0 (G5)" before) and mg/dL sent as umol/L.
        ("2160-0", 88, "mg/dL", Outcome.UNIT_MISLABELLED, "plausible as 88 umol/L"),
        ("14682-9", 1.1, "umol/L", Outcome.UNIT_MISLABELLED, "plausible as 1.1 mg/dL"),
        ("2160-0", 0.01, "mg/dL", Outcome.IMPLAUSIBLE_VALUE, "0.1-40 mg/dL"),
        # IFCC mmol/mol sent as % ("evaluate for diabetes" before) and % as mmol/mol.
        ("4548-4", 45, "%", Outcome.UNIT_MISLABELLED, "plausible as 45 mmol/mol"),
        ("59261-8", 7.1, "mmol/mol", Outcome.UNIT_MISLABELLED, "plausible as 7.1 %"),
        ("4548-4", 250, "%", Outcome.IMPLAUSIBLE_VALUE, "3-20 %"),
        ("8480-6", 900, "mm[Hg]", Outcome.IMPLAUSIBLE_VALUE, "20-370 mm[Hg]"),
        ("8462-4", 500, "mm[Hg]", Outcome.IMPLAUSIBLE_VALUE, "5-360 mm[Hg]"),
    ],
)
def test_implausible_and_mislabelled_values_are_refused(
    loinc: str, value: float, unit: str, outcome: Outcome, reason_part: str
) -> None:
    refusal = check(loinc, value, unit)
    assert refusal is not None
    assert refusal.outcome is outcome
    assert reason_part in refusal.reason
    assert "not used" in refusal.reason


@pytest.mark.parametrize("comparator", ["<", "<=", ">", ">=", "ad"])
def test_a_bound_is_not_a_value(comparator: str) -> None:
    refusal = check("2160-0", 0.2, "mg/dL", comparator)
    assert refusal is not None
    assert refusal.outcome is Outcome.INEXACT_VALUE
    assert f"{comparator}0.2 mg/dL" in refusal.reason
    # Also for a code without a range.
    other = check("1234-5", 3, "mg/dL", comparator)
    assert other is not None
    assert other.outcome is Outcome.INEXACT_VALUE


def test_bad_units_and_magnitudes_are_left_to_the_calculators() -> None:
    assert check_value(CREATININE, 1.0, "stone") is None
    assert check_value(CREATININE, -1.0, "mg/dL") is None
    assert check_value(HBA1C, 6.0, "mg/dL") is None
    assert check("1234-5", 1e9, "mg/dL") is None  # no range for the code


def test_range_ends_are_included_and_each_range_is_cited() -> None:
    for plausible in (BODY_WEIGHT, BODY_HEIGHT, CREATININE, HBA1C, SYSTOLIC, DIASTOLIC):
        assert check_value(plausible, plausible.low, plausible.unit) is None
        assert check_value(plausible, plausible.high, plausible.unit) is None
        assert plausible.citation.url.startswith("https://")
    assert set(RANGES_BY_LOINC) >= {"4548-4", "17856-6", "4549-2", "59261-8", "2160-0"}


def test_age() -> None:
    assert check_age(0) is None
    assert check_age(MAX_AGE_YEARS) is None
    for age in (-1, 140):
        refusal = check_age(age)
        assert refusal is not None
        assert refusal.outcome is Outcome.IMPLAUSIBLE_VALUE
