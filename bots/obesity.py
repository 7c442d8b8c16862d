"""Obesity bot: adult BMI >= 30 -> a proposed weight-management referral for review.

Logic: docs/CLINICAL_LOGIC.md "Obesity counselling" (``app.clinical.obesity``); the BMI
comes from the same evaluation as the ``bmi`` bot (``bots._observations.evaluate_bmi``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from app.botkit.declaration import (
    BotContext,
    BotDeclaration,
    BotEvent,
    Effect,
    NoResult,
    OpenReviewTask,
    ProposeRequest,
    Retract,
    SlotPolicy,
)
from app.clinical.bmi import BmiCategory
from app.clinical.obesity import USPSTF_2018_WEIGHT_LOSS, weight_management_suggestion
from app.clinical.value_sets import OBESITY, PREGNANCY
from app.fhir.views import SNOMED
from bots._chart import CONDITIONS_PREFETCH, condition_name, recorded
from bots._observations import (
    BmiEvaluation,
    bmi_prefetch,
    bmi_trigger,
    cite,
    evaluate_bmi,
)
from bots.bmi import bmi_sentence, evidence_of, evidence_time_of

# SNOMED CT 408289007 |Refer to weight management program (procedure)| (International
# Edition; SNOMED CT browser, https://browser.ihtsdotools.org/?perspective=full&conceptId1=408289007).
# The USPSTF recommendation is to "offer or refer" to an intensive behavioural programme.
WEIGHT_MANAGEMENT_CODE = "408289007"
WEIGHT_MANAGEMENT_DISPLAY = "Refer to weight management program (procedure)"
SLOT = "weight-management"
# A BMI from more than a year ago says nothing about today's weight: it opens nothing (the
# USPSTF recommends screening all adults, so a current weight is the ordinary evidence).
EVIDENCE_WINDOW = timedelta(days=365)
# A rejected referral is not offered again for a year unless the obesity class is higher.
SNOOZE = timedelta(days=365)
# Severity for the snooze: WHO classes I, II and III (higher is worse).
SEVERITY: dict[str, int] = {
    BmiCategory.OBESITY_CLASS_1: 1,
    BmiCategory.OBESITY_CLASS_2: 2,
    BmiCategory.OBESITY_CLASS_3: 3,
}
# Outcomes of the chart-aware suppressions.
CONDITION_RECORDED = "condition_recorded"
PREGNANT = "pregnant"

DECLARATION = BotDeclaration(
    name="obesity",
    version="1.2.0",
    title="Weight-management counselling for adult obesity",
    citation=USPSTF_2018_WEIGHT_LOSS,
    trigger=bmi_trigger(),
    prefetch=(*bmi_prefetch(), CONDITIONS_PREFETCH),
    description=(
        "An adult BMI of 30 or more, without obesity on the problem list and outside pregnancy, "
        "proposes a draft referral to a weight-management programme (USPSTF 2018, grade B) "
        "with a routine review Task; a newer BMI below 30 withdraws a pending one."
    ),
    slots=(SlotPolicy(SLOT, window=EVIDENCE_WINDOW, snooze=SNOOZE),),
)


@dataclass(frozen=True, slots=True)
class ObesityBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        evaluation = evaluate_bmi(event, context)
        if not isinstance(evaluation, BmiEvaluation):
            return evaluation
        suggestion = weight_management_suggestion(evaluation.result)
        when = evidence_time_of(evaluation)
        if suggestion is None:
            # BMI below 30 (a corrected weight, a weight lost): a pending referral built on an
            # older BMI no longer holds.
            return [
                Retract(
                    SLOT,
                    f"Withdrawn: the newer BMI {evaluation.value:.1f} kg/m2 of "
                    f"{when.date().isoformat()} is below 30, so the referral no longer holds",
                    when,
                )
            ]
        patient = event.patient
        pregnancy = recorded(context, PREGNANCY, patient)
        if pregnancy is not None:
            return [
                NoResult(
                    f"active pregnancy recorded ({condition_name(pregnancy)}): BMI-based "
                    "weight-management referral does not apply in pregnancy",
                    PREGNANT,
                ),
                Retract(SLOT, "Withdrawn: an active pregnancy is recorded", when),
            ]
        obesity = recorded(context, OBESITY, patient)
        if obesity is not None:
            return [
                NoResult(
                    f"obesity already recorded ({condition_name(obesity)}): its management is "
                    "the clinician's plan; no referral is suggested",
                    CONDITION_RECORDED,
                )
            ]
        evidence = evidence_of(evaluation)
        return [
            ProposeRequest(
                slot=SLOT,
                kind="ServiceRequest",
                code_system=SNOMED,
                code=WEIGHT_MANAGEMENT_CODE,
                display=WEIGHT_MANAGEMENT_DISPLAY,
                evidence=evidence,
            ),
            OpenReviewTask(
                slot=SLOT,
                title=suggestion.title,
                rationale=(
                    f"{bmi_sentence(evaluation)} {suggestion.rationale} {cite(suggestion.citation)}"
                ),
                priority="urgent" if suggestion.urgent else "routine",
                evidence=evidence,
                citation=suggestion.citation,
                evidence_time=when,
                severity=SEVERITY.get(evaluation.result.category or "", 1),
            ),
        ]


BOT = ObesityBot()
