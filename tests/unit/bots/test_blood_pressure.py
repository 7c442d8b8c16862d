"""Blood-pressure bot on hand-built FHIR JSON."""

from app.botkit.declaration import (
    Effect,
    Evidence,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    Retract,
)
from app.fhir.resource_json import JSONObject
from bots.blood_pressure import BOT

from .fhir import bp_panel, context, event, observation, patient, run

WOMAN_60 = patient(birth_date="1964-05-01", gender="female")


def bp(
    notified: JSONObject, *readings: JSONObject, patient_json: JSONObject | None = None
) -> list[Effect]:
    return run(BOT, notified, patient_json, **{"blood-pressure": [notified, *readings]})


def test_declaration() -> None:
    d = BOT.declaration
    assert (d.name, d.version) == ("blood-pressure", "1.2.0")
    for code in ("85354-9", "55284-4", "8480-6", "8462-4"):
        assert f"http://loinc.org|{code}" in d.trigger.criteria
    assert d.trigger.criteria.startswith("Observation?code=")
    prefetch, encounters = d.prefetch
    assert encounters.query == "Encounter?patient={{patient}}&_sort=-date&_count=100"
    assert d.policy("bp-average").actionable is False
    assert d.policy("hypertension").actionable is True
    assert prefetch.query.endswith("&_sort=-date&_count=50")
    assert "subject={{patient}}" in prefetch.query
    assert Interaction.DELETE in d.trigger.interactions


def test_average_of_two_occasions_stage_1() -> None:
    first = bp_panel("bp1", 132, 84, "2024-04-20T08:00:00+01:00")
    second = bp_panel("bp2", 135, 85, "2024-05-01T08:15:00+01:00")
    effects = bp(second, first)
    retract, proposal, task = effects
    assert isinstance(retract, Retract)
    assert retract.slot == "bp-average"  # a listed normal average no longer holds
    assert isinstance(proposal, ProposeObservation)
    assert proposal.slot == "hypertension"
    assert proposal.loinc == "85354-9"
    assert proposal.value is None
    assert [(c.loinc, c.value, c.unit) for c in proposal.components] == [
        ("8480-6", 134.0, "mm[Hg]"),  # 133.5 rounds half up
        ("8462-4", 85.0, "mm[Hg]"),  # 84.5
    ]
    assert proposal.category == "stage 1 hypertension; average of 2 readings on 2 occasions"
    assert proposal.effective.isoformat() == "2024-05-01T08:15:00+01:00"
    assert set(proposal.evidence) == {
        Evidence("Observation/bp1", "1"),
        Evidence("Observation/bp2", "1"),
    }
    assert isinstance(task, OpenReviewTask)
    assert (task.slot, task.priority, task.severity) == ("hypertension", "routine", 1)
    assert task.title == "Review average BP 134/85 mmHg (stage 1 hypertension)"
    assert "Whelton" in task.rationale
    assert "2024-04-20 to 2024-05-01" in task.rationale


def test_one_occasion_is_insufficient() -> None:
    first = bp_panel("bp1", 132, 84, "2024-05-01T08:00:00+01:00")
    second = bp_panel("bp2", 135, 85, "2024-05-01T08:15:00+01:00")
    [no_result] = bp(second, first)
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "insufficient_evidence"


def test_readings_older_than_30_days_do_not_count() -> None:
    old = bp_panel("bp1", 132, 84, "2024-03-01T08:00:00+01:00")
    new = bp_panel("bp2", 135, 85, "2024-05-01T08:15:00+01:00")
    [no_result] = bp(new, old)
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "insufficient_evidence"


def test_crisis_opens_an_urgent_task_even_without_two_occasions() -> None:
    crisis = bp_panel("bp9", 182, 121, "2024-05-01T08:15:00+01:00")
    task, no_result = bp(crisis)
    assert isinstance(task, OpenReviewTask)
    assert task.slot == "hypertensive-crisis"
    assert task.priority == "urgent"
    assert task.title == "URGENT: BP 182/121 mmHg — hypertensive crisis range"
    assert task.evidence[0] == Evidence("Observation/bp9", "1")
    assert "section 11.2" in task.rationale
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "insufficient_evidence"


def test_crisis_boundary_diastolic_120() -> None:
    crisis = bp_panel("bp9", 150, 120, "2024-05-01T08:15:00+01:00")
    assert any(isinstance(e, OpenReviewTask) and e.priority == "urgent" for e in bp(crisis))
    below = bp_panel("bp9", 179, 119, "2024-05-01T08:15:00+01:00")
    assert not any(isinstance(e, OpenReviewTask) for e in bp(below))


def test_crisis_only_from_the_notified_reading() -> None:
    old_crisis = bp_panel("bp1", 190, 100, "2024-04-25T08:00:00+01:00")
    normal = bp_panel("bp2", 118, 76, "2024-05-01T08:15:00+01:00")
    effects = bp(normal, old_crisis)
    assert not any(isinstance(e, OpenReviewTask) and e.priority == "urgent" for e in effects)


def test_crisis_in_kpa() -> None:
    crisis = bp_panel("bp9", 24.5, 13, "2024-05-01T08:15:00+01:00", unit="kPa")  # 183.8/97.5
    task = bp(crisis)[0]
    assert isinstance(task, OpenReviewTask)
    assert task.title == "URGENT: BP 184/98 mmHg — hypertensive crisis range"


def test_single_systolic_and_diastolic_are_paired() -> None:
    s1 = observation("s1", "8480-6", 128, "mm[Hg]", "2024-04-20T08:00:00Z")
    d1 = observation("d1", "8462-4", 78, "mm[Hg]", "2024-04-20T08:02:00Z")
    s2 = observation("s2", "8480-6", 124, "mm[Hg]", "2024-05-01T08:00:00Z")
    d2 = observation("d2", "8462-4", 76, "mm[Hg]", "2024-05-01T08:00:00Z")
    effects = bp(d2, s1, d1, s2)
    proposal = effects[1]
    assert isinstance(proposal, ProposeObservation)
    assert proposal.slot == "bp-average"
    assert [c.value for c in proposal.components] == [126.0, 77.0]
    assert proposal.category is not None
    assert proposal.category.startswith("elevated")
    assert {e.reference for e in proposal.evidence} == {
        "Observation/s1",
        "Observation/d1",
        "Observation/s2",
        "Observation/d2",
    }


def test_unpaired_single_is_no_reading() -> None:
    s1 = observation("s1", "8480-6", 200, "mm[Hg]", "2024-05-01T08:00:00Z")
    d1 = observation("d1", "8462-4", 78, "mm[Hg]", "2024-05-01T08:30:00Z")
    [no_result] = bp(s1, d1)
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "insufficient_evidence"


def test_legacy_panel_code() -> None:
    first = bp_panel("bp1", 112, 72, "2024-04-20T08:00:00Z", code="55284-4")
    second = bp_panel("bp2", 114, 74, "2024-05-01T08:00:00Z", code="55284-4")
    proposal = bp(second, first)[1]
    assert isinstance(proposal, ProposeObservation)
    assert proposal.category is not None
    assert proposal.category.startswith("normal")


def test_preliminary_and_cancelled_readings_are_ignored() -> None:
    first = bp_panel("bp1", 150, 95, "2024-04-20T08:00:00Z", status="preliminary")
    cancelled = bp_panel("bp3", 150, 95, "2024-04-25T08:00:00Z", status="cancelled")
    second = bp_panel("bp2", 114, 74, "2024-05-01T08:00:00Z")
    [no_result] = bp(second, first, cancelled)
    assert isinstance(no_result, NoResult)


def test_a_reading_with_systolic_not_above_diastolic_is_excluded_alone() -> None:
    first = bp_panel("bp1", 80, 90, "2024-04-20T08:00:00Z")
    second = bp_panel("bp2", 114, 74, "2024-05-01T08:00:00Z")
    [no_result] = bp(second, first)
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "insufficient_evidence"  # one usable occasion is left
    third = bp_panel("bp3", 118, 76, "2024-04-25T08:00:00Z")
    effects = bp(second, first, third)
    proposal = next(e for e in effects if isinstance(e, ProposeObservation))
    assert {e.reference for e in proposal.evidence} == {"Observation/bp2", "Observation/bp3"}


def test_child_gets_no_average_but_crisis_still_flagged() -> None:
    first = bp_panel("bp1", 185, 95, "2024-04-20T08:00:00Z")
    second = bp_panel("bp2", 186, 96, "2024-05-01T08:00:00Z")
    effects = bp(second, first, patient_json=patient(birth_date="2012-01-01"))
    task, no_result = effects
    assert isinstance(task, OpenReviewTask)
    assert task.priority == "urgent"
    assert isinstance(no_result, NoResult)
    assert no_result.outcome == "not_applicable"


def test_delete() -> None:
    assert BOT.compute(event(None, Interaction.DELETE, "Observation/bp1"), context(patient())) == []


def test_panel_without_components_never_raises() -> None:
    empty = bp_panel("bp1", 120, 80, "2024-05-01T08:00:00Z")
    empty["component"] = [{"code": "x"}, 3]
    [no_result] = bp(empty)
    assert isinstance(no_result, NoResult)


def _in(panel: JSONObject, encounter_id: str) -> JSONObject:
    return {**panel, "encounter": {"reference": f"Encounter/{encounter_id}"}}


def _encounter(eid: str, code: str) -> JSONObject:
    return {"resourceType": "Encounter", "id": eid, "class": {"code": code}}


def test_settings_are_kept_apart_inpatient_and_home_readings_are_not_averaged() -> None:
    office_1 = _in(bp_panel("bp1", 128, 78, "2024-04-20T08:00:00Z"), "e-office")
    office_2 = _in(bp_panel("bp2", 126, 76, "2024-04-27T08:00:00Z"), "e-office")
    inpatient = _in(bp_panel("bp3", 165, 100, "2024-04-28T08:00:00Z"), "e-ward")
    home = _in(bp_panel("bp4", 150, 95, "2024-05-01T08:00:00Z"), "e-home")
    effects = run(
        BOT,
        home,
        WOMAN_60,
        **{
            "blood-pressure": [home, inpatient, office_2, office_1],
            "encounters": [
                _encounter("e-office", "AMB"),
                _encounter("e-ward", "IMP"),
                _encounter("e-home", "HH"),
            ],
        },
    )
    proposal = next(e for e in effects if isinstance(e, ProposeObservation))
    assert [c.value for c in proposal.components] == [127.0, 77.0]  # office readings only
    assert {e.reference for e in proposal.evidence} == {"Observation/bp1", "Observation/bp2"}
    assert proposal.slot == "bp-average"  # elevated: listed, no Task


def test_an_inpatient_crisis_reading_still_opens_an_urgent_task() -> None:
    crisis = _in(bp_panel("bp9", 190, 125, "2024-05-01T08:00:00Z"), "e-ward")
    effects = run(
        BOT,
        crisis,
        WOMAN_60,
        **{"blood-pressure": [crisis], "encounters": [_encounter("e-ward", "IMP")]},
    )
    assert any(isinstance(e, OpenReviewTask) and e.priority == "urgent" for e in effects)
    [no_result] = [e for e in effects if isinstance(e, NoResult)]
    assert "no office reading" in no_result.reason
