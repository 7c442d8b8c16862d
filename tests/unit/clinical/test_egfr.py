"""CKD-EPI 2021 (Inker et al. 2021), KDIGO G stages, creatinine units and the CKD review rule."""

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.clinical.egfr import (
    CKD_EPI_2021,
    EGFR_UNIT,
    KDIGO_2012_CKD,
    GfrCategory,
    creatinine_mg_per_dl,
    egfr_ckd_epi_2021,
    gfr_category,
    persistently_reduced_egfr,
)
from app.clinical.result import MetricResult, Outcome
from app.fhir.units import UnitConversionError


def egfr(creatinine: float, age: int, sex: str, unit: str = "mg/dL") -> MetricResult:
    return egfr_ckd_epi_2021(creatinine=creatinine, creatinine_unit=unit, age_years=age, sex=sex)


# Expected values computed independently of the code under test, from the published equation
# with 40-digit decimal arithmetic: 142 x min(Scr/k,1)^a x max(Scr/k,1)^-1.200 x 0.9938^age
# x 1.012 [female]. The male 34 y / 1.38 mg/dL case is Synthea patient 098fc002 on 2020-08-09
# (SOURCE.md: "about 68.8").
@pytest.mark.parametrize(
    ("creatinine", "age", "sex", "unrounded", "reported", "stage"),
    [
        (1.2, 60, "female", 51.8213, 52, GfrCategory.G3A),
        (1.38, 34, "male", 68.8161, 69, GfrCategory.G2),
        (1.0, 50, "male", 91.6915, 92, GfrCategory.G1),
        (0.7, 50, "female", 105.2976, 105, GfrCategory.G1),  # Scr = kappa: both terms are 1
        (0.9, 40, "male", 110.7256, 111, GfrCategory.G1),  # Scr = kappa
        (0.5, 30, "female", 129.3170, 129, GfrCategory.G1),  # below kappa: alpha term
        (0.6, 30, "male", 133.1796, 133, GfrCategory.G1),
        (3.0, 70, "male", 21.6652, 22, GfrCategory.G4),
        (2.5, 80, "female", 18.9661, 19, GfrCategory.G4),
        (1.0, 18, "female", 83.7468, 84, GfrCategory.G2),  # youngest adult
    ],
)
def test_ckd_epi_2021_worked_examples(
    creatinine: float, age: int, sex: str, unrounded: float, reported: int, stage: GfrCategory
) -> None:
    result = egfr(creatinine, age, sex)
    assert result.outcome is Outcome.COMPUTED
    assert result.unrounded is not None
    assert math.isclose(result.unrounded, unrounded, abs_tol=1e-4)
    assert result.value == reported
    assert result.category == stage
    assert result.unit == EGFR_UNIT == "mL/min/{1.73_m2}"
    assert result.citation == CKD_EPI_2021
    assert result.supporting_citations == (KDIGO_2012_CKD,)


def test_equation_is_continuous_at_kappa() -> None:
    below, above = egfr(0.7 - 1e-9, 50, "female"), egfr(0.7 + 1e-9, 50, "female")
    assert below.unrounded is not None
    assert above.unrounded is not None
    assert math.isclose(below.unrounded, above.unrounded, rel_tol=1e-6)


class TestCreatinineUnits:
    def test_umol_per_l_uses_88_4(self) -> None:
        # KDIGO 2012 and the CKD-EPI publications: creatinine 1 mg/dL = 88.4 umol/L.
        assert math.isclose(creatinine_mg_per_dl(88.4, "umol/L"), 1.0)
        assert math.isclose(creatinine_mg_per_dl(0.1061, "mmol/L"), 106.1 / 88.4)

    def test_mass_units_convert_through_ucum(self) -> None:
        assert math.isclose(creatinine_mg_per_dl(12.0, "mg/L"), 1.2)

    def test_umol_per_l_gives_the_same_egfr(self) -> None:
        result = egfr(106.1, 60, "female", unit="umol/L")  # 1.20023 mg/dL
        assert result.unrounded is not None
        assert math.isclose(result.unrounded, 51.8096, abs_tol=1e-4)
        assert result.value == 52

    # The whole-number umol/L results whose G stage the former factor 88.42 got wrong. Expected
    # values from the published equation with 40-digit decimals and Scr = umol/L / 88.4; with
    # 88.42 they were 89.52 (G1), 14.50 (G4) and 29.50 (G3b).
    @pytest.mark.parametrize(
        ("umol_per_l", "age", "unrounded", "reported", "stage"),
        [
            (95, 40, 89.4980, 89, GfrCategory.G2),
            (433, 40, 14.4976, 14, GfrCategory.G5),
            (216, 60, 29.4929, 29, GfrCategory.G4),
        ],
    )
    def test_g_stage_boundaries_with_88_4(
        self, umol_per_l: int, age: int, unrounded: float, reported: int, stage: GfrCategory
    ) -> None:
        result = egfr(umol_per_l, age, "male", unit="umol/L")
        assert result.unrounded is not None
        assert math.isclose(result.unrounded, unrounded, abs_tol=1e-4)
        assert result.value == reported
        assert result.category == stage

    @pytest.mark.parametrize(
        ("unit", "reason_part"),
        [
            ("stone", "not a valid UCUM unit"),
            ("kg", "neither a mass concentration"),
            ("%", "neither a mass concentration"),
        ],
    )
    def test_other_units_give_no_result(self, unit: str, reason_part: str) -> None:
        result = egfr(1.0, 50, "male", unit=unit)
        assert result.value is None
        assert result.outcome is Outcome.INVALID_INPUT
        assert result.reason is not None
        assert reason_part in result.reason
        with pytest.raises(UnitConversionError):
            creatinine_mg_per_dl(1.0, unit)


@pytest.mark.parametrize(
    ("creatinine", "age", "sex", "outcome", "reason_part"),
    [
        (0.0, 50, "male", Outcome.INVALID_INPUT, "greater than zero"),
        (-1.0, 50, "male", Outcome.INVALID_INPUT, "greater than zero"),
        (math.nan, 50, "male", Outcome.INVALID_INPUT, "finite"),
        (1.0, -1, "male", Outcome.INVALID_INPUT, "age must not be negative"),
        (1.0, 17, "male", Outcome.NOT_APPLICABLE, "adults (18 or older)"),
        (1.0, 50, "other", Outcome.NOT_APPLICABLE, "'female' or 'male' only, got 'other'"),
        (1.0, 50, "unknown", Outcome.NOT_APPLICABLE, "got 'unknown'"),
        (1.0, 50, "Female", Outcome.NOT_APPLICABLE, "got 'Female'"),  # FHIR codes are lowercase
    ],
)
def test_no_result_with_reason(
    creatinine: float, age: int, sex: str, outcome: Outcome, reason_part: str
) -> None:
    result = egfr(creatinine, age, sex)
    assert (result.value, result.category, result.outcome) == (None, None, outcome)
    assert result.reason is not None
    assert reason_part in result.reason


# KDIGO 2012, Table 5: each cut-off and the whole number just below it.
@pytest.mark.parametrize(
    ("value", "stage"),
    [
        (90, GfrCategory.G1),
        (89, GfrCategory.G2),
        (60, GfrCategory.G2),
        (59, GfrCategory.G3A),
        (45, GfrCategory.G3A),
        (44, GfrCategory.G3B),
        (30, GfrCategory.G3B),
        (29, GfrCategory.G4),
        (15, GfrCategory.G4),
        (14, GfrCategory.G5),
        (0, GfrCategory.G5),
    ],
)
def test_kdigo_g_stages(value: int, stage: GfrCategory) -> None:
    assert gfr_category(value) is stage


def test_stage_follows_the_whole_number_reported() -> None:
    # Female 60 y: Scr 1.067 mg/dL gives 59.67, reported 60, stage G2 (not G3a).
    result = egfr(1.067, 60, "female")
    assert result.unrounded is not None
    assert 59.5 <= result.unrounded < 60
    assert (result.value, result.category) == (60, GfrCategory.G2)


@given(
    low=st.floats(min_value=0.1, max_value=15.0),
    high=st.floats(min_value=0.1, max_value=15.0),
    age=st.integers(min_value=18, max_value=110),
    sex=st.sampled_from(["female", "male"]),
)
def test_egfr_falls_as_creatinine_rises(low: float, high: float, age: int, sex: str) -> None:
    low, high = sorted((low, high))
    at_low, at_high = egfr(low, age, sex), egfr(high, age, sex)
    assert at_low.unrounded is not None
    assert at_high.unrounded is not None
    assert at_low.unrounded >= at_high.unrounded


START = datetime(2020, 1, 1, tzinfo=UTC)


def series(*points: tuple[int, float]) -> list[tuple[datetime, float]]:
    return [(START + timedelta(days=day), value) for day, value in points]


class TestPersistentlyReducedEgfr:
    def test_below_60_for_exactly_90_days(self) -> None:
        assert persistently_reduced_egfr(series((0, 55), (45, 50), (90, 52)))

    def test_below_60_for_89_days_is_not_enough(self) -> None:
        assert not persistently_reduced_egfr(series((0, 55), (89, 52)))

    def test_a_value_of_60_resets_the_clock(self) -> None:
        assert not persistently_reduced_egfr(series((0, 55), (45, 60), (90, 52)))
        assert persistently_reduced_egfr(series((0, 75), (10, 55), (100, 52)))

    def test_newest_value_must_be_below_60(self) -> None:
        assert not persistently_reduced_egfr(series((0, 55), (95, 61)))

    def test_single_value_or_none(self) -> None:
        assert not persistently_reduced_egfr(series((0, 40)))
        assert not persistently_reduced_egfr([])

    def test_order_of_input_does_not_matter(self) -> None:
        assert persistently_reduced_egfr(series((90, 52), (0, 55), (45, 50)))

    def test_a_normal_value_at_the_same_instant_counts(self) -> None:
        assert not persistently_reduced_egfr(series((0, 55), (0, 65), (90, 52)))
