"""KDIGO kidney actions: golden tests from the sources (KDIGO 2012 AKI 2.1.1, CKD rec. 5.1.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.clinical.kidney import (
    KDIGO_2012_AKI,
    KDIGO_2012_REFERRAL,
    aki_creatinine_rise,
    aki_suggestion,
    referral_suggestion,
    staging_review_suggestion,
)

T0 = datetime(2024, 5, 1, 8, tzinfo=UTC)


def at(hours: float, mg_dl: float) -> tuple[datetime, float]:
    return T0 + timedelta(hours=hours), mg_dl


class TestAki:
    def test_a_rise_of_0_3_within_48_hours(self) -> None:
        finding = aki_creatinine_rise([at(0, 1.0), at(48, 1.3)])
        assert finding is not None
        assert "within 48 hours" in finding.criterion
        assert aki_creatinine_rise([at(0, 1.0), at(48, 1.29)]) is None
        assert aki_creatinine_rise([at(0, 1.0), at(49, 1.3)]) is None  # and not 1.5 x

    def test_1_5_times_the_lowest_of_the_prior_7_days(self) -> None:
        finding = aki_creatinine_rise([at(0, 0.6), at(24 * 7, 0.9)])
        assert finding is not None
        assert "1.5 times" in finding.criterion
        assert aki_creatinine_rise([at(0, 0.6), at(24 * 7, 0.89)]) is None
        assert aki_creatinine_rise([at(0, 0.6), at(24 * 7 + 1, 0.9)]) is None

    def test_the_baseline_is_the_lowest_value_in_the_window(self) -> None:
        finding = aki_creatinine_rise([at(0, 1.4), at(10, 0.9), at(30, 1.25)])
        assert finding is not None
        assert finding.baseline_mg_dl == 0.9

    def test_a_fall_or_a_single_value_is_no_aki(self) -> None:
        assert aki_creatinine_rise([at(0, 2.0), at(24, 1.0)]) is None
        assert aki_creatinine_rise([at(0, 2.0)]) is None

    def test_the_suggestion_is_urgent_and_cites_kdigo_aki(self) -> None:
        finding = aki_creatinine_rise([at(0, 0.8), at(24, 2.0)])
        assert finding is not None
        suggestion = aki_suggestion(finding)
        assert suggestion.urgent
        assert suggestion.citation == KDIGO_2012_AKI
        assert len(suggestion.title) < 140


class TestReferral:
    @pytest.mark.parametrize(("egfr", "stage"), [(29, "G4"), (15, "G4"), (14, "G5")])
    def test_g4_g5_refer(self, egfr: float, stage: str) -> None:
        suggestion = referral_suggestion(egfr)
        assert suggestion is not None
        assert stage in suggestion.title
        assert "approving places a referral" in suggestion.title
        assert suggestion.citation == KDIGO_2012_REFERRAL
        assert len(suggestion.title) < 140

    def test_30_and_above_do_not_refer(self) -> None:
        assert referral_suggestion(30) is None
        assert referral_suggestion(45) is None

    def test_the_staging_review_says_it_places_no_referral(self) -> None:
        suggestion = staging_review_suggestion(48)
        assert "approving places no referral" in suggestion.title
        assert "G3a" in suggestion.title
        assert not suggestion.urgent
        assert len(suggestion.title) < 140
