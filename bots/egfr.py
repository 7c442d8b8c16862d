"""eGFR bot: creatinine -> a proposed eGFR (CKD-EPI 2021, 98979-8) and a CKD review.

Logic: docs/CLINICAL_LOGIC.md "eGFR" (``app.clinical.egfr``). Accepted creatinine
codes: 2160-0, 14682-9 and 38483-4 (creatinine in blood, Synthea's long-term series; the
caveat is in the clinical logic page).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from app.botkit.declaration import (
    BotContext,
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    Interaction,
    NoResult,
    OpenReviewTask,
    Prefetch,
    ProposeObservation,
    ProposeRequest,
    Trigger,
)
from app.clinical.egfr import (
    BLOOD_CREATININE_MASS_LOINC,
    CKD_EPI_2021,
    EGFR_LOINC,
    EGFR_UNIT,
    KDIGO_2012_CKD,
    REDUCED_EGFR_THRESHOLD,
    SERUM_CREATININE_MASS_LOINC,
    SERUM_CREATININE_MOLES_LOINC,
    ckd_review_suggestion,
    egfr_ckd_epi_2021,
)
from app.clinical.evidence import age_in_years
from app.clinical.result import MetricResult
from app.fhir.views import SNOMED
from bots._observations import (
    INVALID_INPUT,
    TimedObservation,
    cite,
    day,
    deceased,
    malformed_notified,
    merge_observations,
    no_result_of,
    not_evidence,
    notified_observation,
    observation_search,
    patient_birth_date,
    patient_reference,
    quantity_text,
    trigger_criteria,
    usable_measurements,
)

CREATININE_LOINCS = (
    SERUM_CREATININE_MASS_LOINC,
    SERUM_CREATININE_MOLES_LOINC,
    BLOOD_CREATININE_MASS_LOINC,
)
CREATININE = "creatinine"
EGFR_DISPLAY = (
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or "
    "Blood by Creatinine-based formula (CKD-EPI 2021)"
)

# SNOMED CT 306286007 |Referral to nephrologist (procedure)| (International Edition; SNOMED
# CT browser, https://browser.ihtsdotools.org/?perspective=full&conceptId1=306286007; also the
# code of the HL7 CPG-on-FHIR CKD example's referral ActivityDefinition). The draft request
# asks the clinician to decide on a kidney review; rejecting it is the ordinary answer when the
# reduced eGFR is already being managed.
CKD_REVIEW_CODE = "306286007"
CKD_REVIEW_DISPLAY = "Referral to nephrologist (procedure)"

DECLARATION = BotDeclaration(
    name="egfr",
    version="1.1.0",
    title="eGFR (CKD-EPI 2021) and CKD review",
    citation=CKD_EPI_2021,
    trigger=Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(*CREATININE_LOINCS),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    ),
    prefetch=(Prefetch(CREATININE, observation_search(*CREATININE_LOINCS, count=100)),),
    description=(
        "eGFR of the notified creatinine with its KDIGO G stage, proposed for review; a CKD "
        "review when the eGFR series (recomputed from the creatinine series) stays below 60 "
        "for 90 days or more."
    ),
)


@dataclass(frozen=True, slots=True)
class EgfrValue:
    creatinine: TimedObservation
    result: MetricResult


def egfr_of(creatinine: TimedObservation, birth_date: date, sex: str) -> MetricResult | NoResult:
    """CKD-EPI 2021 for one creatinine, age at the specimen's date."""
    try:
        age = age_in_years(birth_date, creatinine.effective_at.date())
    except ValueError as exc:
        return NoResult(f"creatinine {creatinine.view.reference}: {exc}", INVALID_INPUT)
    measurement = creatinine.measurement
    return egfr_ckd_epi_2021(
        creatinine=measurement.value,
        creatinine_unit=measurement.unit,
        age_years=age,
        sex=sex,
    )


def egfr_series(creatinines: list[TimedObservation], birth_date: date, sex: str) -> list[EgfrValue]:
    """The computed eGFR of every creatinine (results without a value are left out)."""
    series: list[EgfrValue] = []
    for creatinine in creatinines:
        result = egfr_of(creatinine, birth_date, sex)
        if isinstance(result, MetricResult) and result.value is not None:
            series.append(EgfrValue(creatinine, result))
    return series


def _egfr_text(value: EgfrValue) -> str:
    return (
        f"{value.result.value:.0f} mL/min/1.73 m2 ({value.result.category}) from creatinine "
        f"{quantity_text(value.creatinine.measurement)} on {day(value.creatinine.effective_at)}"
    )


def ckd_effects(series: list[EgfrValue]) -> list[Effect]:
    """CKD review request + Task when the reduced eGFR persists (domain rule)."""
    points = [(value.creatinine.effective_at, value.result.value or 0.0) for value in series]
    suggestion = ckd_review_suggestion(points)
    if suggestion is None:
        return []
    # Evidence: the creatinine results of the run below 60 that makes the rule hold (after the
    # latest result of 60 or more).
    latest_normal = max(
        (
            value.creatinine.effective_at
            for value in series
            if (value.result.value or 0.0) >= REDUCED_EGFR_THRESHOLD
        ),
        default=None,
    )
    run = [
        value
        for value in series
        if latest_normal is None or value.creatinine.effective_at > latest_normal
    ]
    evidence = tuple(Evidence.of(value.creatinine.view) for value in run)
    listing = "; ".join(_egfr_text(value) for value in run)
    return [
        ProposeRequest(
            slot="ckd-review",
            kind="ServiceRequest",
            code_system=SNOMED,
            code=CKD_REVIEW_CODE,
            display=CKD_REVIEW_DISPLAY,
            evidence=evidence,
        ),
        OpenReviewTask(
            slot="ckd-review",
            title=suggestion.title,
            rationale=(
                f"{suggestion.rationale} eGFR (CKD-EPI 2021) results: {listing}. "
                f"{cite(suggestion.citation)}"
            ),
            priority="urgent" if suggestion.urgent else "routine",
            evidence=evidence,
            citation=suggestion.citation,
            evidence_time=max(value.creatinine.effective_at for value in run),
        ),
    ]


@dataclass(frozen=True, slots=True)
class EgfrBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        notified = notified_observation(event)
        if isinstance(notified, list):
            return notified
        if not notified.has_loinc(*CREATININE_LOINCS):
            return [NoResult(f"{notified.reference} is not a creatinine result", INVALID_INPUT)]
        refused = (
            not_evidence(notified)
            or malformed_notified(notified, *CREATININE_LOINCS)
            or deceased(context.patient)
        )
        if refused is not None:
            return [refused]
        birth_date = patient_birth_date(context.patient)
        if isinstance(birth_date, NoResult):
            return [birth_date]
        sex = (context.patient.gender if context.patient is not None else None) or "missing"
        views = merge_observations(
            notified, context.observations(CREATININE), patient_reference(event, notified)
        )
        creatinines = usable_measurements(views, *CREATININE_LOINCS)
        current = next(c for c in creatinines if c.view.reference == notified.reference)
        result = egfr_of(current, birth_date, sex)
        if isinstance(result, NoResult):
            return [result]
        if result.value is None:
            return [no_result_of(result)]
        value = EgfrValue(current, result)
        evidence = (Evidence.of(notified),)
        effects: list[Effect] = [
            ProposeObservation(
                slot="egfr",
                loinc=EGFR_LOINC,
                display=EGFR_DISPLAY,
                value=result.value,
                unit=EGFR_UNIT,
                effective=current.effective_at,
                evidence=evidence,
                category=result.category,
            ),
            OpenReviewTask(
                slot="egfr",
                title=f"Review eGFR {result.value:.0f} mL/min/1.73 m2 (KDIGO {result.category})",
                rationale=(
                    f"eGFR {_egfr_text(value)} ({notified.reference}), age "
                    f"{age_in_years(birth_date, current.effective_at.date())}, sex {sex}. "
                    "CKD-EPI 2021 creatinine equation without race; KDIGO 2012 GFR category "
                    f"{result.category}. {cite(CKD_EPI_2021)} {cite(KDIGO_2012_CKD)}"
                ),
                priority="routine",
                evidence=evidence,
                citation=CKD_EPI_2021,
                evidence_time=current.effective_at,
            ),
        ]
        # The persistence rule as of the notified specimen: results up to its time.
        history = [c for c in creatinines if c.effective_at <= current.effective_at]
        effects.extend(ckd_effects(egfr_series(history, birth_date, sex)))
        return effects


BOT = EgfrBot()
