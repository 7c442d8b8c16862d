"""Obesity bot: adult BMI >= 30 -> a proposed weight-management referral for review.

Logic: docs/CLINICAL_LOGIC.md "Obesity counselling" (``app.clinical.obesity``); the BMI
comes from the same evaluation as the ``bmi`` bot (``bots._observations.evaluate_bmi``).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.botkit.declaration import (
    BotContext,
    BotDeclaration,
    BotEvent,
    Effect,
    OpenReviewTask,
    ProposeRequest,
)
from app.clinical.obesity import USPSTF_2018_WEIGHT_LOSS, weight_management_suggestion
from app.fhir.views import SNOMED
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

DECLARATION = BotDeclaration(
    name="obesity",
    version="1.1.0",
    title="Weight-management counselling for adult obesity",
    citation=USPSTF_2018_WEIGHT_LOSS,
    trigger=bmi_trigger(),
    prefetch=bmi_prefetch(),
    description=(
        "An adult BMI of 30 or more proposes a draft referral to a weight-management programme "
        "(USPSTF 2018, grade B) with a routine review Task."
    ),
)


@dataclass(frozen=True, slots=True)
class ObesityBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        evaluation = evaluate_bmi(event, context)
        if not isinstance(evaluation, BmiEvaluation):
            return evaluation
        suggestion = weight_management_suggestion(evaluation.result)
        if suggestion is None:
            return []  # BMI below 30: nothing to suggest, nothing written
        evidence = evidence_of(evaluation)
        return [
            ProposeRequest(
                slot="weight-management",
                kind="ServiceRequest",
                code_system=SNOMED,
                code=WEIGHT_MANAGEMENT_CODE,
                display=WEIGHT_MANAGEMENT_DISPLAY,
                evidence=evidence,
            ),
            OpenReviewTask(
                slot="weight-management",
                title=suggestion.title,
                rationale=(
                    f"{bmi_sentence(evaluation)} {suggestion.rationale} {cite(suggestion.citation)}"
                ),
                priority="urgent" if suggestion.urgent else "routine",
                evidence=evidence,
                citation=suggestion.citation,
                evidence_time=evidence_time_of(evaluation),
            ),
        ]


BOT = ObesityBot()
