"""Adult body mass index (LOINC 39156-5) from body weight (29463-7) and body height (8302-2).

BMI = weight [kg] / height [m]^2, reported in ``kg/m2`` to one decimal, with the WHO adult
categories. Weight and height may come in any UCUM mass and length units.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from app.clinical.evidence import Measurement, Timed, age_in_years
from app.clinical.result import (
    Citation,
    MetricResult,
    Outcome,
    invalid_magnitude,
    round_half_up,
)
from app.fhir.units import UnitConversionError, convert

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import date, datetime

BODY_WEIGHT_LOINC = "29463-7"
BODY_HEIGHT_LOINC = "8302-2"
BMI_LOINC = "39156-5"
BMI_UNIT = "kg/m2"
BMI_DECIMALS = 1

# Evidence rule (product decision, docs/CLINICAL_LOGIC.md): an adult's height changes little in
# a year, so a height measured up to 365 days before the weight (or at the same time) is paired
# with it; a later height is never used for an earlier weight.
HEIGHT_LOOKBACK = timedelta(days=365)

# The WHO adult classes apply from 20 years: children and teens are assessed by BMI-for-age
# percentiles through 19 (CDC growth charts for ages 2-19; WHO growth reference 5-19 years).
BMI_ADULT_AGE_YEARS = 20
UNDER_20_REASON = (
    "BMI-for-age percentile needed under 20: the adult BMI categories apply from age 20 "
    "(WHO and CDC use BMI-for-age through 19)"
)

CDC_BMI_FOR_AGE = Citation(
    title="About Child and Teen BMI (BMI-for-age percentiles, ages 2 through 19)",
    source="Centers for Disease Control and Prevention",
    url="https://www.cdc.gov/bmi/child-teen-calculator/bmi-categories.html",
)
WHO_GROWTH_REFERENCE_5_19 = Citation(
    title="Growth reference data for 5-19 years (BMI-for-age)",
    source="World Health Organization. WHO Reference 2007",
    url="https://www.who.int/tools/growth-reference-data-for-5to19-years",
)
WHO_BMI_CLASSIFICATION = Citation(
    title=(
        "Obesity: preventing and managing the global epidemic. Report of a WHO consultation "
        "(Table 2.1, classification of adults according to BMI)"
    ),
    source="World Health Organization. WHO Technical Report Series 894. Geneva: WHO; 2000",
    url="https://iris.who.int/handle/10665/42330",
)


class BmiCategory(StrEnum):
    """WHO adult BMI classes (WHO TRS 894, Table 2.1)."""

    UNDERWEIGHT = "underweight"  # < 18.5
    NORMAL = "normal"  # 18.5-24.9
    OVERWEIGHT = "overweight"  # 25.0-29.9 (WHO: "pre-obese")
    OBESITY_CLASS_1 = "obesity_class_1"  # 30.0-34.9
    OBESITY_CLASS_2 = "obesity_class_2"  # 35.0-39.9
    OBESITY_CLASS_3 = "obesity_class_3"  # >= 40.0


# Lower bounds in kg/m2, highest first (WHO TRS 894, Table 2.1).
_WHO_LOWER_BOUNDS: tuple[tuple[float, BmiCategory], ...] = (
    (40.0, BmiCategory.OBESITY_CLASS_3),
    (35.0, BmiCategory.OBESITY_CLASS_2),
    (30.0, BmiCategory.OBESITY_CLASS_1),
    (25.0, BmiCategory.OVERWEIGHT),
    (18.5, BmiCategory.NORMAL),
)


def bmi_category(bmi_value: float) -> BmiCategory:
    """WHO adult class of a BMI in kg/m2 (pass the reported, one-decimal value)."""
    for lower_bound, category in _WHO_LOWER_BOUNDS:
        if bmi_value >= lower_bound:
            return category
    return BmiCategory.UNDERWEIGHT


def bmi(
    *, weight: float, weight_unit: str, height: float, height_unit: str, age_years: int
) -> MetricResult:
    """Adult BMI from a weight and a height in any UCUM mass and length units.

    No result (``value`` None, ``reason`` set) for a non-positive or non-finite input, a unit
    that is not UCUM mass (weight) or length (height), or an age under 20.
    """
    for name, magnitude in (("weight", weight), ("height", height)):
        if (problem := invalid_magnitude(name, magnitude)) is not None:
            return _no_bmi(Outcome.INVALID_INPUT, problem)
    if age_years < 0:
        return _no_bmi(Outcome.INVALID_INPUT, f"age must not be negative, got {age_years}")
    try:
        weight_kg = convert(weight, weight_unit, "kg")
    except UnitConversionError as exc:
        return _no_bmi(Outcome.INVALID_INPUT, f"weight unit: {exc}")
    try:
        height_m = convert(height, height_unit, "m")
    except UnitConversionError as exc:
        return _no_bmi(Outcome.INVALID_INPUT, f"height unit: {exc}")
    if age_years < BMI_ADULT_AGE_YEARS:
        return _no_bmi(Outcome.NOT_APPLICABLE, UNDER_20_REASON)
    unrounded = weight_kg / height_m**2
    value = round_half_up(unrounded, BMI_DECIMALS)
    return MetricResult.computed(
        value=value,
        unrounded=unrounded,
        unit=BMI_UNIT,
        category=bmi_category(value),
        citation=WHO_BMI_CLASSIFICATION,
    )


def height_for_weight[T: Timed](weight_at: datetime, heights: Iterable[T]) -> T | None:
    """The height to pair with a weight taken at ``weight_at``.

    The latest height taken within 365 days before the weight or at the same instant
    (``weight_at - 365 days <= height time <= weight_at``); ``None`` when there is none.
    Among heights with the same time the first in ``heights`` wins.
    """
    earliest = weight_at - HEIGHT_LOOKBACK
    chosen: T | None = None
    for height in heights:
        if earliest <= height.effective_at <= weight_at and (
            chosen is None or height.effective_at > chosen.effective_at
        ):
            chosen = height
    return chosen


def bmi_for_weight(
    weight: Measurement, heights: Iterable[Measurement], *, birth_date: date
) -> MetricResult:
    """BMI for one weight observation, choosing the height by ``height_for_weight``.

    Age is taken in completed years on the weight's date. No height within the year before
    the weight gives no result (``insufficient_evidence``).
    """
    try:
        age_years = age_in_years(birth_date, weight.effective_at.date())
    except ValueError as exc:
        return _no_bmi(Outcome.INVALID_INPUT, f"weight: {exc}")
    height = height_for_weight(weight.effective_at, heights)
    if height is None:
        return _no_bmi(
            Outcome.INSUFFICIENT_EVIDENCE,
            "no body height taken within 365 days before (or at) the weight",
        )
    return bmi(
        weight=weight.value,
        weight_unit=weight.unit,
        height=height.value,
        height_unit=height.unit,
        age_years=age_years,
    )


def _no_bmi(outcome: Outcome, reason: str) -> MetricResult:
    return MetricResult.no_result(outcome, reason, unit=BMI_UNIT, citation=WHO_BMI_CLASSIFICATION)
