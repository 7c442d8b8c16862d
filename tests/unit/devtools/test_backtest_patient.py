"""A backtest replays a history with the chart as it stood at each result: a death recorded
later must not make every earlier result a "patient deceased" no-result."""

from __future__ import annotations

from datetime import UTC, datetime

from app.fhir.resource_json import JSONObject
from devtools.backtest import patient_as_of

PATIENT: JSONObject = {
    "resourceType": "Patient",
    "id": "p1",
    "birthDate": "1950-01-01",
    "deceasedDateTime": "2020-06-01T00:00:00+00:00",
}


def test_a_later_death_is_not_yet_in_the_chart() -> None:
    before = patient_as_of(PATIENT, datetime(2019, 1, 1, tzinfo=UTC))
    assert "deceasedDateTime" not in before
    assert before["birthDate"] == "1950-01-01"


def test_a_death_before_the_result_is_in_the_chart() -> None:
    after = patient_as_of(PATIENT, datetime(2021, 1, 1, tzinfo=UTC))
    assert after["deceasedDateTime"] == "2020-06-01T00:00:00+00:00"


def test_a_living_patient_is_unchanged() -> None:
    alive: JSONObject = {"resourceType": "Patient", "id": "p2"}
    assert patient_as_of(alive, datetime(2021, 1, 1, tzinfo=UTC)) == alive
