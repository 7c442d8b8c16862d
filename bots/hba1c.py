"""HbA1c bot: diabetes range without known diabetes -> a proposed confirmatory test (or, with
an earlier result in the diabetes range too, a Task saying the criteria are met); the
prediabetes range -> a routine review Task.

Reads HbA1c in % (4548-4, 17856-6 by HPLC, 4549-2 by electrophoresis) and IFCC mmol/mol
(59261-8, converted to NGSP % by the master equation). Logic: docs/CLINICAL_LOGIC.md "HbA1c"
(``app.clinical.hba1c``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

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
    ProposeRequest,
    SlotPolicy,
    Trigger,
)
from app.clinical.hba1c import (
    ADA_2025_DIAGNOSIS,
    DIABETES_HBA1C_PERCENT,
    HBA1C_LOINCS,
    PREDIABETES_HBA1C_PERCENT,
    Hba1cCategory,
    diabetes_confirmed_suggestion,
    diabetes_evaluation_suggestion,
    hba1c,
)
from app.clinical.result import MetricResult
from app.clinical.value_sets import DIABETES, HBA1C_UNRELIABLE, PREDIABETES
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
    patient_reference,
    quantity_text,
    trigger_criteria,
    usable_measurements,
)

HISTORY = "hba1c"
# Known diabetes and prediabetes are read from the shipped value sets
# (app/clinical/data/condition_value_sets.json): descendants such as 313436004 and ICD-10 E11.9
# count, not only the generic concepts.
EVALUATION_SLOT = "diabetes-evaluation"
PREDIABETES_SLOT = "prediabetes"
SLOTS = (
    # An HbA1c older than a year opens nothing; a rejected suggestion rests for a year unless
    # the evidence is worse (diabetes range twice after a single one).
    SlotPolicy(EVALUATION_SLOT, window=timedelta(days=365), snooze=timedelta(days=365)),
    SlotPolicy(PREDIABETES_SLOT, window=timedelta(days=365), snooze=timedelta(days=365)),
)

# SNOMED CT 43396009 |Hemoglobin A1c measurement (procedure)|: the confirmatory test the ADA
# asks for (a second abnormal result, unless hyperglycaemia is unequivocal). The clinician may
# replace it by a fasting glucose or an OGTT when approving.
CONFIRMATORY_TEST_CODE = "43396009"
CONFIRMATORY_TEST_DISPLAY = "Hemoglobin A1c measurement (procedure)"

DECLARATION = BotDeclaration(
    name="hba1c",
    version="1.2.0",
    title="HbA1c: diabetes evaluation and prediabetes",
    citation=ADA_2025_DIAGNOSIS,
    trigger=Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(*HBA1C_LOINCS),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    ),
    prefetch=(
        Prefetch(HISTORY, observation_search(*HBA1C_LOINCS, count=20)),
        CONDITIONS_PREFETCH,
    ),
    description=(
        "HbA1c >= 6.5 % without an active diabetes Condition proposes a confirmatory HbA1c "
        "test (a Task that the criteria are met when an earlier result was >= 6.5 % too); "
        "5.7-6.4 % without known diabetes or prediabetes opens a routine Task. Conditions that "
        "make A1C unreliable are named in the rationale (ADA)."
    ),
    slots=SLOTS,
)


def caveat(context: BotContext, patient: str | None) -> str:
    """The ADA's warning when a recorded condition makes A1C unreliable, else ""."""
    condition = recorded(context, HBA1C_UNRELIABLE, patient)
    if condition is None:
        return ""
    return (
        f" Caution: {condition_name(condition)} is recorded; the ADA (Standards of Care 2025, "
        "section 2) warns that A1C may be unreliable with altered red-cell turnover (anaemia, "
        "haemolysis, recent transfusion), haemoglobin variants, pregnancy and dialysis: "
        "confirm with plasma glucose criteria."
    )


def _earlier_in_diabetes_range(
    series: list[TimedObservation], current: TimedObservation
) -> tuple[TimedObservation, MetricResult] | None:
    """The newest usable HbA1c taken before ``current`` whose result is >= 6.5 %."""
    for item in reversed(series):
        if item.effective_at >= current.effective_at:
            continue
        result = hba1c(value=item.measurement.value, unit=item.measurement.unit)
        if result.value is not None and result.value >= DIABETES_HBA1C_PERCENT:
            return item, result
    return None


@dataclass(frozen=True, slots=True)
class Hba1cBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        notified = notified_observation(event)
        if isinstance(notified, list):
            return notified
        if not notified.has_loinc(*HBA1C_LOINCS):
            return [
                NoResult(
                    f"{notified.reference} is not an HbA1c ({', '.join(HBA1C_LOINCS)})",
                    INVALID_INPUT,
                )
            ]
        refused = (
            not_evidence(notified)
            or malformed_notified(notified, *HBA1C_LOINCS)
            or deceased(context.patient)
        )
        if refused is not None:
            return [refused]
        patient = patient_reference(event, notified)
        views = merge_observations(notified, context.observations(HISTORY), patient)
        series = usable_measurements(views, *HBA1C_LOINCS)
        # The suggestion rests on the newest usable result held, whichever was notified: a late
        # older result (an imported history) never opens what the newest does not support.
        current = series[-1]
        measurement = current.measurement
        result = hba1c(value=measurement.value, unit=measurement.unit)
        if result.value is None:
            return [no_result_of(result)]
        diabetes = recorded(context, DIABETES, patient)
        warning = caveat(context, patient)
        evidence = (Evidence.of(current.view),)
        reported_as = (
            "" if measurement.unit == "%" else f" (reported as {quantity_text(measurement)})"
        )
        shown = (
            f"HbA1c {result.value:.1f} %{reported_as} on {day(measurement.effective_at)} "
            f"({current.view.reference})"
        )
        suggestion = diabetes_evaluation_suggestion(
            result, has_active_diabetes=diabetes is not None
        )
        earlier = _earlier_in_diabetes_range(series, current)
        if suggestion is not None and earlier is not None:
            earlier_view, earlier_result = earlier
            confirmed = diabetes_confirmed_suggestion(
                result, earlier_result, has_active_diabetes=diabetes is not None
            )
            if confirmed is not None:
                both = (evidence[0], Evidence.of(earlier_view.view))
                return [
                    OpenReviewTask(
                        slot=EVALUATION_SLOT,
                        title=confirmed.title,
                        rationale=(
                            f"{shown}; earlier HbA1c {earlier_result.value:.1f} % on "
                            f"{day(earlier_view.effective_at)} ({earlier_view.view.reference}). "
                            f"{confirmed.rationale}{warning} {cite(confirmed.citation)}"
                        ),
                        priority="routine",
                        evidence=both,
                        citation=confirmed.citation,
                        evidence_time=measurement.effective_at,
                        severity=2,
                    )
                ]
        if suggestion is not None:
            return [
                ProposeRequest(
                    slot=EVALUATION_SLOT,
                    kind="ServiceRequest",
                    code_system=SNOMED,
                    code=CONFIRMATORY_TEST_CODE,
                    display=CONFIRMATORY_TEST_DISPLAY,
                    evidence=evidence,
                ),
                OpenReviewTask(
                    slot=EVALUATION_SLOT,
                    title=suggestion.title,
                    rationale=(
                        f"{shown}. {suggestion.rationale}{warning} {cite(suggestion.citation)}"
                    ),
                    priority="urgent" if suggestion.urgent else "routine",
                    evidence=evidence,
                    citation=suggestion.citation,
                    evidence_time=measurement.effective_at,
                    severity=1,
                ),
            ]
        if result.category != Hba1cCategory.PREDIABETES or diabetes is not None:
            return []  # normal, or diabetes already known: nothing to suggest
        if recorded(context, PREDIABETES, patient) is not None:
            return []  # prediabetes already on the problem list
        return [
            OpenReviewTask(
                slot=PREDIABETES_SLOT,
                title=f"Review HbA1c {result.value:.1f} %: prediabetes range",
                rationale=(
                    f"{shown} is in the prediabetes range ({PREDIABETES_HBA1C_PERCENT:g}-"
                    f"{DIABETES_HBA1C_PERCENT - 0.1:.1f} %) and neither diabetes nor "
                    "prediabetes is recorded as an active condition. ADA Standards of Care "
                    "2025, section 2 (Table 2.2): A1C 5.7-6.4 % defines prediabetes; consider "
                    f"recording it and lifestyle intervention.{warning} {cite(ADA_2025_DIAGNOSIS)}"
                ),
                priority="routine",
                evidence=evidence,
                citation=ADA_2025_DIAGNOSIS,
                evidence_time=measurement.effective_at,
            )
        ]


BOT = Hba1cBot()
