"""BMI and obesity bots on hand-built FHIR JSON."""

from datetime import datetime, timedelta, timezone

import pytest

from app.botkit.declaration import (
    Effect,
    Evidence,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
    Retract,
)
from app.fhir.resource_json import JSONObject
from bots.bmi import BOT as BMI
from bots.obesity import BOT as OBESITY

from .fhir import context, event, height, observation, patient, run, weight

H = height("h1", 170, "2024-01-10T10:00:00+01:00")


def bmi_effects(*resources: JSONObject, notified: JSONObject | None = None) -> list[Effect]:
    weights = [r for r in resources if "29463-7" in str(r["code"])]
    heights = [r for r in resources if "8302-2" in str(r["code"])]
    target = notified if notified is not None else resources[0]
    return run(BMI, target, weights=weights, heights=heights)


class TestDeclaration:
    def test_bmi(self) -> None:
        d = BMI.declaration
        assert (d.name, d.version) == ("bmi", "1.2.0")
        assert (
            d.trigger.criteria
            == "Observation?code=http://loinc.org|29463-7,http://loinc.org|8302-2"
        )
        assert Interaction.DELETE in d.trigger.interactions
        queries = {p.name: p.query for p in d.prefetch}
        assert queries["weights"] == (
            "Observation?subject={{patient}}&code=http://loinc.org|29463-7&_sort=-date&_count=20"
        )
        assert "8302-2" in queries["heights"]
        assert "WHO" in d.citation.source

    def test_obesity(self) -> None:
        d = OBESITY.declaration
        assert (d.name, d.version) == ("obesity", "1.2.0")
        assert d.trigger.criteria == BMI.declaration.trigger.criteria
        assert "USPSTF" in d.citation.source or "Preventive" in d.citation.source


class TestBmi:
    def test_golden_obesity_class_1(self) -> None:
        w = weight("w1", 90, "2024-05-02T09:30:00+01:00", version="3")
        effects = bmi_effects(w, H)
        assert len(effects) == 2
        proposal, task = effects
        assert isinstance(proposal, ProposeObservation)
        assert (proposal.slot, proposal.loinc, proposal.unit) == ("bmi", "39156-5", "kg/m2")
        assert proposal.value == 31.1  # 90 / 1.70^2 = 31.14
        assert proposal.category == "Obesity class I"
        assert proposal.effective == datetime(
            2024, 5, 2, 9, 30, tzinfo=timezone(timedelta(hours=1))
        )
        assert proposal.evidence == (
            Evidence("Observation/w1", "3"),
            Evidence("Observation/h1", "1"),
        )
        assert isinstance(task, OpenReviewTask)
        assert task.slot == "bmi"
        assert task.priority == "routine"
        assert task.title == "Review BMI 31.1 kg/m2 (obesity class I)"
        assert len(task.title) < 140
        assert "90 kg on 2024-05-02" in task.rationale
        assert "170 cm on 2024-01-10" in task.rationale
        assert "WHO" in task.rationale
        assert task.evidence == proposal.evidence

    def test_task_opened_for_a_normal_bmi_too(self) -> None:
        effects = bmi_effects(weight("w1", 60, "2024-05-02T09:30:00+01:00"), H)
        proposal, task = effects
        assert isinstance(proposal, ProposeObservation)
        assert proposal.value == 20.8
        assert proposal.category == "Normal weight"
        assert isinstance(task, OpenReviewTask)
        assert task.title == "Review BMI 20.8 kg/m2 (normal weight)"

    def test_pounds_and_inches(self) -> None:
        w = observation("w1", "29463-7", 180, "[lb_av]", "2024-05-02T09:30:00Z")
        h = observation("h1", "8302-2", 70, "[in_i]", "2024-05-01T09:30:00Z")
        proposal = bmi_effects(w, h)[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.value == 25.8

    def test_newest_usable_weight_when_a_height_is_notified(self) -> None:
        old = weight("w-old", 80, "2024-02-01T09:00:00Z")
        new = weight("w-new", 95, "2024-04-01T09:00:00Z")
        prelim = weight("w-prelim", 120, "2024-05-01T09:00:00Z", status="preliminary")
        effects = bmi_effects(old, new, prelim, H, notified=H)
        proposal = effects[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.evidence[0] == Evidence("Observation/w-new", "1")
        assert proposal.value == 32.9  # 95 / 1.7^2 = 32.87

    def test_entered_in_error_weight_falls_back_to_the_previous(self) -> None:
        kept = weight("w1", 80, "2024-03-01T09:00:00Z")
        wrong = weight("w2", 200, "2024-04-01T09:00:00Z", status="entered-in-error", version="2")
        effects = bmi_effects(kept, wrong, H, notified=wrong)
        proposal = effects[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.evidence[0].reference == "Observation/w1"

    def test_notified_version_replaces_the_prefetched_copy(self) -> None:
        stale = weight("w1", 70, "2024-03-01T09:00:00Z", version="1")
        fresh = weight("w1", 100, "2024-03-01T09:00:00Z", version="2")
        effects = BMI.compute(event(fresh), context(patient(), weights=[stale], heights=[H]))
        proposal = effects[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.evidence[0] == Evidence("Observation/w1", "2")
        assert proposal.value == 34.6

    def test_height_after_the_weight_is_not_used(self) -> None:
        w = weight("w1", 90, "2023-12-01T09:00:00Z")
        [no_result] = bmi_effects(w, H)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "insufficient_evidence"

    def test_height_older_than_a_year_is_not_used(self) -> None:
        w = weight("w1", 90, "2025-01-11T09:00:00Z")
        [no_result] = bmi_effects(w, H)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "insufficient_evidence"

    @pytest.mark.parametrize("birth_date", ["2010-01-01", "2005-01-01"])  # 14 and 19
    def test_under_20(self, birth_date: str) -> None:
        w = weight("w1", 60, "2024-05-02T09:30:00+01:00")
        [no_result] = run(BMI, w, patient(birth_date=birth_date), weights=[w], heights=[H])
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_applicable"
        assert "under 20" in no_result.reason

    @pytest.mark.parametrize("birth_date", [None, "1970"])
    def test_missing_birth_date(self, birth_date: str | None) -> None:
        w = weight("w1", 60, "2024-05-02T09:30:00+01:00")
        [no_result] = run(BMI, w, patient(birth_date=birth_date), weights=[w], heights=[H])
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "insufficient_evidence"
        assert "birthDate" in no_result.reason

    def test_no_patient(self) -> None:
        w = weight("w1", 60, "2024-05-02T09:30:00+01:00")
        [no_result] = BMI.compute(event(w), context(None, weights=[w], heights=[H]))
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "insufficient_evidence"

    def test_unknown_unit(self) -> None:
        w = observation("w1", "29463-7", 12, "stone", "2024-05-02T09:30:00Z")
        [no_result] = bmi_effects(w, H)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    def test_notified_weight_without_value(self) -> None:
        w = observation("w1", "29463-7", None, "kg", "2024-05-02T09:30:00Z")
        [no_result] = bmi_effects(w, H)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"
        assert "valueQuantity" in no_result.reason

    def test_no_usable_weight(self) -> None:
        [no_result] = bmi_effects(H)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "insufficient_evidence"

    def test_other_patients_evidence_is_ignored(self) -> None:
        w = weight("w1", 90, "2024-05-02T09:30:00Z")
        foreign = height("h-x", 150, "2024-05-01T09:00:00Z", subject="Patient/other")
        proposal = run(BMI, w, weights=[w], heights=[H, foreign])[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.evidence[1].reference == "Observation/h1"

    def test_delete_returns_nothing(self) -> None:
        effects = BMI.compute(event(None, Interaction.DELETE, "Observation/w1"), context(patient()))
        assert effects == []
        effects = OBESITY.compute(
            event(None, Interaction.DELETE, "Observation/w1"), context(patient())
        )
        assert effects == []

    def test_not_an_observation(self) -> None:
        resource = {"resourceType": "Patient", "id": "p1"}
        [no_result] = BMI.compute(event(resource), context(patient()))  # type: ignore[arg-type]
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    def test_odd_json_never_raises(self) -> None:
        odd = {
            "resourceType": "Observation",
            "id": "w1",
            "status": "final",
            "code": {"coding": "not-a-list"},
            "effectiveDateTime": "yesterday",
            "valueQuantity": {"value": "ninety"},
        }
        effects = BMI.compute(event(odd), context(patient(), weights=[odd], heights=[H]))  # type: ignore[arg-type]
        assert all(isinstance(e, NoResult) for e in effects)

    def test_deterministic(self) -> None:
        w = weight("w1", 90, "2024-05-02T09:30:00+01:00")
        assert bmi_effects(w, H) == bmi_effects(w, H)


class TestObesity:
    def test_bmi_30_proposes_weight_management(self) -> None:
        # 86.7 / 1.70^2 = 29.999 -> reported 30.0 -> counselling
        w = weight("w1", 86.7, "2024-05-02T09:30:00+01:00")
        effects = run(OBESITY, w, weights=[w], heights=[H])
        request, task = effects
        assert isinstance(request, ProposeRequest)
        assert request.slot == "weight-management"
        assert request.kind == "ServiceRequest"
        assert (request.code_system, request.code) == ("http://snomed.info/sct", "408289007")
        assert request.evidence == (
            Evidence("Observation/w1", "1"),
            Evidence("Observation/h1", "1"),
        )
        assert isinstance(task, OpenReviewTask)
        assert task.slot == "weight-management"
        assert task.priority == "routine"
        assert "BMI 30.0" in task.title
        assert "USPSTF" in task.rationale
        assert task.evidence == request.evidence

    def test_below_30_proposes_nothing_and_retracts_a_pending_referral(self) -> None:
        w = weight("w1", 86.5, "2024-05-02T09:30:00+01:00")  # 29.93 -> 29.9
        [retract] = run(OBESITY, w, weights=[w], heights=[H])
        assert isinstance(retract, Retract)
        assert retract.slot == "weight-management"
        assert "29.9" in retract.reason
        assert "below 30" in retract.reason

    def test_no_bmi_passes_the_reason(self) -> None:
        w = weight("w1", 120, "2024-05-02T09:30:00+01:00")
        [no_result] = run(OBESITY, w, patient(birth_date="2010-01-01"), weights=[w], heights=[H])
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_applicable"
