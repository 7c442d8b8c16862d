"""Blood pressure: ACC/AHA 2017 category of the average over recent occasions, and crisis.

Readings come from a BP panel (85354-9 with components 8480-6 systolic and 8462-4 diastolic)
or from single systolic and diastolic Observations paired by time (``pair_readings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from app.clinical.result import (
    Citation,
    Outcome,
    Suggestion,
    invalid_magnitude,
    round_half_up,
)
from app.fhir.units import UnitConversionError, convert

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from app.clinical.evidence import Measurement

BP_PANEL_LOINC = "85354-9"
SYSTOLIC_LOINC = "8480-6"
DIASTOLIC_LOINC = "8462-4"
MM_HG = "mm[Hg]"
AVERAGE_DECIMALS = 0

# Pairing single systolic and diastolic Observations (product decision): both are taken in
# one cuff inflation, so they carry the same time; up to 5 minutes apart tolerates devices
# and interfaces that stamp the two values separately.
PAIRING_TOLERANCE = timedelta(minutes=5)

# Whelton et al. 2018, section 4 / Table 7: "Use an average of >=2 readings obtained on >=2
# occasions to estimate the individual's level of BP". An occasion is a calendar day (in the
# reading's own UTC offset); the window is the 30 days ending at the newest reading
# (product decision), both ends inclusive.
MIN_OCCASIONS = 2
AVERAGING_WINDOW = timedelta(days=30)

# Hypertensive crisis. The guideline (section 11.2) describes severe BP as ">180 and/or >120
# mm Hg"; the product (issue 6) flags a single reading at or above 180 systolic or 120
# diastolic, so the boundary values themselves open an urgent Task.
CRISIS_SYSTOLIC_MM_HG = 180.0
CRISIS_DIASTOLIC_MM_HG = 120.0

ACC_AHA_2017 = Citation(
    title=(
        "2017 ACC/AHA/AAPA/ABC/ACPM/AGS/APhA/ASH/ASPC/NMA/PCNA Guideline for the Prevention, "
        "Detection, Evaluation, and Management of High Blood Pressure in Adults"
    ),
    source="Whelton PK, Carey RM, Aronow WS, et al. Hypertension. 2018;71(6):e13-e115",
    url="https://doi.org/10.1161/HYP.0000000000000065",
)


class BloodPressureCategory(StrEnum):
    """ACC/AHA 2017 adult BP categories (Whelton et al. 2018, Table 6)."""

    NORMAL = "normal"  # < 120 and < 80
    ELEVATED = "elevated"  # 120-129 and < 80
    STAGE_1_HYPERTENSION = "stage_1_hypertension"  # 130-139 or 80-89
    STAGE_2_HYPERTENSION = "stage_2_hypertension"  # >= 140 or >= 90


@dataclass(frozen=True, slots=True)
class BloodPressureReading:
    """One systolic/diastolic pair taken at ``taken_at``, each value in its UCUM unit."""

    systolic: float
    diastolic: float
    taken_at: datetime
    systolic_unit: str = MM_HG
    diastolic_unit: str = MM_HG


@dataclass(frozen=True, slots=True)
class BloodPressureAssessment:
    """The average and category over the recent occasions, plus any crisis reading.

    ``systolic``/``diastolic`` are the averages in mm[Hg] rounded to whole numbers (None with
    a ``reason`` when there is no average); ``readings`` are the readings in the 30-day window
    (the evidence, as given); ``crisis_reading`` the newest of them at crisis level, which is
    reported even when there are too few occasions for an average.
    """

    systolic: float | None
    diastolic: float | None
    category: BloodPressureCategory | None
    reason: str | None
    outcome: Outcome
    citation: Citation
    readings: tuple[BloodPressureReading, ...]
    occasions: int
    crisis_reading: BloodPressureReading | None
    systolic_unrounded: float | None = None
    diastolic_unrounded: float | None = None
    unit: str = MM_HG


def blood_pressure_category(systolic: float, diastolic: float) -> BloodPressureCategory:
    """ACC/AHA 2017 category in mm[Hg]; a pair spanning two categories takes the higher."""
    if systolic >= 140 or diastolic >= 90:
        return BloodPressureCategory.STAGE_2_HYPERTENSION
    if systolic >= 130 or diastolic >= 80:
        return BloodPressureCategory.STAGE_1_HYPERTENSION
    if systolic >= 120:
        return BloodPressureCategory.ELEVATED
    return BloodPressureCategory.NORMAL


def is_hypertensive_crisis(systolic: float, diastolic: float) -> bool:
    """A single reading at crisis level (mm[Hg]): systolic >= 180 or diastolic >= 120."""
    return systolic >= CRISIS_SYSTOLIC_MM_HG or diastolic >= CRISIS_DIASTOLIC_MM_HG


def pair_readings(
    systolics: Iterable[Measurement], diastolics: Iterable[Measurement]
) -> list[BloodPressureReading]:
    """Pair single systolic (8480-6) and diastolic (8462-4) Observations into readings.

    Taking systolic values oldest first, each is paired with the unpaired diastolic value
    closest in time within 5 minutes (the earlier one on a tie); the reading takes the
    systolic's time. Values left without a partner form no reading.
    """
    unpaired = sorted(diastolics, key=lambda measurement: measurement.effective_at)
    readings: list[BloodPressureReading] = []
    for systolic in sorted(systolics, key=lambda measurement: measurement.effective_at):
        candidates = [
            diastolic
            for diastolic in unpaired
            if abs(diastolic.effective_at - systolic.effective_at) <= PAIRING_TOLERANCE
        ]
        if not candidates:
            continue
        partner = min(
            candidates, key=lambda diastolic: abs(diastolic.effective_at - systolic.effective_at)
        )
        unpaired.remove(partner)
        readings.append(
            BloodPressureReading(
                systolic=systolic.value,
                diastolic=partner.value,
                taken_at=systolic.effective_at,
                systolic_unit=systolic.unit,
                diastolic_unit=partner.unit,
            )
        )
    return readings


def assess_blood_pressure(readings: Sequence[BloodPressureReading]) -> BloodPressureAssessment:
    """Average, category and crisis over the readings of the 30 days ending at the newest.

    No average (``value`` None, ``reason`` set) when a reading is unusable (unit not
    convertible to mm[Hg], a non-positive value, systolic not above diastolic), when there are
    no readings, or when the window holds readings from fewer than 2 occasions (calendar days).
    """
    if not readings:
        return _no_average(Outcome.INSUFFICIENT_EVIDENCE, "no blood pressure readings")
    # Bad readings are excluded one by one (a reading in a unit that is not UCUM must not
    # block the whole window); only when none is usable is there no result.
    usable: list[tuple[BloodPressureReading, tuple[float, float]]] = []
    refusals: list[str] = []
    for reading in readings:
        converted = _in_mm_hg(reading)
        if isinstance(converted, str):
            refusals.append(converted)
            continue
        usable.append((reading, converted))
    if not usable:
        return _no_average(Outcome.INVALID_INPUT, refusals[0])

    newest_at = max(reading.taken_at for reading, _ in usable)
    window_start = newest_at - AVERAGING_WINDOW
    window = sorted(
        ((reading, pressures) for reading, pressures in usable if window_start <= reading.taken_at),
        key=lambda pair: pair[0].taken_at,
    )
    window_readings = tuple(reading for reading, _ in window)
    crisis_reading = next(
        (reading for reading, pressures in reversed(window) if is_hypertensive_crisis(*pressures)),
        None,
    )
    by_occasion: dict[object, list[tuple[float, float]]] = {}
    for reading, pressures in window:
        by_occasion.setdefault(reading.taken_at.date(), []).append(pressures)
    occasions = len(by_occasion)
    if occasions < MIN_OCCASIONS:
        return _no_average(
            Outcome.INSUFFICIENT_EVIDENCE,
            f"an average needs readings on at least {MIN_OCCASIONS} occasions (distinct days) "
            f"within {AVERAGING_WINDOW.days} days; found {occasions}",
            readings=window_readings,
            occasions=occasions,
            crisis_reading=crisis_reading,
        )

    # ACC/AHA 2017 (section 4.2, Table 7): "an average of >= 2 readings obtained on >= 2
    # occasions": each occasion is averaged first, then the occasions, so ten readings on one
    # day weigh as much as one reading on another.
    means = [
        (sum(p[0] for p in group) / len(group), sum(p[1] for p in group) / len(group))
        for group in by_occasion.values()
    ]
    systolic_mean = sum(m[0] for m in means) / len(means)
    diastolic_mean = sum(m[1] for m in means) / len(means)
    systolic = round_half_up(systolic_mean, AVERAGE_DECIMALS)
    diastolic = round_half_up(diastolic_mean, AVERAGE_DECIMALS)
    return BloodPressureAssessment(
        systolic=systolic,
        diastolic=diastolic,
        category=blood_pressure_category(systolic, diastolic),
        reason=None,
        outcome=Outcome.COMPUTED,
        citation=ACC_AHA_2017,
        readings=window_readings,
        occasions=occasions,
        crisis_reading=crisis_reading,
        systolic_unrounded=systolic_mean,
        diastolic_unrounded=diastolic_mean,
    )


def hypertensive_crisis_suggestion(assessment: BloodPressureAssessment) -> Suggestion | None:
    """An urgent review when the assessment holds a reading at crisis level."""
    reading = assessment.crisis_reading
    if reading is None:
        return None
    pressures = _in_mm_hg(reading)
    if isinstance(pressures, str):  # pragma: no cover - assessed readings are convertible
        return None
    systolic, diastolic = (round_half_up(value, AVERAGE_DECIMALS) for value in pressures)
    return Suggestion(
        title=f"Urgent: blood pressure {systolic:g}/{diastolic:g} mm[Hg] at crisis level",
        rationale=(
            f"A single reading of {systolic:g}/{diastolic:g} mm[Hg] is at or above "
            f"{CRISIS_SYSTOLIC_MM_HG:g} systolic or {CRISIS_DIASTOLIC_MM_HG:g} diastolic. "
            "ACC/AHA 2017 (Whelton et al. 2018, section 11.2): severe elevation needs prompt "
            "assessment for acute target organ damage (hypertensive emergency)."
        ),
        citation=ACC_AHA_2017,
        urgent=True,
    )


def _in_mm_hg(reading: BloodPressureReading) -> tuple[float, float] | str:
    """The reading's (systolic, diastolic) in mm[Hg], or why it cannot be used."""
    pressures: list[float] = []
    for name, value, unit in (
        ("systolic", reading.systolic, reading.systolic_unit),
        ("diastolic", reading.diastolic, reading.diastolic_unit),
    ):
        if (problem := invalid_magnitude(name, value)) is not None:
            return problem
        try:
            pressures.append(convert(value, unit, MM_HG))
        except UnitConversionError as exc:
            return f"{name} unit: {exc}"
    systolic, diastolic = pressures
    if systolic <= diastolic:
        return f"systolic ({systolic:g}) must be higher than diastolic ({diastolic:g})"
    return systolic, diastolic


def _no_average(
    outcome: Outcome,
    reason: str,
    *,
    readings: tuple[BloodPressureReading, ...] = (),
    occasions: int = 0,
    crisis_reading: BloodPressureReading | None = None,
) -> BloodPressureAssessment:
    return BloodPressureAssessment(
        systolic=None,
        diastolic=None,
        category=None,
        reason=reason,
        outcome=outcome,
        citation=ACC_AHA_2017,
        readings=readings,
        occasions=occasions,
        crisis_reading=crisis_reading,
    )
