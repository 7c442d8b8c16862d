"""Weight-management counselling for adults with obesity (BMI >= 30)."""

from __future__ import annotations

from app.clinical.bmi import BMI_UNIT
from app.clinical.result import Citation, MetricResult, Outcome, Suggestion

USPSTF_2018_WEIGHT_LOSS = Citation(
    title=(
        "Behavioral Weight Loss Interventions to Prevent Obesity-Related Morbidity and "
        "Mortality in Adults: US Preventive Services Task Force Recommendation Statement"
    ),
    source="US Preventive Services Task Force. JAMA. 2018;320(11):1163-1171",
    url="https://www.uspreventiveservicestaskforce.org/uspstf/recommendation/obesity-in-adults-interventions",
)

# USPSTF 2018 (grade B): "offer or refer adults with a body mass index (BMI) of 30 or higher
# to intensive, multicomponent behavioral interventions".
COUNSELLING_BMI_THRESHOLD = 30.0


def weight_management_suggestion(adult_bmi: MetricResult) -> Suggestion | None:
    """Counselling when a computed adult BMI (reported value, kg/m2) is 30 or more."""
    if (
        adult_bmi.outcome is not Outcome.COMPUTED
        or adult_bmi.value is None
        or adult_bmi.unit != BMI_UNIT
        or adult_bmi.value < COUNSELLING_BMI_THRESHOLD
    ):
        return None
    return Suggestion(
        title=f"Offer intensive behavioural weight-management counselling (BMI {adult_bmi.value})",
        rationale=(
            f"Adult BMI {adult_bmi.value} kg/m2 is {COUNSELLING_BMI_THRESHOLD:g} or higher. "
            "USPSTF 2018 (grade B): offer or refer adults with a BMI of 30 or higher to "
            "intensive, multicomponent behavioral interventions."
        ),
        citation=USPSTF_2018_WEIGHT_LOSS,
    )
