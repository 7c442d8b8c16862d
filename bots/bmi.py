"""BMI bot: body weight + body height -> a proposed BMI Observation (39156-5) for review.

Logic: docs/CLINICAL_LOGIC.md "BMI" (``app.clinical.bmi``); mapping: docs/BOTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from app.botkit.declaration import (
    BotContext,
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    OpenReviewTask,
    ProposeObservation,
    SlotPolicy,
)
from app.clinical.bmi import (
    BMI_LOINC,
    BMI_UNIT,
    WHO_BMI_CLASSIFICATION,
    BmiCategory,
)
from bots._observations import (
    BmiEvaluation,
    bmi_prefetch,
    bmi_trigger,
    cite,
    day,
    evaluate_bmi,
    quantity_text,
)

if TYPE_CHECKING:
    from datetime import datetime

BMI_DISPLAY = "Body mass index (BMI) [Ratio]"

# Labels of the WHO adult classes (WHO TRS 894, Table 2.1) as a clinician reads them.
CATEGORY_LABELS: dict[str, str] = {
    BmiCategory.UNDERWEIGHT: "underweight",
    BmiCategory.NORMAL: "normal weight",
    BmiCategory.OVERWEIGHT: "overweight",
    BmiCategory.OBESITY_CLASS_1: "obesity class I",
    BmiCategory.OBESITY_CLASS_2: "obesity class II",
    BmiCategory.OBESITY_CLASS_3: "obesity class III",
}

DECLARATION = BotDeclaration(
    name="bmi",
    version="1.2.0",
    title="Body mass index",
    citation=WHO_BMI_CLASSIFICATION,
    trigger=bmi_trigger(),
    prefetch=bmi_prefetch(),
    description=(
        "Adult BMI of the newest usable body weight with the latest height of the year before "
        "it, proposed as a preliminary Observation on the patient's results-review list (a BMI "
        "calls for no action of its own; the obesity bot makes the referral)."
    ),
    # Not actionable by itself: listed for approval, no Task of its own. A BMI older than a
    # year is not listed (a bulk load of old history gains only the current one).
    slots=(SlotPolicy("bmi", actionable=False, window=timedelta(days=365)),),
)


def category_label(category: str | None) -> str:
    return CATEGORY_LABELS.get(category or "", category or "uncategorised")


def evidence_of(evaluation: BmiEvaluation) -> tuple[Evidence, ...]:
    return (Evidence.of(evaluation.weight.view), Evidence.of(evaluation.height.view))


def evidence_time_of(evaluation: BmiEvaluation) -> datetime:
    """The clinical time of a BMI's newest evidence (the height is never later than the
    weight, but the rule is stated, not assumed)."""
    return max(evaluation.weight.effective_at, evaluation.height.effective_at)


def bmi_sentence(evaluation: BmiEvaluation) -> str:
    """The numbers behind a BMI: value, weight and height with their dates and references."""
    weight, height = evaluation.weight, evaluation.height
    return (
        f"BMI {evaluation.value:.1f} kg/m2 from body weight "
        f"{quantity_text(weight.measurement)} on {day(weight.effective_at)} "
        f"({weight.view.reference}) and body height {quantity_text(height.measurement)} on "
        f"{day(height.effective_at)} ({height.view.reference})."
    )


@dataclass(frozen=True, slots=True)
class BmiBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        evaluation = evaluate_bmi(event, context)
        if not isinstance(evaluation, BmiEvaluation):
            return evaluation
        result = evaluation.result
        label = category_label(result.category)
        evidence = evidence_of(evaluation)
        return [
            ProposeObservation(
                slot="bmi",
                loinc=BMI_LOINC,
                display=BMI_DISPLAY,
                value=evaluation.value,
                unit=BMI_UNIT,
                effective=evaluation.weight.effective_at,
                evidence=evidence,
                category=label[:1].upper() + label[1:],
            ),
            OpenReviewTask(
                slot="bmi",
                title=f"Review BMI {evaluation.value:.1f} kg/m2 ({label})",
                rationale=(
                    f"{bmi_sentence(evaluation)} WHO adult classification (Technical Report "
                    f"Series 894, Table 2.1): {label}. The derived BMI stays preliminary until "
                    f"a clinician approves it. {cite(WHO_BMI_CLASSIFICATION)}"
                ),
                priority="routine",
                evidence=evidence,
                citation=WHO_BMI_CLASSIFICATION,
                evidence_time=evidence_time_of(evaluation),
            ),
        ]


BOT = BmiBot()
