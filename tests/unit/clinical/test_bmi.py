"""BMI (WHO adult classes), the height-pairing evidence rule and the obesity counselling rule."""

import math
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clinical.bmi import (
    BMI_UNIT,
    UNDER_20_REASON,
    WHO_BMI_CLASSIFICATION,
    BmiCategory,
    bmi,
    bmi_category,
    bmi_for_weight,
    height_for_weight,
)
from app.clinical.evidence import Measurement
from app.clinical.obesity import USPSTF_2018_WEIGHT_LOSS, weight_management_suggestion
from app.clinical.result import MetricResult, Outcome
from app.fhir.units import convert

ADULT = 40


def adult_bmi(
    weight: float, height: float, weight_unit: str = "kg", height_unit: str = "cm"
) -> MetricResult:
    return bmi(
        weight=weight,
        weight_unit=weight_unit,
        height=height,
        height_unit=height_unit,
        age_years=ADULT,
    )


# CDC, "About Adult BMI", worked examples: 68 kg and 1.65 m give 24.98; 150 lb and 65 in give
# 24.96 (CDC's 703 factor). Reported to one decimal both read 25.0, and the category follows
# the reported value.
@pytest.mark.parametrize(
    ("weight", "weight_unit", "height", "height_unit", "unrounded"),
    [
        (68.0, "kg", 165.0, "cm", 24.977),
        (150.0, "[lb_av]", 65.0, "[in_i]", 24.961),
        (180.0, "[lb_av]", 70.0, "[in_i]", 25.827),
    ],
)
def test_published_worked_examples(
    weight: float, weight_unit: str, height: float, height_unit: str, unrounded: float
) -> None:
    result = adult_bmi(weight, height, weight_unit, height_unit)
    assert result.unrounded is not None
    assert math.isclose(result.unrounded, unrounded, abs_tol=5e-4)
    assert result.value == round(unrounded + 1e-9, 1)
    assert result.unit == BMI_UNIT == "kg/m2"
    assert result.category == BmiCategory.OVERWEIGHT
    assert result.citation == WHO_BMI_CLASSIFICATION


# With a height of exactly 1 m, BMI equals the weight in kg: each WHO cut-off and the value
# just below it (WHO TRS 894, Table 2.1).
@pytest.mark.parametrize(
    ("bmi_value", "category"),
    [
        (18.4, BmiCategory.UNDERWEIGHT),
        (18.5, BmiCategory.NORMAL),
        (24.9, BmiCategory.NORMAL),
        (25.0, BmiCategory.OVERWEIGHT),
        (29.9, BmiCategory.OVERWEIGHT),
        (30.0, BmiCategory.OBESITY_CLASS_1),
        (34.9, BmiCategory.OBESITY_CLASS_1),
        (35.0, BmiCategory.OBESITY_CLASS_2),
        (39.9, BmiCategory.OBESITY_CLASS_2),
        (40.0, BmiCategory.OBESITY_CLASS_3),
        (55.0, BmiCategory.OBESITY_CLASS_3),
    ],
)
def test_who_cut_offs(bmi_value: float, category: BmiCategory) -> None:
    assert bmi_category(bmi_value) is category
    result = adult_bmi(bmi_value, 1.0, height_unit="m")
    assert (result.value, result.category) == (bmi_value, category)


def test_category_follows_the_reported_one_decimal_value() -> None:
    assert adult_bmi(24.95, 1.0, height_unit="m").category == BmiCategory.OVERWEIGHT
    assert adult_bmi(24.949, 1.0, height_unit="m").category == BmiCategory.NORMAL


def test_unit_variants_give_the_same_bmi() -> None:
    kg_cm = adult_bmi(81.6466266, 177.8)
    g_m = adult_bmi(81646.6266, 1.778, "g", "m")
    lb_in = adult_bmi(180.0, 70.0, "[lb_av]", "[in_i]")
    assert kg_cm.value == g_m.value == lb_in.value == 25.8


@pytest.mark.parametrize(
    ("weight", "weight_unit", "height", "height_unit", "reason_part"),
    [
        (-70.0, "kg", 175.0, "cm", "weight must be greater than zero"),
        (70.0, "kg", 0.0, "cm", "height must be greater than zero"),
        (math.nan, "kg", 175.0, "cm", "weight must be a finite number"),
        (70.0, "kg", math.inf, "cm", "height must be a finite number"),
        (11.0, "stone", 175.0, "cm", "weight unit: 'stone' is not a valid UCUM unit"),
        (70.0, "kg", 175.0, "kg", "height unit: cannot convert 'kg' ([mass])"),
        (175.0, "cm", 70.0, "kg", "weight unit: cannot convert 'cm' ([length])"),
    ],
)
def test_bad_input_gives_no_result_with_reason(
    weight: float, weight_unit: str, height: float, height_unit: str, reason_part: str
) -> None:
    result = adult_bmi(weight, height, weight_unit, height_unit)
    assert result.value is None
    assert result.category is None
    assert result.outcome is Outcome.INVALID_INPUT
    assert result.reason is not None
    assert reason_part in result.reason


# WHO and CDC use BMI-for-age percentiles through 19: adult categories from 20.
@pytest.mark.parametrize(("age", "computed"), [(17, False), (18, False), (19, False), (20, True)])
def test_adult_categories_only_from_20(age: int, computed: bool) -> None:
    result = bmi(weight=70.0, weight_unit="kg", height=175.0, height_unit="cm", age_years=age)
    assert (result.value is not None) is computed
    if not computed:
        assert result.outcome is Outcome.NOT_APPLICABLE
        assert result.reason == UNDER_20_REASON


WEIGHT_AT = datetime(2021, 6, 14, 10, 0, tzinfo=UTC)


def height_at(moment: datetime, cm: float = 175.0) -> Measurement:
    return Measurement(value=cm, unit="cm", effective_at=moment)


class TestHeightForWeight:
    def test_latest_height_in_the_year_before_wins(self) -> None:
        older = height_at(WEIGHT_AT - timedelta(days=200), 170.0)
        newer = height_at(WEIGHT_AT - timedelta(days=10), 171.0)
        assert height_for_weight(WEIGHT_AT, [newer, older]) is newer

    def test_boundaries_365_days_before_and_same_instant_are_included(self) -> None:
        year_before = height_at(WEIGHT_AT - timedelta(days=365))
        assert height_for_weight(WEIGHT_AT, [year_before]) is year_before
        same_instant = height_at(WEIGHT_AT)
        assert height_for_weight(WEIGHT_AT, [same_instant]) is same_instant

    def test_too_old_or_later_heights_are_not_used(self) -> None:
        too_old = height_at(WEIGHT_AT - timedelta(days=365, seconds=1))
        later = height_at(WEIGHT_AT + timedelta(seconds=1))
        assert height_for_weight(WEIGHT_AT, [too_old, later]) is None

    def test_offsets_are_compared_as_instants(self) -> None:
        noon_cest = datetime(2021, 6, 14, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        assert height_for_weight(WEIGHT_AT, [height_at(noon_cest)]) is not None  # 10:00 UTC
        later_cest = datetime(2021, 6, 14, 12, 1, tzinfo=timezone(timedelta(hours=2)))
        assert height_for_weight(WEIGHT_AT, [height_at(later_cest)]) is None


class TestBmiForWeight:
    birth = date(1980, 6, 14)

    def test_pairs_weight_with_height_of_the_year_before(self) -> None:
        weight = Measurement(value=81.0, unit="kg", effective_at=WEIGHT_AT)
        result = bmi_for_weight(
            weight, [height_at(WEIGHT_AT - timedelta(days=30), 180.0)], birth_date=self.birth
        )
        assert (result.value, result.category) == (25.0, BmiCategory.OVERWEIGHT)

    def test_no_recent_height_gives_no_result(self) -> None:
        weight = Measurement(value=81.0, unit="kg", effective_at=WEIGHT_AT)
        result = bmi_for_weight(
            weight, [height_at(WEIGHT_AT - timedelta(days=400))], birth_date=self.birth
        )
        assert result.value is None
        assert result.outcome is Outcome.INSUFFICIENT_EVIDENCE
        assert result.reason is not None
        assert "365 days" in result.reason

    def test_age_is_taken_on_the_weights_date(self) -> None:
        heights = [height_at(WEIGHT_AT)]
        weight = Measurement(value=70.0, unit="kg", effective_at=WEIGHT_AT)
        turns_20_tomorrow = date(2001, 6, 15)
        turns_20_today = date(2001, 6, 14)
        assert bmi_for_weight(weight, heights, birth_date=turns_20_tomorrow).value is None
        assert bmi_for_weight(weight, heights, birth_date=turns_20_today).value is not None

    def test_weight_before_birth_is_invalid(self) -> None:
        weight = Measurement(value=3.0, unit="kg", effective_at=WEIGHT_AT)
        result = bmi_for_weight(weight, [height_at(WEIGHT_AT)], birth_date=date(2022, 1, 1))
        assert result.outcome is Outcome.INVALID_INPUT


class TestWeightManagementSuggestion:
    @pytest.mark.parametrize(
        ("bmi_value", "suggested"), [(29.9, False), (30.0, True), (41.0, True)]
    )
    def test_counselling_from_bmi_30(self, bmi_value: float, suggested: bool) -> None:
        suggestion = weight_management_suggestion(adult_bmi(bmi_value, 1.0, height_unit="m"))
        assert (suggestion is not None) is suggested
        if suggestion is not None:
            assert suggestion.citation == USPSTF_2018_WEIGHT_LOSS
            assert f"BMI {bmi_value}" in suggestion.title
            assert len(suggestion.title) < 140
            assert not suggestion.urgent

    def test_reported_value_decides(self) -> None:
        assert weight_management_suggestion(adult_bmi(29.96, 1.0, height_unit="m")) is not None

    def test_no_suggestion_without_an_adult_bmi(self) -> None:
        child = bmi(weight=90.0, weight_unit="kg", height=150.0, height_unit="cm", age_years=12)
        assert weight_management_suggestion(child) is None


@given(
    weight_kg=st.floats(min_value=20.0, max_value=300.0),
    height_cm=st.floats(min_value=100.0, max_value=230.0),
)
def test_bmi_is_invariant_under_unit_conversion(weight_kg: float, height_cm: float) -> None:
    metric = adult_bmi(weight_kg, height_cm)
    imperial = adult_bmi(
        convert(weight_kg, "kg", "[lb_av]"),
        convert(height_cm, "cm", "[in_i]"),
        "[lb_av]",
        "[in_i]",
    )
    assert metric.unrounded is not None
    assert imperial.unrounded is not None
    assert math.isclose(metric.unrounded, imperial.unrounded, rel_tol=1e-9)
