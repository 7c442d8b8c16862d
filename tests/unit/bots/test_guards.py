"""What the bots refuse: implausible values, mislabelled units, bounds, absent data, deceased
patients; and the HbA1c codes and the ADA two-result rule."""

from __future__ import annotations

import pytest

from app.botkit.declaration import (
    Bot,
    Effect,
    Evidence,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.fhir.resource_json import JSONObject
from bots.blood_pressure import BOT as BLOOD_PRESSURE
from bots.bmi import BOT as BMI
from bots.egfr import BOT as EGFR
from bots.hba1c import BOT as HBA1C
from bots.obesity import BOT as OBESITY

from .fhir import bp_panel, height, observation, patient, run, weight

WOMAN_60 = patient(birth_date="1964-05-01", gender="female")
H = height("h1", 170, "2024-01-10T10:00:00Z")


def only_no_result(effects: list[Effect]) -> NoResult:
    [no_result] = effects
    assert isinstance(no_result, NoResult)
    return no_result


def with_comparator(resource: JSONObject, comparator: str) -> JSONObject:
    quantity = resource["valueQuantity"]
    assert isinstance(quantity, dict)
    return {**resource, "valueQuantity": {**quantity, "comparator": comparator}}


# ----------------------------------------------------------------------------- BMI, obesity


@pytest.mark.parametrize("bot", [BMI, OBESITY])
def test_a_height_in_metres_labelled_cm_is_refused(bot: Bot) -> None:
    w = weight("w1", 70, "2024-05-01T10:00:00Z")
    h = height("h2", 1.75, "2024-05-01T09:00:00Z")
    refused = only_no_result(run(bot, h, WOMAN_60, weights=[w], heights=[h]))
    assert refused.outcome == "unit_mislabelled"
    assert "Observation/h2" in refused.reason
    # Notified by the weight: the mislabelled height is left out and said so.
    left_out = only_no_result(run(bot, w, WOMAN_60, weights=[w], heights=[h]))
    assert left_out.outcome == "unit_mislabelled"
    assert "no body height" in left_out.reason
    assert "Left out: Observation/h2" in left_out.reason


def test_an_implausible_height_does_not_hide_an_earlier_plausible_one() -> None:
    w = weight("w1", 70, "2024-05-01T10:00:00Z")
    typo = height("h2", 1750, "2024-05-01T09:00:00Z")
    proposal, _ = run(BMI, w, WOMAN_60, weights=[w], heights=[H, typo])
    assert isinstance(proposal, ProposeObservation)
    assert proposal.evidence == (Evidence("Observation/w1", "1"), Evidence("Observation/h1", "1"))


# ----------------------------------------------------------------------------------- eGFR


def test_umol_per_l_labelled_mg_per_dl_is_refused() -> None:
    c = observation("c1", "2160-0", 88, "mg/dL", "2024-05-01T08:00:00Z")
    refused = only_no_result(run(EGFR, c, WOMAN_60, creatinine=[c]))
    assert refused.outcome == "unit_mislabelled"
    assert "plausible as 88 umol/L" in refused.reason


@pytest.mark.parametrize("comparator", ["<", "<=", ">", ">="])
def test_a_creatinine_bound_gives_no_egfr(comparator: str) -> None:
    c = with_comparator(
        observation("c1", "2160-0", 0.2, "mg/dL", "2024-05-01T08:00:00Z"), comparator
    )
    refused = only_no_result(run(EGFR, c, WOMAN_60, creatinine=[c]))
    assert refused.outcome == "inexact_value"
    assert f"{comparator}0.2 mg/dL" in refused.reason


def test_refused_results_do_not_count_in_the_ckd_series() -> None:
    # Two reduced results 120 days apart would make a CKD review; the older one is a bound.
    old = with_comparator(observation("c0", "2160-0", 3.0, "mg/dL", "2024-01-01T08:00:00Z"), ">")
    new = observation("c1", "2160-0", 3.0, "mg/dL", "2024-05-01T08:00:00Z")
    effects = run(EGFR, new, WOMAN_60, creatinine=[new, old])
    # G4 by itself drafts a referral; the bound must not make a staging review of 120 days.
    assert not any(isinstance(e, OpenReviewTask) and e.slot == "ckd-staging" for e in effects)
    assert [type(e) for e in effects][:2] == [ProposeObservation, OpenReviewTask]


def test_data_absent_and_entered_in_error_are_not_evidence() -> None:
    absent: JSONObject = {
        **observation("c1", "2160-0", None, "mg/dL", "2024-05-01T08:00:00Z"),
        "dataAbsentReason": {"coding": [{"code": "error"}]},
    }
    refused = only_no_result(run(EGFR, absent, WOMAN_60, creatinine=[absent]))
    assert refused.outcome == "not_usable"
    assert "dataAbsentReason (error)" in refused.reason
    wrong = observation(
        "c2", "2160-0", 1.0, "mg/dL", "2024-05-01T08:00:00Z", status="entered-in-error"
    )
    assert only_no_result(run(EGFR, wrong, WOMAN_60, creatinine=[wrong])).outcome == "not_usable"


# ---------------------------------------------------------------------------------- HbA1c


def a1c(oid: str, code: str, value: float, unit: str, when: str) -> JSONObject:
    return observation(oid, code, value, unit, when)


@pytest.mark.parametrize(
    ("code", "value", "unit", "reason_part"),
    [
        ("4548-4", 45, "%", "plausible as 45 mmol/mol"),
        ("59261-8", 7.1, "mmol/mol", "plausible as 7.1 %"),
        ("17856-6", 7.1, "mmol/mol", "plausible as 7.1 %"),
    ],
)
def test_hba1c_in_the_other_scale_is_refused(
    code: str, value: float, unit: str, reason_part: str
) -> None:
    notified = a1c("a1", code, value, unit, "2024-05-01T08:00:00Z")
    refused = only_no_result(run(HBA1C, notified, hba1c=[notified]))
    assert refused.outcome == "unit_mislabelled"
    assert reason_part in refused.reason


@pytest.mark.parametrize(
    ("code", "value", "unit"),
    [("17856-6", 6.8, "%"), ("4549-2", 6.8, "%"), ("59261-8", 51, "mmol/mol")],
)
def test_other_hba1c_codes_are_read(code: str, value: float, unit: str) -> None:
    notified = a1c("a1", code, value, unit, "2024-05-01T08:00:00Z")
    request, task = run(HBA1C, notified, hba1c=[notified])
    assert isinstance(request, ProposeRequest)
    assert request.code == "43396009"
    assert isinstance(task, OpenReviewTask)
    assert "6.8" in task.title  # 51 mmol/mol is 6.8 % NGSP (master equation)


def test_a_second_result_in_the_diabetes_range_says_the_criteria_are_met() -> None:
    earlier = a1c("a0", "4548-4", 6.9, "%", "2024-02-01T08:00:00Z")
    notified = a1c("a1", "59261-8", 53, "mmol/mol", "2024-05-01T08:00:00Z")
    [task] = run(HBA1C, notified, hba1c=[notified, earlier])
    assert isinstance(task, OpenReviewTask)
    assert task.slot == "diabetes-evaluation"
    assert task.title.startswith("Diabetes criteria met")
    assert "confirm with a second" not in task.rationale
    assert "two abnormal results confirm" in task.rationale
    assert task.evidence == (Evidence("Observation/a1", "1"), Evidence("Observation/a0", "1"))
    # An earlier result below 6.5 % does not confirm.
    normal = a1c("a0", "4548-4", 6.0, "%", "2024-02-01T08:00:00Z")
    effects = run(HBA1C, notified, hba1c=[notified, normal])
    assert isinstance(effects[0], ProposeRequest)
    # A later result held when an older one is notified: the suggestion rests on the newest,
    # with the notified one as the earlier abnormal result.
    later = a1c("a2", "4548-4", 7.0, "%", "2024-06-01T08:00:00Z")
    [task] = run(HBA1C, notified, hba1c=[notified, later])
    assert isinstance(task, OpenReviewTask)
    assert task.evidence == (Evidence("Observation/a2", "1"), Evidence("Observation/a1", "1"))


# ------------------------------------------------------------------------- blood pressure


def test_an_impossible_reading_opens_no_crisis_task() -> None:
    notified = bp_panel("bp1", 900, 50, "2024-05-02T08:00:00Z")
    refused = only_no_result(
        run(BLOOD_PRESSURE, notified, WOMAN_60, **{"blood-pressure": [notified]})
    )
    assert refused.outcome == "implausible_value"
    assert "systolic blood pressure 900 mm[Hg]" in refused.reason


def test_an_impossible_earlier_reading_is_left_out_of_the_average() -> None:
    typo = bp_panel("bp0", 1320, 84, "2024-05-01T08:00:00Z")
    first = bp_panel("bp1", 132, 84, "2024-04-25T08:00:00Z")
    notified = bp_panel("bp2", 136, 86, "2024-05-02T08:00:00Z")
    effects = run(BLOOD_PRESSURE, notified, WOMAN_60, **{"blood-pressure": [notified, first, typo]})
    proposal = next(e for e in effects if isinstance(e, ProposeObservation))
    assert [c.value for c in proposal.components] == [134, 85]


# ------------------------------------------------------------------------------- deceased


@pytest.mark.parametrize("death", [{"deceasedBoolean": True}, {"deceasedDateTime": "2024-04-01"}])
@pytest.mark.parametrize(
    ("bot", "notified", "prefetch"),
    [
        (BMI, weight("w1", 95, "2024-05-01T10:00:00Z"), "weights"),
        (OBESITY, weight("w1", 95, "2024-05-01T10:00:00Z"), "weights"),
        (EGFR, observation("c1", "2160-0", 3.0, "mg/dL", "2024-05-01T08:00:00Z"), "creatinine"),
        (HBA1C, observation("a1", "4548-4", 7.0, "%", "2024-05-01T08:00:00Z"), "hba1c"),
        (BLOOD_PRESSURE, bp_panel("bp1", 190, 100, "2024-05-01T08:00:00Z"), "blood-pressure"),
    ],
)
def test_a_deceased_patient_gets_no_new_suggestion(
    death: JSONObject, bot: Bot, notified: JSONObject, prefetch: str
) -> None:
    who = {**WOMAN_60, **death}
    prefetched = {prefetch: [notified], "heights": [H]}
    refused = only_no_result(run(bot, notified, who, **prefetched))
    assert refused.outcome == "patient_deceased"
    assert "patient deceased" in refused.reason
    # deceasedBoolean false is alive.
    alive = run(bot, notified, {**WOMAN_60, "deceasedBoolean": False}, **prefetched)
    assert any(isinstance(e, OpenReviewTask) for e in alive)
