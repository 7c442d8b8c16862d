"""eGFR bot: creatinine -> a proposed eGFR (CKD-EPI 2021, 98979-8) and a CKD review.

Logic: docs/CLINICAL_LOGIC.md "eGFR" (``app.clinical.egfr``). Accepted creatinine
codes: 2160-0, 14682-9 and 38483-4 (creatinine in blood, Synthea's long-term series; the
caveat is in the clinical logic page).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

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
    Retract,
    SlotPolicy,
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
    creatinine_mg_per_dl,
    egfr_ckd_epi_2021,
    persistently_reduced_egfr,
)
from app.clinical.evidence import age_in_years
from app.clinical.kidney import (
    KDIGO_2012_REFERRAL,
    aki_creatinine_rise,
    aki_suggestion,
    referral_suggestion,
    staging_review_suggestion,
)
from app.clinical.result import MetricResult
from app.clinical.value_sets import CKD
from app.fhir.units import UnitConversionError
from app.fhir.views import SNOMED
from bots._chart import CONDITIONS_PREFETCH, condition_name, recorded
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
# code of the HL7 CPG-on-FHIR CKD example's referral ActivityDefinition). Drafted only when
# KDIGO 2012 rec. 5.1.1 criteria are met (G4-G5).
CKD_REVIEW_CODE = "306286007"
CKD_REVIEW_DISPLAY = "Referral to nephrologist (procedure)"

# Slots (protocols) and their policies. An eGFR value calls for no action of its own: it is
# listed for approval. Windows: an AKI-like rise older than 7 days is history, not an alert;
# a referral on a G4-G5 eGFR older than 180 days, or a staging review on one older than a year,
# is not opened from a bulk load of old results.
EGFR_SLOT = "egfr"
AKI_SLOT = "aki"
REFERRAL_SLOT = "ckd-referral"
STAGING_SLOT = "ckd-staging"
SLOTS = (
    SlotPolicy(EGFR_SLOT, actionable=False, window=timedelta(days=365)),
    SlotPolicy(AKI_SLOT, window=timedelta(days=7), snooze=timedelta(0)),
    SlotPolicy(REFERRAL_SLOT, window=timedelta(days=180), snooze=timedelta(days=180)),
    SlotPolicy(STAGING_SLOT, window=timedelta(days=365), snooze=timedelta(days=365)),
)
CONDITION_RECORDED = "condition_recorded"

DECLARATION = BotDeclaration(
    name="egfr",
    version="1.2.0",
    title="eGFR (CKD-EPI 2021) and CKD review",
    citation=CKD_EPI_2021,
    trigger=Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(*CREATININE_LOINCS),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    ),
    prefetch=(
        Prefetch(CREATININE, observation_search(*CREATININE_LOINCS, count=100)),
        CONDITIONS_PREFETCH,
    ),
    description=(
        "eGFR of the notified creatinine with its KDIGO G stage, listed for approval; an urgent "
        "Task for an AKI-like creatinine rise (KDIGO AKI); a nephrology referral for G4-G5 "
        "(KDIGO rec. 5.1.1); a CKD staging review (no referral) when eGFR stays below 60 for "
        "90 days or more and CKD is not recorded."
    ),
    slots=SLOTS,
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


def _mg_per_dl(creatinine: TimedObservation) -> float | None:
    try:
        return creatinine_mg_per_dl(creatinine.measurement.value, creatinine.measurement.unit)
    except UnitConversionError:
        return None


def aki_effects(history: list[TimedObservation]) -> list[Effect]:
    """An urgent Task when the newest creatinine meets the KDIGO AKI creatinine criterion."""
    points = [(c.effective_at, v) for c in history if (v := _mg_per_dl(c)) is not None]
    finding = aki_creatinine_rise(points)
    if finding is None:
        return []
    suggestion = aki_suggestion(finding)
    used = [c for c in history if c.effective_at in (finding.newest_at, finding.baseline_at)]
    used.sort(key=lambda c: c.effective_at, reverse=True)
    evidence = tuple(Evidence.of(c.view) for c in used)
    return [
        OpenReviewTask(
            slot=AKI_SLOT,
            title=suggestion.title,
            rationale=f"{suggestion.rationale} {cite(suggestion.citation)}",
            priority="urgent",
            evidence=evidence,
            citation=suggestion.citation,
            evidence_time=finding.newest_at,
            severity=1,
        )
    ]


def ckd_effects(
    newest: EgfrValue, series: list[EgfrValue], context: BotContext, patient: str | None
) -> list[Effect]:
    """The KDIGO action for ``newest`` (the notified result; ``series`` holds the results up
    to its time): a referral for G4-G5, a staging review for G3 persisting 90 days, or
    withdrawal of what no longer holds."""
    when = newest.creatinine.effective_at
    value = newest.result.value or 0.0
    referral = referral_suggestion(value)
    if referral is not None:
        evidence = (Evidence.of(newest.creatinine.view),)
        return [
            ProposeRequest(
                slot=REFERRAL_SLOT,
                kind="ServiceRequest",
                code_system=SNOMED,
                code=CKD_REVIEW_CODE,
                display=CKD_REVIEW_DISPLAY,
                evidence=evidence,
            ),
            OpenReviewTask(
                slot=REFERRAL_SLOT,
                title=referral.title,
                rationale=(
                    f"{referral.rationale} eGFR {_egfr_text(newest)}. {cite(KDIGO_2012_REFERRAL)}"
                ),
                priority="routine",
                evidence=evidence,
                citation=referral.citation,
                evidence_time=when,
                severity=2 if value < 15 else 1,  # G5 is worse than G4
            ),
            Retract(STAGING_SLOT, "Replaced by a nephrology referral (G4-G5)", when),
        ]
    withdraw_referral = Retract(
        REFERRAL_SLOT,
        f"Withdrawn: the newer eGFR {value:g} of {day(when)} is not below 30 (KDIGO 5.1.1)",
        when,
    )
    points = [(v.creatinine.effective_at, v.result.value or 0.0) for v in series]
    if not (value < REDUCED_EGFR_THRESHOLD and persistently_reduced_egfr(points)):
        return [
            withdraw_referral,
            Retract(
                STAGING_SLOT,
                f"Withdrawn: the newer eGFR {value:g} of {day(when)} no longer shows eGFR below "
                "60 for 90 days",
                when,
            ),
        ]
    known = recorded(context, CKD, patient)
    if known is not None:
        return [
            withdraw_referral,
            NoResult(
                f"chronic kidney disease already recorded ({condition_name(known)}): no staging "
                "review is suggested",
                CONDITION_RECORDED,
            ),
        ]
    latest_normal = max(
        (v.creatinine.effective_at for v in series if (v.result.value or 0.0) >= 60),
        default=None,
    )
    run = [v for v in series if latest_normal is None or v.creatinine.effective_at > latest_normal]
    evidence = tuple(Evidence.of(v.creatinine.view) for v in reversed(run))
    suggestion = staging_review_suggestion(value)
    listing = "; ".join(_egfr_text(v) for v in run)
    return [
        withdraw_referral,
        OpenReviewTask(
            slot=STAGING_SLOT,
            title=suggestion.title,
            rationale=(
                f"{suggestion.rationale} eGFR (CKD-EPI 2021) results: {listing}. "
                f"{cite(suggestion.citation)}"
            ),
            priority="routine",
            evidence=evidence,
            citation=suggestion.citation,
            evidence_time=when,
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
                slot=EGFR_SLOT,
                loinc=EGFR_LOINC,
                display=EGFR_DISPLAY,
                value=result.value,
                unit=EGFR_UNIT,
                effective=current.effective_at,
                evidence=evidence,
                category=result.category,
            ),
            OpenReviewTask(
                slot=EGFR_SLOT,
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
        # The kidney actions rest on the newest usable result, whichever was notified: a late
        # older result (an imported history) must not open what the newer one does not
        # support. During an AKI-like rise the eGFR is not a steady-state estimate: no
        # staging, no referral.
        latest = creatinines[-1]
        if latest.view.reference != current.view.reference:
            latest_result = egfr_of(latest, birth_date, sex)
            if isinstance(latest_result, NoResult) or latest_result.value is None:
                return effects
            value = EgfrValue(latest, latest_result)
        aki = aki_effects(creatinines)
        if aki:
            return [*effects, *aki]
        effects.extend(
            ckd_effects(
                value,
                egfr_series(creatinines, birth_date, sex),
                context,
                patient_reference(event, notified),
            )
        )
        return effects


BOT = EgfrBot()
