"""Reporting rules shared by every calculator: half-up rounding, input checks, age from dates."""

from datetime import date

import pytest

from app.clinical.evidence import age_in_years
from app.clinical.result import (
    Citation,
    MetricResult,
    Outcome,
    invalid_magnitude,
    round_half_up,
)


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (24.95, 1, 25.0),  # half up, not to even
        (24.94999, 1, 24.9),
        (6.45, 1, 6.5),  # the float 6.45 is just below 6.45; read as the decimal written
        (59.5, 0, 60.0),
        (58.5, 0, 59.0),  # banker's rounding would give 58
        (59.49, 0, 59.0),
    ],
)
def test_round_half_up(value: float, decimals: int, expected: float) -> None:
    assert round_half_up(value, decimals) == expected


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_invalid_magnitudes_are_named(value: float) -> None:
    reason = invalid_magnitude("weight", value)
    assert reason is not None
    assert reason.startswith("weight must be")


def test_a_positive_finite_magnitude_is_fine() -> None:
    assert invalid_magnitude("weight", 0.001) is None


def test_no_result_cannot_claim_to_be_computed() -> None:
    citation = Citation(title="t", source="s", url="u")
    with pytest.raises(ValueError, match="computed"):
        MetricResult.no_result(Outcome.COMPUTED, "why", unit="1", citation=citation)


@pytest.mark.parametrize(
    ("birth", "on", "age"),
    [
        (date(1960, 5, 10), date(2020, 5, 9), 59),  # the day before the birthday
        (date(1960, 5, 10), date(2020, 5, 10), 60),  # on the birthday
        (date(2000, 2, 29), date(2018, 2, 28), 17),  # leap-day birthday, common year
        (date(2000, 2, 29), date(2018, 3, 1), 18),
        (date(2000, 2, 29), date(2020, 2, 29), 20),
        (date(2020, 1, 1), date(2020, 1, 1), 0),
    ],
)
def test_age_in_completed_years(birth: date, on: date, age: int) -> None:
    assert age_in_years(birth, on) == age


def test_age_before_birth_is_refused() -> None:
    with pytest.raises(ValueError, match="before the birth date"):
        age_in_years(date(2000, 1, 2), date(2000, 1, 1))
