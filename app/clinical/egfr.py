"""eGFR by the CKD-EPI 2021 creatinine equation (without race), KDIGO G stage, CKD review rule.

eGFR = 142 x min(Scr/k, 1)^a x max(Scr/k, 1)^-1.200 x 0.9938^age [x 1.012 if female]
(Inker et al., N Engl J Med 2021), reported as LOINC 98979-8 in ``mL/min/{1.73_m2}``.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from app.clinical.evidence import ADULT_AGE_YEARS
from app.clinical.result import (
    Citation,
    MetricResult,
    Outcome,
    invalid_magnitude,
    round_half_up,
)
from app.fhir.units import IncompatibleUnitsError, UnitConversionError, convert

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

EGFR_LOINC = "98979-8"  # Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area]
# in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)
EGFR_UNIT = "mL/min/{1.73_m2}"
EGFR_DECIMALS = 0  # labs report eGFR as a whole number

# Creatinine codes accepted as input. 2160-0 and 14682-9 are serum/plasma, the specimen
# CKD-EPI was developed on. 38483-4 is creatinine in blood: Synthea records its long-term
# creatinine series under this code (metabolic panels), so the service accepts it as well;
# caveat: a whole-blood specimen is not what the equation was validated on, and the value is
# used as if it were serum creatinine.
SERUM_CREATININE_MASS_LOINC = "2160-0"  # Creatinine [Mass/volume] in Serum or Plasma (mg/dL)
SERUM_CREATININE_MOLES_LOINC = "14682-9"  # Creatinine [Moles/volume] in Serum or Plasma (umol/L)
BLOOD_CREATININE_MASS_LOINC = "38483-4"  # Creatinine [Mass/volume] in Blood (mg/dL)
ACCEPTED_CREATININE_LOINCS = frozenset(
    {SERUM_CREATININE_MASS_LOINC, SERUM_CREATININE_MOLES_LOINC, BLOOD_CREATININE_MASS_LOINC}
)

# Creatinine molar mass 113.12 g/mol (C4H7N3O; PubChem CID 588): converting an amount of
# substance (umol/L) into a mass concentration is chemistry, not a unit conversion. The factor
# is 1 mg/dL = 88.4 umol/L (10 000 / 113.12 = 88.40), the factor KDIGO 2012 (CKD guideline,
# "Notice": creatinine 1 mg/dL = 88.4 umol/L) and the CKD-EPI publications use; the older
# 88.42 moved results at the G-stage boundaries (tests/unit/clinical/test_egfr.py).
CREATININE_MOLAR_MASS_G_PER_MOL = 113.12
CREATININE_UMOL_PER_L_PER_MG_PER_DL = 88.4

# CKD-EPI 2021 creatinine equation without race, eGFRcr (Inker et al. 2021).
CKD_EPI_2021_MULTIPLIER = 142.0
CKD_EPI_2021_KAPPA = {"female": 0.7, "male": 0.9}  # mg/dL
CKD_EPI_2021_ALPHA = {"female": -0.241, "male": -0.302}
CKD_EPI_2021_HIGH_EXPONENT = -1.200
CKD_EPI_2021_AGE_BASE = 0.9938
CKD_EPI_2021_FEMALE_FACTOR = 1.012

# KDIGO chronicity: decreased GFR (< 60) present for > 3 months; operationalised as 90 days.
REDUCED_EGFR_THRESHOLD = 60.0
CKD_PERSISTENCE = timedelta(days=90)

CKD_EPI_2021 = Citation(
    title="New Creatinine- and Cystatin C-Based Equations to Estimate GFR without Race",
    source="Inker LA, Eneanya ND, Coresh J, et al. N Engl J Med. 2021;385(19):1737-1749",
    url="https://doi.org/10.1056/NEJMoa2102953",
)
KDIGO_2012_CKD = Citation(
    title=(
        "KDIGO 2012 Clinical Practice Guideline for the Evaluation and Management of Chronic "
        "Kidney Disease (GFR categories, Table 5; definition of CKD, Table 2)"
    ),
    source="Kidney Disease: Improving Global Outcomes CKD Work Group. Kidney Int Suppl. "
    "2013;3(1):1-150",
    url="https://kdigo.org/guidelines/ckd-evaluation-and-management/",
)


class GfrCategory(StrEnum):
    """KDIGO 2012 GFR categories, mL/min/1.73 m2."""

    G1 = "G1"  # >= 90, normal or high
    G2 = "G2"  # 60-89, mildly decreased
    G3A = "G3a"  # 45-59, mildly to moderately decreased
    G3B = "G3b"  # 30-44, moderately to severely decreased
    G4 = "G4"  # 15-29, severely decreased
    G5 = "G5"  # < 15, kidney failure


_KDIGO_LOWER_BOUNDS: tuple[tuple[float, GfrCategory], ...] = (
    (90.0, GfrCategory.G1),
    (60.0, GfrCategory.G2),
    (45.0, GfrCategory.G3A),
    (30.0, GfrCategory.G3B),
    (15.0, GfrCategory.G4),
)


def gfr_category(egfr_value: float) -> GfrCategory:
    """KDIGO G stage of an eGFR (pass the reported, whole-number value)."""
    for lower_bound, category in _KDIGO_LOWER_BOUNDS:
        if egfr_value >= lower_bound:
            return category
    return GfrCategory.G5


def creatinine_mg_per_dl(value: float, unit: str) -> float:
    """Creatinine in mg/dL from any UCUM mass or substance concentration unit.

    Raises ``UnitConversionError`` for any other unit.
    """
    try:
        return convert(value, unit, "mg/dL")
    except IncompatibleUnitsError:
        pass
    try:
        umol_per_l = convert(value, unit, "umol/L")
    except IncompatibleUnitsError as exc:
        msg = (
            f"{unit!r} is neither a mass concentration (like mg/dL) nor a substance "
            "concentration (like umol/L)"
        )
        raise IncompatibleUnitsError(msg) from exc
    return umol_per_l / CREATININE_UMOL_PER_L_PER_MG_PER_DL


def egfr_ckd_epi_2021(
    *, creatinine: float, creatinine_unit: str, age_years: int, sex: str
) -> MetricResult:
    """eGFR (CKD-EPI 2021 creatinine, no race term) with its KDIGO G stage.

    ``sex`` is FHIR ``Patient.gender``: only ``female`` and ``male`` have coefficients, any
    other value gives no result. Adults (18 or older) only. No result also for a non-positive
    or non-finite creatinine or a unit that is not a mass or substance concentration.
    """
    if (problem := invalid_magnitude("creatinine", creatinine)) is not None:
        return _no_egfr(Outcome.INVALID_INPUT, problem)
    if age_years < 0:
        return _no_egfr(Outcome.INVALID_INPUT, f"age must not be negative, got {age_years}")
    try:
        scr = creatinine_mg_per_dl(creatinine, creatinine_unit)
    except UnitConversionError as exc:
        return _no_egfr(Outcome.INVALID_INPUT, f"creatinine unit: {exc}")
    if sex not in CKD_EPI_2021_KAPPA:
        return _no_egfr(
            Outcome.NOT_APPLICABLE,
            f"CKD-EPI 2021 has coefficients for sex 'female' or 'male' only, got {sex!r}",
        )
    if age_years < ADULT_AGE_YEARS:
        return _no_egfr(
            Outcome.NOT_APPLICABLE,
            "CKD-EPI 2021 is for adults (18 or older); use a paediatric equation",
        )
    ratio = scr / CKD_EPI_2021_KAPPA[sex]
    unrounded = (
        CKD_EPI_2021_MULTIPLIER
        * min(ratio, 1.0) ** CKD_EPI_2021_ALPHA[sex]
        * max(ratio, 1.0) ** CKD_EPI_2021_HIGH_EXPONENT
        * CKD_EPI_2021_AGE_BASE**age_years
        * (CKD_EPI_2021_FEMALE_FACTOR if sex == "female" else 1.0)
    )
    value = round_half_up(unrounded, EGFR_DECIMALS)
    return MetricResult.computed(
        value=value,
        unrounded=unrounded,
        unit=EGFR_UNIT,
        category=gfr_category(value),
        citation=CKD_EPI_2021,
        supporting_citations=(KDIGO_2012_CKD,),
    )


def persistently_reduced_egfr(series: Iterable[tuple[datetime, float]]) -> bool:
    """True when eGFR has stayed below 60 for at least 90 days up to the newest value.

    Precisely: there is a value below 60 taken at least 90 days before the newest value, and
    every value from that one to the newest, both included, is below 60. Pass reported
    (whole-number) eGFR values, the ones the G stage is read from. A single value of 60 or
    more in between resets the clock; values taken at the same instant all count.
    """
    values = sorted(series, key=lambda item: item[0])
    if not values:
        return False
    newest_at = values[-1][0]
    # The clock starts after the latest value of 60 or more.
    latest_normal_at = max(
        (taken_at for taken_at, egfr in values if egfr >= REDUCED_EGFR_THRESHOLD), default=None
    )
    run = [
        taken_at
        for taken_at, _ in values
        if latest_normal_at is None or taken_at > latest_normal_at
    ]
    return bool(run) and newest_at - run[0] >= CKD_PERSISTENCE


def _no_egfr(outcome: Outcome, reason: str) -> MetricResult:
    return MetricResult.no_result(outcome, reason, unit=EGFR_UNIT, citation=CKD_EPI_2021)
