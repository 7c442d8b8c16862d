"""HbA1c bot: diabetes range without known diabetes -> a proposed confirmatory test (or, with
an earlier result in the diabetes range too, a Task saying the criteria are met); the
prediabetes range -> a routine review Task.

Reads HbA1c in % (4548-4, 17856-6 by HPLC, 4549-2 by electrophoresis) and IFCC mmol/mol
(59261-8, converted to NGSP % by the master equation). Logic: docs/CLINICAL_LOGIC.md "HbA1c"
(``app.clinical.hba1c``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from app.fhir.views import SNOMED, ConditionView
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

CONDITIONS = "glycaemic-conditions"
HISTORY = "hba1c"

# SNOMED CT disorders that mean diabetes is already known (International Edition): the
# generic concept, types 1 and 2, and the diabetic complications Synthea records.
DIABETES_CODES: dict[str, str] = {
    "73211009": "Diabetes mellitus (disorder)",
    "46635009": "Diabetes mellitus type 1 (disorder)",
    "44054006": "Diabetes mellitus type 2 (disorder)",
    "127013003": "Disorder of kidney due to diabetes mellitus (disorder)",
    "368581000119106": "Neuropathy due to type 2 diabetes mellitus (disorder)",
    "90781000119102": "Microalbuminuria due to type 2 diabetes mellitus (disorder)",
}
PREDIABETES_CODE = "15777000"  # Prediabetes (finding)

# SNOMED CT 43396009 |Hemoglobin A1c measurement (procedure)|: the confirmatory test the ADA
# asks for (a second abnormal result, unless hyperglycaemia is unequivocal). The clinician may
# replace it by a fasting glucose or an OGTT when approving.
CONFIRMATORY_TEST_CODE = "43396009"
CONFIRMATORY_TEST_DISPLAY = "Hemoglobin A1c measurement (procedure)"

_CONDITION_CODES = ",".join(
    f"http://snomed.info/sct|{code}" for code in [*DIABETES_CODES, PREDIABETES_CODE]
)

DECLARATION = BotDeclaration(
    name="hba1c",
    version="1.1.0",
    title="HbA1c: diabetes evaluation and prediabetes",
    citation=ADA_2025_DIAGNOSIS,
    trigger=Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(*HBA1C_LOINCS),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    ),
    prefetch=(
        Prefetch(HISTORY, observation_search(*HBA1C_LOINCS, count=20)),
        Prefetch(
            CONDITIONS,
            "Condition?subject={{patient}}&clinical-status=active,recurrence,relapse"
            f"&code={_CONDITION_CODES}&_count=100",
        ),
    ),
    description=(
        "HbA1c >= 6.5 % without an active diabetes Condition proposes a confirmatory HbA1c "
        "test (a Task that the criteria are met when an earlier result was >= 6.5 % too); "
        "5.7-6.4 % without known diabetes or prediabetes opens a routine Task."
    ),
)


def _known(conditions: list[ConditionView], codes: set[str]) -> ConditionView | None:
    for condition in sorted(conditions, key=lambda view: view.reference):
        if condition.active and any(
            c.system == SNOMED and c.code in codes for c in condition.codes
        ):
            return condition
    return None


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
        current = next(c for c in series if c.view.reference == notified.reference)
        measurement = current.measurement
        result = hba1c(value=measurement.value, unit=measurement.unit)
        if result.value is None:
            return [no_result_of(result)]
        conditions = [
            condition
            for condition in context.conditions(CONDITIONS)
            if patient is None or condition.reference_of("subject") in (None, patient)
        ]
        diabetes = _known(conditions, set(DIABETES_CODES))
        evidence = (Evidence.of(notified),)
        reported_as = (
            "" if measurement.unit == "%" else f" (reported as {quantity_text(measurement)})"
        )
        shown = (
            f"HbA1c {result.value:.1f} %{reported_as} on {day(measurement.effective_at)} "
            f"({notified.reference})"
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
                        slot="diabetes-evaluation",
                        title=confirmed.title,
                        rationale=(
                            f"{shown}; earlier HbA1c {earlier_result.value:.1f} % on "
                            f"{day(earlier_view.effective_at)} ({earlier_view.view.reference}). "
                            f"{confirmed.rationale} {cite(confirmed.citation)}"
                        ),
                        priority="routine",
                        evidence=both,
                        citation=confirmed.citation,
                        evidence_time=measurement.effective_at,
                    )
                ]
        if suggestion is not None:
            return [
                ProposeRequest(
                    slot="diabetes-evaluation",
                    kind="ServiceRequest",
                    code_system=SNOMED,
                    code=CONFIRMATORY_TEST_CODE,
                    display=CONFIRMATORY_TEST_DISPLAY,
                    evidence=evidence,
                ),
                OpenReviewTask(
                    slot="diabetes-evaluation",
                    title=suggestion.title,
                    rationale=f"{shown}. {suggestion.rationale} {cite(suggestion.citation)}",
                    priority="urgent" if suggestion.urgent else "routine",
                    evidence=evidence,
                    citation=suggestion.citation,
                    evidence_time=measurement.effective_at,
                ),
            ]
        if result.category != Hba1cCategory.PREDIABETES or diabetes is not None:
            return []  # normal, or diabetes already known: nothing to suggest
        if _known(conditions, {PREDIABETES_CODE}) is not None:
            return []  # prediabetes already on the problem list
        return [
            OpenReviewTask(
                slot="prediabetes",
                title=f"Review HbA1c {result.value:.1f} %: prediabetes range",
                rationale=(
                    f"{shown} is in the prediabetes range ({PREDIABETES_HBA1C_PERCENT:g}-"
                    f"{DIABETES_HBA1C_PERCENT - 0.1:.1f} %) and neither diabetes nor "
                    "prediabetes is recorded as an active condition. ADA Standards of Care "
                    "2025, section 2 (Table 2.2): A1C 5.7-6.4 % defines prediabetes; consider "
                    f"recording it and lifestyle intervention. {cite(ADA_2025_DIAGNOSIS)}"
                ),
                priority="routine",
                evidence=evidence,
                citation=ADA_2025_DIAGNOSIS,
                evidence_time=measurement.effective_at,
            )
        ]


BOT = Hba1cBot()
