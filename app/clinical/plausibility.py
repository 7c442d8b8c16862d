"""Plausibility guards: values no living person can have are refused, never computed from.

Real histories hold typos (a height of 1.75 cm), values sent with the wrong unit (a creatinine
of 88 "mg/dL" that is 88 umol/L, an HbA1c of 45 "%" that is 45 mmol/mol) and bounds reported
as values (``<0.2``). A calculator would turn each into a confident, wrong number. Every check
here gives a :class:`Refusal` with a reason a clinician can act on, or None.

The ranges are deliberately wide: they reach beyond the most extreme values published for a
living person, so they catch mislabelling and typos, never disease. Each range cites the
extreme it is built around (constants below). A value outside its range that would be
plausible in a unit it is commonly confused with is reported as ``unit_mislabelled`` (what the
unit probably was is said, the value is still not used); otherwise ``implausible_value``.
Used by the bots (``bots._observations``) and by ``starvit calc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from app.clinical.blood_pressure import DIASTOLIC_LOINC, MM_HG, SYSTOLIC_LOINC
from app.clinical.bmi import BODY_HEIGHT_LOINC, BODY_WEIGHT_LOINC
from app.clinical.egfr import (
    BLOOD_CREATININE_MASS_LOINC,
    SERUM_CREATININE_MASS_LOINC,
    SERUM_CREATININE_MOLES_LOINC,
    creatinine_mg_per_dl,
)
from app.clinical.hba1c import (
    HBA1C_IFCC_LOINC,
    HBA1C_PERCENT_LOINCS,
    HBA1C_UNIT,
    IFCC_UNIT,
    hba1c_percent,
)
from app.clinical.result import Citation, Outcome
from app.fhir.units import UnitConversionError, convert

if TYPE_CHECKING:
    from collections.abc import Callable

GUINNESS_HEAVIEST_MAN = Citation(
    title="Heaviest man ever: Jon Brower Minnoch, estimated 635 kg (1978)",
    source="Guinness World Records",
    url="https://www.guinnessworldrecords.com/world-records/heaviest-man",
)
TINIEST_BABIES_REGISTRY = Citation(
    title="The Tiniest Babies Registry: surviving infants from about 0.24 kg at birth",
    source="Bell EF, University of Iowa Stead Family Children's Hospital",
    url="https://webapps1.healthcare.uiowa.edu/TiniestBabies/index.aspx",
)
GUINNESS_TALLEST_MAN = Citation(
    title="Tallest man ever: Robert Wadlow, 272 cm",
    source="Guinness World Records",
    url="https://www.guinnessworldrecords.com/world-records/tallest-man-ever",
)
GUINNESS_OLDEST_PERSON = Citation(
    title="Oldest person ever: Jeanne Calment, 122 years 164 days",
    source="Guinness World Records",
    url="https://www.guinnessworldrecords.com/world-records/oldest-person",
)
TIETZ_CREATININE = Citation(
    title=(
        "Tietz Textbook of Laboratory Medicine, 7th ed.: creatinine reference intervals "
        "(adults about 0.5-1.2 mg/dL, 44-106 umol/L)"
    ),
    source="Rifai N, Chiu RWK, Young I, Burnham CD, Wittwer CT, eds. Elsevier; 2022",
    url="https://www.elsevier.com/books/tietz-textbook-of-laboratory-medicine/9780323775724",
)
NGSP_INTERFERENCES = Citation(
    title=(
        "Factors that interfere with HbA1c test results (shortened red-cell survival gives "
        "very low results; certified assays report within about 4-20 %)"
    ),
    source="National Glycohemoglobin Standardization Program (NGSP)",
    url="https://ngsp.org/factors.asp",
)
WEIGHTLIFTING_BP = Citation(
    title=(
        "Influence of breathing technique on arterial blood pressure during heavy weight "
        "lifting (peaks of 370/360 mm Hg, the highest published in people)"
    ),
    source="Narloch JA, Brandstater ME. Arch Phys Med Rehabil. 1995;76(5):457-462",
    url="https://pubmed.ncbi.nlm.nih.gov/?term=Narloch+Brandstater+1995",
)


@dataclass(frozen=True, slots=True)
class PlausibleRange:
    """What a living person's ``analyte`` can measure, in ``unit`` (both ends included)."""

    analyte: str
    low: float
    high: float
    unit: str
    citation: Citation
    # The value in ``unit`` from any unit the analyte may come in (UnitConversionError else).
    to_unit: Callable[[float, str], float]
    # Units a value of this analyte is commonly sent with by mistake.
    confused_with: tuple[str, ...] = ()

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        return f"{self.low:g}-{self.high:g} {self.unit}"


def _ucum(target: str) -> Callable[[float, str], float]:
    return lambda value, unit: convert(value, unit, target)


# Body weight, kg: from below the smallest surviving newborns (about 0.24 kg, Tiniest Babies
# Registry) to above the heaviest man recorded (635 kg, Guinness World Records).
BODY_WEIGHT = PlausibleRange(
    "body weight", 0.2, 700.0, "kg", GUINNESS_HEAVIEST_MAN, _ucum("kg"), ("g", "kg", "[lb_av]")
)
# Body height, cm: from below an extremely preterm newborn's length (about 20 cm; Tiniest
# Babies Registry) to above the tallest man recorded (272 cm, Guinness World Records).
BODY_HEIGHT = PlausibleRange(
    "body height", 20.0, 280.0, "cm", GUINNESS_TALLEST_MAN, _ucum("cm"), ("m", "cm", "[in_i]")
)
# Serum creatinine, mg/dL: a fifth of the lower reference limit (Tietz: about 0.5 mg/dL) to
# over 30 times the upper one (1.2 mg/dL); kidney failure before dialysis rarely exceeds
# 20 mg/dL. The usual confusion is umol/L sent as mg/dL (88.4 umol/L = 1 mg/dL) and back.
CREATININE = PlausibleRange(
    "creatinine",
    0.1,
    40.0,
    "mg/dL",
    TIETZ_CREATININE,
    creatinine_mg_per_dl,
    ("umol/L", "mg/dL"),
)
# HbA1c, NGSP %: 3 % is below results seen with shortened red-cell survival, 20 % above the
# reportable range of certified assays (NGSP). IFCC mmol/mol is converted by the master
# equation (9.3-195 mmol/mol); % and mmol/mol are the usual confusion.
HBA1C = PlausibleRange(
    "HbA1c", 3.0, 20.0, HBA1C_UNIT, NGSP_INTERFERENCES, hba1c_percent, (IFCC_UNIT, HBA1C_UNIT)
)
# Blood pressure, mm Hg: the highest values published in people are 370/360 mm Hg (Narloch
# and Brandstater 1995, heavy weight lifting); the lower ends stay above zero only, because a
# low reading in shock is real and must reach a clinician.
SYSTOLIC = PlausibleRange(
    "systolic blood pressure", 20.0, 370.0, MM_HG, WEIGHTLIFTING_BP, _ucum(MM_HG)
)
DIASTOLIC = PlausibleRange(
    "diastolic blood pressure", 5.0, 360.0, MM_HG, WEIGHTLIFTING_BP, _ucum(MM_HG)
)
# Age, years: the oldest person whose age is verified lived 122 years (Guinness World Records).
MAX_AGE_YEARS = 122

RANGES_BY_LOINC: Final[dict[str, PlausibleRange]] = {
    BODY_WEIGHT_LOINC: BODY_WEIGHT,
    BODY_HEIGHT_LOINC: BODY_HEIGHT,
    SERUM_CREATININE_MASS_LOINC: CREATININE,
    SERUM_CREATININE_MOLES_LOINC: CREATININE,
    BLOOD_CREATININE_MASS_LOINC: CREATININE,
    HBA1C_IFCC_LOINC: HBA1C,
    **dict.fromkeys(HBA1C_PERCENT_LOINCS, HBA1C),
    SYSTOLIC_LOINC: SYSTOLIC,
    DIASTOLIC_LOINC: DIASTOLIC,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a value is not used: ``outcome`` is one of the plausibility outcomes."""

    outcome: Outcome
    reason: str


def inexact(analyte: str, value: float, unit: str, comparator: str | None) -> Refusal | None:
    """A value reported with a comparator (``<0.2``) is a bound: no exact metric from it."""
    if comparator is None:
        return None
    return Refusal(
        Outcome.INEXACT_VALUE,
        f"{analyte} is reported as {comparator}{value:g} {unit}, a bound rather than a value: "
        "no exact result can be computed from it",
    )


def check_value(
    plausible: PlausibleRange, value: float, unit: str, comparator: str | None = None
) -> Refusal | None:
    """None when ``value`` ``unit`` is an exact value inside ``plausible``, else why not.

    A unit that does not convert, and a value that is not a finite positive number, are left
    to the calculator, which reports them as invalid input.
    """
    if (bound := inexact(plausible.analyte, value, unit, comparator)) is not None:
        return bound
    if not math.isfinite(value) or value <= 0:
        return None
    try:
        converted = plausible.to_unit(value, unit)
    except UnitConversionError:
        return None
    if plausible.contains(converted):
        return None
    shown = f"{plausible.analyte} {value:g} {unit}"
    if unit != plausible.unit:
        shown += f" ({converted:.3g} {plausible.unit})"
    for other in plausible.confused_with:
        if other == unit:
            continue
        try:
            reread = plausible.to_unit(value, other)
        except UnitConversionError:
            continue
        if plausible.contains(reread):
            return Refusal(
                Outcome.UNIT_MISLABELLED,
                f"{shown} is outside the plausible range ({plausible.text()}) but plausible as "
                f"{value:g} {other}: the unit is probably mislabelled; the value is not used "
                f"until the result is corrected. Range: {_basis(plausible)}",
            )
    return Refusal(
        Outcome.IMPLAUSIBLE_VALUE,
        f"{shown} is outside the plausible range ({plausible.text()}): probably a typing or "
        f"transmission error; the value is not used until the result is corrected. Range: "
        f"{plausible.citation.title} ({plausible.citation.source})",
    )


def _basis(plausible: PlausibleRange) -> str:
    return f"{plausible.citation.title} ({plausible.citation.source})"


def check(loinc: str, value: float, unit: str, comparator: str | None = None) -> Refusal | None:
    """``check_value`` against the range of LOINC ``loinc``; only the comparator is checked
    for a code without a range."""
    plausible = RANGES_BY_LOINC.get(loinc)
    if plausible is None:
        return inexact(f"LOINC {loinc}", value, unit, comparator)
    return check_value(plausible, value, unit, comparator)


def check_age(age_years: int) -> Refusal | None:
    """Ages from 0 to 122 years (``MAX_AGE_YEARS``)."""
    if 0 <= age_years <= MAX_AGE_YEARS:
        return None
    return Refusal(
        Outcome.IMPLAUSIBLE_VALUE,
        f"age {age_years} years is outside the plausible range (0-{MAX_AGE_YEARS} years; "
        f"{GUINNESS_OLDEST_PERSON.title}, {GUINNESS_OLDEST_PERSON.source})",
    )
