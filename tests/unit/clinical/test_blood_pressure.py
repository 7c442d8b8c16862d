"""ACC/AHA 2017 categories, the averaging rule (>= 2 occasions in 30 days), crisis, pairing."""

import math
from datetime import UTC, datetime, timedelta

import pytest

from app.clinical.blood_pressure import (
    ACC_AHA_2017,
    BloodPressureCategory,
    BloodPressureReading,
    assess_blood_pressure,
    blood_pressure_category,
    hypertensive_crisis_suggestion,
    is_hypertensive_crisis,
    pair_readings,
)
from app.clinical.evidence import Measurement
from app.clinical.result import Outcome

NEWEST = datetime(2024, 5, 31, 9, 0, tzinfo=UTC)
Category = BloodPressureCategory


def reading(
    systolic: float, diastolic: float, days_before: float = 0, unit: str = "mm[Hg]"
) -> BloodPressureReading:
    return BloodPressureReading(
        systolic=systolic,
        diastolic=diastolic,
        taken_at=NEWEST - timedelta(days=days_before),
        systolic_unit=unit,
        diastolic_unit=unit,
    )


# Whelton et al. 2018, Table 6, each cut-off and the value just below it; a pair spanning two
# categories takes the higher one.
@pytest.mark.parametrize(
    ("systolic", "diastolic", "category"),
    [
        (119, 79, Category.NORMAL),
        (120, 79, Category.ELEVATED),
        (129, 79, Category.ELEVATED),
        (130, 79, Category.STAGE_1_HYPERTENSION),
        (119, 80, Category.STAGE_1_HYPERTENSION),
        (139, 89, Category.STAGE_1_HYPERTENSION),
        (140, 70, Category.STAGE_2_HYPERTENSION),
        (118, 90, Category.STAGE_2_HYPERTENSION),
        (125, 85, Category.STAGE_1_HYPERTENSION),  # elevated systolic, stage 1 diastolic
        (135, 95, Category.STAGE_2_HYPERTENSION),
    ],
)
def test_acc_aha_2017_categories(systolic: float, diastolic: float, category: Category) -> None:
    assert blood_pressure_category(systolic, diastolic) is category


@pytest.mark.parametrize(
    ("systolic", "diastolic", "crisis"),
    [(179, 119, False), (180, 100, True), (150, 120, True), (200, 130, True)],
)
def test_crisis_at_180_or_120(systolic: float, diastolic: float, crisis: bool) -> None:
    assert is_hypertensive_crisis(systolic, diastolic) is crisis


class TestAverage:
    def test_average_of_two_occasions(self) -> None:
        result = assess_blood_pressure([reading(142, 91, 7), reading(138, 88)])
        assert result.outcome is Outcome.COMPUTED
        assert (result.systolic, result.diastolic) == (140, 90)  # 89.5 rounds half up
        assert result.diastolic_unrounded == 89.5
        assert result.category is Category.STAGE_2_HYPERTENSION
        assert result.occasions == 2
        assert result.citation == ACC_AHA_2017
        assert result.crisis_reading is None

    def test_all_readings_in_the_window_are_averaged(self) -> None:
        readings = [
            reading(130, 80, 20),
            reading(120, 70, 10),
            reading(122, 78, 10),
            reading(128, 76),
        ]
        result = assess_blood_pressure(readings)
        # Per occasion: day 20 130/80; day 10 121/74; today 128/76 -> 126.3/76.7 -> 126/77.
        assert (result.systolic, result.diastolic) == (126, 77)
        assert result.category is Category.ELEVATED
        assert (result.occasions, len(result.readings)) == (3, 4)

    def test_each_occasion_weighs_the_same(self) -> None:
        """Ten 165/100 on one day and one 118/75 on another: pooled 161/98, per occasion
        (ACC/AHA 2017: an average of >= 2 readings on >= 2 occasions) 142/88."""
        readings = [reading(165, 100, 3) for _ in range(10)] + [reading(118, 75)]
        result = assess_blood_pressure(readings)
        assert (result.systolic, result.diastolic) == (142, 88)
        assert result.occasions == 2

    def test_category_follows_the_rounded_average(self) -> None:
        result = assess_blood_pressure([reading(129, 70, 1), reading(130, 70)])
        assert result.systolic_unrounded == 129.5
        assert (result.systolic, result.category) == (130, Category.STAGE_1_HYPERTENSION)

    def test_one_occasion_is_not_enough(self) -> None:
        same_day = [reading(150, 95, 0.1), reading(148, 94)]
        result = assess_blood_pressure(same_day)
        assert result.systolic is None
        assert result.category is None
        assert result.outcome is Outcome.INSUFFICIENT_EVIDENCE
        assert result.reason is not None
        assert "at least 2 occasions" in result.reason
        assert result.occasions == 1

    def test_window_is_30_days_ending_at_the_newest_inclusive(self) -> None:
        at_edge = assess_blood_pressure([reading(160, 100, 30), reading(120, 70)])
        assert at_edge.occasions == 2
        assert (at_edge.systolic, at_edge.diastolic) == (140, 85)
        outside = assess_blood_pressure([reading(160, 100, 30.0001), reading(120, 70)])
        assert outside.systolic is None
        assert outside.readings == (reading(120, 70),)

    def test_window_ends_at_the_newest_reading_whatever_the_order(self) -> None:
        readings = [reading(120, 70), reading(140, 90, 3)]
        assert assess_blood_pressure(readings) == assess_blood_pressure(readings[::-1])

    def test_kpa_readings_are_converted(self) -> None:
        result = assess_blood_pressure([reading(18.6651, 12.0, 2, unit="kPa"), reading(140, 90)])
        assert (result.systolic, result.diastolic) == (140, 90)


class TestBadReadings:
    @pytest.mark.parametrize(
        ("bad", "reason_part"),
        [
            (reading(-120, 80), "systolic must be greater than zero"),
            (reading(120, math.nan), "diastolic must be a finite number"),
            (reading(120, 80, unit="mmHg"), "not a valid UCUM unit"),
            (reading(120, 80, unit="kg"), "cannot convert 'kg'"),
            (reading(80, 120), "systolic (80) must be higher than diastolic (120)"),
        ],
    )
    def test_an_unusable_reading_is_excluded_alone(
        self, bad: BloodPressureReading, reason_part: str
    ) -> None:
        del reason_part
        result = assess_blood_pressure([reading(130, 85, 5), reading(134, 87, 2), bad])
        assert result.outcome is Outcome.COMPUTED
        assert (result.systolic, result.diastolic) == (132, 86)
        assert bad not in result.readings

    @pytest.mark.parametrize(
        ("bad", "reason_part"),
        [
            (reading(-120, 80), "systolic must be greater than zero"),
            (reading(120, math.nan), "diastolic must be a finite number"),
            (reading(120, 80, unit="mmHg"), "not a valid UCUM unit"),
            (reading(120, 80, unit="kg"), "cannot convert 'kg'"),
            (reading(80, 120), "systolic (80) must be higher than diastolic (120)"),
        ],
    )
    def test_only_unusable_readings_give_no_result(
        self, bad: BloodPressureReading, reason_part: str
    ) -> None:
        result = assess_blood_pressure([bad])
        assert result.outcome is Outcome.INVALID_INPUT
        assert result.systolic is None
        assert result.reason is not None
        assert reason_part in result.reason

    def test_no_readings(self) -> None:
        assert assess_blood_pressure([]).outcome is Outcome.INSUFFICIENT_EVIDENCE


class TestCrisis:
    def test_single_crisis_reading_is_flagged_without_an_average(self) -> None:
        crisis = reading(182, 100)
        result = assess_blood_pressure([crisis])
        assert result.systolic is None
        assert result.crisis_reading == crisis
        suggestion = hypertensive_crisis_suggestion(result)
        assert suggestion is not None
        assert suggestion.urgent
        assert "182/100" in suggestion.title
        assert len(suggestion.title) < 140

    def test_newest_crisis_reading_in_the_window_is_reported(self) -> None:
        older, newer = reading(185, 100, 5), reading(150, 121, 2)
        result = assess_blood_pressure([older, newer, reading(130, 80)])
        assert result.crisis_reading == newer

    def test_no_crisis_no_suggestion(self) -> None:
        result = assess_blood_pressure([reading(179, 119, 1), reading(170, 110)])
        assert result.crisis_reading is None
        assert hypertensive_crisis_suggestion(result) is None


def single(value: float, seconds_after: float, unit: str = "mm[Hg]") -> Measurement:
    return Measurement(
        value=value, unit=unit, effective_at=NEWEST + timedelta(seconds=seconds_after)
    )


class TestPairing:
    def test_same_time_pairs(self) -> None:
        readings = pair_readings([single(140, 0)], [single(90, 0)])
        assert readings == [BloodPressureReading(systolic=140, diastolic=90, taken_at=NEWEST)]

    def test_within_five_minutes_pairs_beyond_does_not(self) -> None:
        assert len(pair_readings([single(140, 0)], [single(90, 300)])) == 1
        assert pair_readings([single(140, 0)], [single(90, 301)]) == []

    def test_each_value_pairs_once_with_the_closest(self) -> None:
        systolics = [single(140, 0), single(150, 120)]
        diastolics = [single(95, 110), single(90, 10)]
        readings = pair_readings(systolics, diastolics)
        assert [(r.systolic, r.diastolic) for r in readings] == [(140, 90), (150, 95)]

    def test_unpaired_values_form_no_reading(self) -> None:
        assert pair_readings([single(140, 0)], []) == []
        assert pair_readings([], [single(90, 0)]) == []

    def test_units_travel_with_each_value(self) -> None:
        (paired,) = pair_readings([single(18.67, 0, "kPa")], [single(90, 0)])
        assert (paired.systolic_unit, paired.diastolic_unit) == ("kPa", "mm[Hg]")
