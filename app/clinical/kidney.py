"""KDIGO kidney actions (pure): when a reduced eGFR calls for a nephrology referral, a staging
review, or urgent attention for an acute rise in creatinine.

* **Referral** (KDIGO 2012 CKD guideline, recommendation 5.1.1): refer to specialist kidney care
  for, among other criteria, GFR < 30 mL/min/1.73 m2 (categories G4-G5), AKI or an abrupt
  sustained fall in GFR, significant albuminuria (ACR >= 300 mg/g), progression of CKD, red
  cell casts, refractory hypertension, persistent potassium abnormalities, recurrent or
  extensive nephrolithiasis and hereditary kidney disease. Only the first two can be decided
  from creatinine alone: the service refers on G4-G5 (the newest eGFR, not during an acute rise)
  and flags the acute rise separately; the others need data the service does not read.
* **Staging review** (KDIGO 2012 definition of CKD, Table 2): eGFR < 60 for more than 3 months
  with a G3a-G3b stage is CKD to be staged and managed in primary care: a review Task with no
  referral draft.
* **AKI-like rise** (KDIGO 2012 AKI guideline, section 2.1.1, recommendation 2.1.1): an increase
  in serum creatinine by >= 0.3 mg/dL within 48 hours, or to >= 1.5 times baseline known or
  presumed to have occurred within the prior 7 days. An eGFR computed during such a rise is not
  a steady-state estimate (KDIGO 2012 CKD, 1.4.3.1 notes creatinine-based eGFR assumes steady
  state), so no staging or referral is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.clinical.egfr import KDIGO_2012_CKD, REDUCED_EGFR_THRESHOLD, gfr_category
from app.clinical.result import Citation, Suggestion

KDIGO_2012_AKI = Citation(
    title="KDIGO Clinical Practice Guideline for Acute Kidney Injury (definition, section 2.1.1)",
    source="Kidney Disease: Improving Global Outcomes AKI Work Group. Kidney Int Suppl. "
    "2012;2(1):1-138",
    url="https://kdigo.org/guidelines/acute-kidney-injury/",
)
KDIGO_2012_REFERRAL = Citation(
    title=(
        "KDIGO 2012 Clinical Practice Guideline for the Evaluation and Management of Chronic "
        "Kidney Disease, recommendation 5.1.1 (referral to specialist kidney care services)"
    ),
    source="Kidney Disease: Improving Global Outcomes CKD Work Group. Kidney Int Suppl. "
    "2013;3(1):1-150",
    url="https://kdigo.org/guidelines/ckd-evaluation-and-management/",
)

# KDIGO 2012 CKD rec. 5.1.1: refer at GFR < 30 mL/min/1.73 m2 (G4-G5).
REFERRAL_EGFR_BELOW = 30.0
# KDIGO 2012 AKI 2.1.1: rise of >= 0.3 mg/dL within 48 h, or to >= 1.5 x baseline within 7 days.
AKI_ABSOLUTE_RISE_MG_DL = 0.3
AKI_ABSOLUTE_WINDOW = timedelta(hours=48)
AKI_RELATIVE_RISE = 1.5
AKI_RELATIVE_WINDOW = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class AkiFinding:
    criterion: str  # which KDIGO criterion holds, in words
    baseline_at: datetime
    baseline_mg_dl: float
    newest_at: datetime
    newest_mg_dl: float


def aki_creatinine_rise(series: list[tuple[datetime, float]]) -> AkiFinding | None:
    """The KDIGO AKI creatinine criterion met by the newest value (mg/dL) against the lowest
    value of the 48 hours (absolute rise) or 7 days (relative rise) before it, or None."""
    values = sorted(series, key=lambda item: item[0])
    if len(values) < 2:
        return None
    newest_at, newest = values[-1]
    earlier = [(at, v) for at, v in values[:-1] if at < newest_at]
    recent = [(at, v) for at, v in earlier if newest_at - at <= AKI_ABSOLUTE_WINDOW]
    if recent:
        low_at, low = min(recent, key=lambda item: item[1])
        if newest - low >= AKI_ABSOLUTE_RISE_MG_DL - 1e-9:
            return AkiFinding(
                f"a rise of {newest - low:.2f} mg/dL within 48 hours (KDIGO: >= 0.3 mg/dL)",
                low_at,
                low,
                newest_at,
                newest,
            )
    week = [(at, v) for at, v in earlier if newest_at - at <= AKI_RELATIVE_WINDOW]
    if week:
        low_at, low = min(week, key=lambda item: item[1])
        if low > 0 and newest >= AKI_RELATIVE_RISE * low - 1e-9:
            return AkiFinding(
                f"{newest / low:.1f} times the lowest value of the prior 7 days (KDIGO: >= 1.5)",
                low_at,
                low,
                newest_at,
                newest,
            )
    return None


def aki_suggestion(finding: AkiFinding) -> Suggestion:
    return Suggestion(
        title=(
            f"URGENT: creatinine rise {finding.baseline_mg_dl:.2f} -> {finding.newest_mg_dl:.2f} "
            "mg/dL meets KDIGO AKI criteria: assess today"
        ),
        rationale=(
            f"Serum creatinine {finding.newest_mg_dl:.2f} mg/dL on "
            f"{finding.newest_at.isoformat()} against {finding.baseline_mg_dl:.2f} mg/dL on "
            f"{finding.baseline_at.isoformat()}: {finding.criterion}. KDIGO 2012 AKI guideline "
            "2.1.1 defines AKI by this creatinine criterion (urine output not assessed here). "
            "An eGFR during a rise is not a steady-state estimate; no CKD staging is derived "
            "from it."
        ),
        citation=KDIGO_2012_AKI,
        urgent=True,
    )


def referral_suggestion(newest_egfr: float) -> Suggestion | None:
    """A nephrology referral for G4-G5 (KDIGO 2012 rec. 5.1.1), or None."""
    if newest_egfr >= REFERRAL_EGFR_BELOW:
        return None
    stage = gfr_category(newest_egfr)
    return Suggestion(
        title=(
            f"eGFR {newest_egfr:g} ({stage}): approving places a referral to nephrology "
            "(KDIGO 5.1.1)"
        ),
        rationale=(
            f"The newest eGFR is {newest_egfr:g} mL/min/1.73 m2, KDIGO category {stage} "
            f"(below {REFERRAL_EGFR_BELOW:g}). KDIGO 2012 recommendation 5.1.1: refer to "
            "specialist kidney care services for GFR < 30 mL/min/1.73 m2 (G4-G5). Approving "
            "this Task makes the drafted referral to a nephrologist active."
        ),
        citation=KDIGO_2012_REFERRAL,
    )


def staging_review_suggestion(newest_egfr: float) -> Suggestion:
    """CKD to be staged and managed (G3a-G3b for more than 3 months): no referral."""
    stage = gfr_category(newest_egfr)
    return Suggestion(
        title=(
            f"Review CKD staging: eGFR below 60 for 90+ days (latest {newest_egfr:g}, {stage}); "
            "approving places no referral"
        ),
        rationale=(
            f"eGFR has been below {REDUCED_EGFR_THRESHOLD:g} mL/min/1.73 m2 on every result for "
            f"at least 90 days (latest {newest_egfr:g}, KDIGO {stage}). KDIGO 2012: GFR < 60 for "
            "more than 3 months meets the definition of CKD; stage it (GFR and albuminuria "
            "categories) and consider recording it. Referral criteria of recommendation 5.1.1 "
            "(G4-G5 among them) are not met by the eGFR, so no referral is drafted."
        ),
        citation=KDIGO_2012_CKD,
    )
