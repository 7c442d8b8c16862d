"""HbA1c (NGSP % and IFCC mmol/mol): ADA diagnostic categories and the diabetes-evaluation
rule."""

from __future__ import annotations

import re
from enum import StrEnum

from app.clinical.result import (
    Citation,
    MetricResult,
    Outcome,
    Suggestion,
    invalid_magnitude,
    round_half_up,
)
from app.fhir.units import UnitConversionError

HBA1C_LOINC = "4548-4"  # Hemoglobin A1c/Hemoglobin.total in Blood (%)
# The same measurand by named methods, also reported in % (LOINC): by HPLC, by electrophoresis.
HBA1C_HPLC_LOINC = "17856-6"
HBA1C_ELECTROPHORESIS_LOINC = "4549-2"
HBA1C_PERCENT_LOINCS = (HBA1C_LOINC, HBA1C_HPLC_LOINC, HBA1C_ELECTROPHORESIS_LOINC)
# Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol (mmol/mol): converted to NGSP %
# by the master equation below.
HBA1C_IFCC_LOINC = "59261-8"
HBA1C_LOINCS = (*HBA1C_PERCENT_LOINCS, HBA1C_IFCC_LOINC)
HBA1C_UNIT = "%"
HBA1C_DECIMALS = 1  # NGSP-certified results are reported to one decimal

# ADA Standards of Care 2025, section 2, Table 2.1 / 2.2 (A1C, NGSP-certified method).
DIABETES_HBA1C_PERCENT = 6.5  # >= 6.5 %: diabetes range
PREDIABETES_HBA1C_PERCENT = 5.7  # 5.7-6.4 %: prediabetes

# IFCC (mmol/mol) to NGSP (%) master equation: NGSP = 0.09148 x IFCC + 2.152
# (Hoelzel et al., Clin Chem 2004). Not a unit conversion: % and mmol/mol measure HbA1c on
# different reference scales, so UCUM's 1 mmol/mol = 0.1 % must never be applied here.
IFCC_TO_NGSP_SLOPE = 0.09148
IFCC_TO_NGSP_INTERCEPT = 2.152
IFCC_UNIT = "mmol/mol"

_ANNOTATION = re.compile(r"\{[^{}]*\}")

ADA_2025_DIAGNOSIS = Citation(
    title="2. Diagnosis and Classification of Diabetes: Standards of Care in Diabetes-2025",
    source="American Diabetes Association Professional Practice Committee. Diabetes Care. "
    "2025;48(Suppl 1):S27-S49",
    url="https://doi.org/10.2337/dc25-S002",
)
IFCC_NGSP_MASTER_EQUATION = Citation(
    title=(
        "IFCC reference system for measurement of hemoglobin A1c in human blood and the "
        "national standardization schemes in the United States, Japan, and Sweden: a "
        "method-comparison study"
    ),
    source="Hoelzel W, Weykamp C, Jeppsson JO, et al. Clin Chem. 2004;50(1):166-174",
    url="https://doi.org/10.1373/clinchem.2003.024802",
)


class Hba1cCategory(StrEnum):
    NORMAL = "normal"  # < 5.7 %
    PREDIABETES = "prediabetes"  # 5.7-6.4 %
    DIABETES = "diabetes"  # >= 6.5 %


def hba1c_category(percent: float) -> Hba1cCategory:
    """ADA category of an NGSP HbA1c (pass the reported, one-decimal value)."""
    if percent >= DIABETES_HBA1C_PERCENT:
        return Hba1cCategory.DIABETES
    if percent >= PREDIABETES_HBA1C_PERCENT:
        return Hba1cCategory.PREDIABETES
    return Hba1cCategory.NORMAL


def hba1c(*, value: float, unit: str = HBA1C_UNIT) -> MetricResult:
    """HbA1c as NGSP % with its ADA category.

    ``unit`` is ``%`` (NGSP/DCCT) or ``mmol/mol`` (IFCC, converted by the master equation);
    the same codes with a UCUM annotation (``%{HbA1c}``) are accepted too. Any other unit,
    a non-positive or non-finite value, or a percentage above 100 gives no result.
    """
    if (problem := invalid_magnitude("HbA1c", value)) is not None:
        return _no_hba1c(Outcome.INVALID_INPUT, problem)
    try:
        percent = hba1c_percent(value, unit)
    except UnitConversionError as exc:
        return _no_hba1c(Outcome.INVALID_INPUT, str(exc))
    supporting_citations: tuple[Citation, ...] = (
        (IFCC_NGSP_MASTER_EQUATION,) if _means(unit, IFCC_UNIT) else ()
    )
    if percent > 100:
        return _no_hba1c(Outcome.INVALID_INPUT, f"HbA1c of {percent:g} % is above 100 %")
    reported = round_half_up(percent, HBA1C_DECIMALS)
    return MetricResult.computed(
        value=reported,
        unrounded=percent,
        unit=HBA1C_UNIT,
        category=hba1c_category(reported),
        citation=ADA_2025_DIAGNOSIS,
        supporting_citations=supporting_citations,
    )


def hba1c_percent(value: float, unit: str) -> float:
    """An HbA1c on the NGSP % scale: ``%`` as is, ``mmol/mol`` (IFCC) by the master equation.

    Raises ``UnitConversionError`` for any other unit.
    """
    if _means(unit, HBA1C_UNIT):
        return value
    if _means(unit, IFCC_UNIT):
        return IFCC_TO_NGSP_SLOPE * value + IFCC_TO_NGSP_INTERCEPT
    msg = f"HbA1c unit {unit!r} is not supported: give NGSP % or IFCC mmol/mol"
    raise UnitConversionError(msg)


def diabetes_evaluation_suggestion(
    result: MetricResult, *, has_active_diabetes: bool
) -> Suggestion | None:
    """A diabetes evaluation for an HbA1c in the diabetes range, unless diabetes is known."""
    if (
        has_active_diabetes
        or result.outcome is not Outcome.COMPUTED
        or result.value is None
        or result.unit != HBA1C_UNIT
        or result.value < DIABETES_HBA1C_PERCENT
    ):
        return None
    return Suggestion(
        title=f"Evaluate for diabetes: HbA1c {result.value:g} % is in the diabetes range",
        rationale=(
            f"HbA1c {result.value:g} % is {DIABETES_HBA1C_PERCENT:g} % or higher and no active "
            "diabetes condition is recorded. ADA Standards of Care 2025: A1C >= 6.5 % meets "
            "the diagnostic criterion; without unequivocal hyperglycaemia, confirm with a "
            "second abnormal test."
        ),
        citation=ADA_2025_DIAGNOSIS,
    )


def diabetes_confirmed_suggestion(
    result: MetricResult, earlier: MetricResult, *, has_active_diabetes: bool
) -> Suggestion | None:
    """Two HbA1c results in the diabetes range (this one and an earlier one) meet the ADA
    criterion: ADA 2025, section 2: "in the absence of unequivocal hyperglycemia, diagnosis
    requires two abnormal test results from the same sample or in two separate test samples".
    A further confirmatory test is then not what to suggest; recording the diagnosis is."""
    if (
        diabetes_evaluation_suggestion(result, has_active_diabetes=has_active_diabetes) is None
        or diabetes_evaluation_suggestion(earlier, has_active_diabetes=False) is None
        or result.value is None
        or earlier.value is None
    ):
        return None
    return Suggestion(
        title=(
            f"Diabetes criteria met: HbA1c {result.value:g} % and earlier {earlier.value:g} % "
            "both in the diabetes range"
        ),
        rationale=(
            f"HbA1c {result.value:g} % and an earlier result of {earlier.value:g} % are both "
            f"{DIABETES_HBA1C_PERCENT:g} % or higher and no active diabetes condition is "
            "recorded. ADA Standards of Care 2025, section 2: two abnormal results confirm the "
            "diagnosis; consider recording diabetes and starting care."
        ),
        citation=ADA_2025_DIAGNOSIS,
    )


def _means(unit: str, reference: str) -> bool:
    """Whether ``unit`` is the UCUM code ``reference``, annotations aside (``%{HbA1c}``).

    Deliberately literal: % and mmol/mol are both dimensionless, so UCUM would also equate
    ``10*-2`` with % and ``[ppth]`` with mmol/mol; an HbA1c scale is named, never inferred.
    """
    return _ANNOTATION.sub("", unit) == reference


def _no_hba1c(outcome: Outcome, reason: str) -> MetricResult:
    return MetricResult.no_result(outcome, reason, unit=HBA1C_UNIT, citation=ADA_2025_DIAGNOSIS)
