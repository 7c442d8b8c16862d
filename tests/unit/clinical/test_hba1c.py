"""HbA1c: ADA 2025 categories, IFCC master equation, diabetes-evaluation rule."""

import math

import pytest

from app.clinical.hba1c import (
    ADA_2025_DIAGNOSIS,
    IFCC_NGSP_MASTER_EQUATION,
    Hba1cCategory,
    diabetes_evaluation_suggestion,
    hba1c,
    hba1c_category,
)
from app.clinical.result import Outcome


# ADA Standards of Care 2025, Table 2.2 (A1C): each cut-off and the value just below it.
@pytest.mark.parametrize(
    ("percent", "category"),
    [
        (5.6, Hba1cCategory.NORMAL),
        (5.7, Hba1cCategory.PREDIABETES),
        (6.4, Hba1cCategory.PREDIABETES),
        (6.5, Hba1cCategory.DIABETES),
        (7.6, Hba1cCategory.DIABETES),
        (3.1, Hba1cCategory.NORMAL),
    ],
)
def test_ada_categories(percent: float, category: Hba1cCategory) -> None:
    assert hba1c_category(percent) is category
    result = hba1c(value=percent)
    assert (result.value, result.unit, result.category) == (percent, "%", category)
    assert result.citation == ADA_2025_DIAGNOSIS


def test_category_follows_the_one_decimal_value() -> None:
    assert hba1c(value=6.45).category == Hba1cCategory.DIABETES  # reported 6.5
    assert hba1c(value=6.449).category == Hba1cCategory.PREDIABETES  # reported 6.4


# ADA lists 39 mmol/mol for 5.7 % and 48 mmol/mol for 6.5 %; the master equation
# NGSP = 0.09148 x IFCC + 2.152 (Hoelzel et al. 2004) reproduces them.
@pytest.mark.parametrize(
    ("mmol_per_mol", "percent", "category"),
    [
        (39.0, 5.7, Hba1cCategory.PREDIABETES),
        (48.0, 6.5, Hba1cCategory.DIABETES),
        (47.0, 6.5, Hba1cCategory.DIABETES),  # 6.45 reported as 6.5
        (46.0, 6.4, Hba1cCategory.PREDIABETES),
        (38.0, 5.6, Hba1cCategory.NORMAL),
    ],
)
def test_ifcc_mmol_per_mol(mmol_per_mol: float, percent: float, category: Hba1cCategory) -> None:
    result = hba1c(value=mmol_per_mol, unit="mmol/mol")
    assert (result.value, result.unit, result.category) == (percent, "%", category)
    assert result.unrounded is not None
    assert math.isclose(result.unrounded, 0.09148 * mmol_per_mol + 2.152)
    assert result.supporting_citations == (IFCC_NGSP_MASTER_EQUATION,)


def test_annotated_percent_is_percent() -> None:
    assert hba1c(value=6.7, unit="%{HbA1c}").value == 6.7


@pytest.mark.parametrize(
    ("value", "unit", "reason_part"),
    [
        (0.067, "1", "is not supported"),  # a fraction: never guessed to be 6.7 %
        (67.0, "[ppth]", "is not supported"),  # equal to mmol/mol in UCUM, but not named
        (6.7, "10*-2", "is not supported"),
        (6.7, "mg/dL", "is not supported"),
        (6.7, "percent", "is not supported"),
        (-6.7, "%", "greater than zero"),
        (math.inf, "%", "finite"),
        (101.0, "%", "above 100 %"),
    ],
)
def test_bad_input_gives_no_result(value: float, unit: str, reason_part: str) -> None:
    result = hba1c(value=value, unit=unit)
    assert (result.value, result.category, result.outcome) == (None, None, Outcome.INVALID_INPUT)
    assert result.reason is not None
    assert reason_part in result.reason


class TestDiabetesEvaluation:
    @pytest.mark.parametrize(("percent", "suggested"), [(6.4, False), (6.5, True), (7.6, True)])
    def test_from_6_5_percent(self, percent: float, suggested: bool) -> None:
        suggestion = diabetes_evaluation_suggestion(hba1c(value=percent), has_active_diabetes=False)
        assert (suggestion is not None) is suggested
        if suggestion is not None:
            assert suggestion.citation == ADA_2025_DIAGNOSIS
            assert f"{percent:g} %" in suggestion.title
            assert len(suggestion.title) < 140

    def test_not_when_diabetes_is_already_active(self) -> None:
        assert diabetes_evaluation_suggestion(hba1c(value=7.2), has_active_diabetes=True) is None

    def test_not_without_a_result(self) -> None:
        no_result = hba1c(value=7.2, unit="mg/dL")
        assert diabetes_evaluation_suggestion(no_result, has_active_diabetes=False) is None
