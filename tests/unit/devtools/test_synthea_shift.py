"""Moving a Synthea history to the present for the demo: every date by the same whole days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from devtools import synthea
from devtools.synthea import bundle_resources, read_bundle, shift_to_present


def first_patient_bundle() -> dict[str, Any]:
    files = synthea.bundle_files(synthea.synthea_dir(), patients=1)
    [path] = [p for p in files if not synthea.is_support_bundle(p)]
    return read_bundle(path)


def moment(value: object) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_the_newest_date_lands_on_the_day_and_intervals_are_kept() -> None:
    bundle = first_patient_bundle()
    latest = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    moved, days = shift_to_present(bundle, latest=latest)

    assert days > 0
    before = [r for r in bundle_resources(bundle) if r.get("resourceType") == "Observation"]
    after = [r for r in bundle_resources(moved) if r.get("resourceType") == "Observation"]
    assert before
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        assert old["id"] == new["id"]
        assert old.get("subject") == new.get("subject")
        if "effectiveDateTime" in old:
            shift = moment(new["effectiveDateTime"]) - moment(old["effectiveDateTime"])
            assert shift == timedelta(days=days)
            assert moment(new["effectiveDateTime"]) <= latest + timedelta(days=1)
    [born_before] = [r for r in bundle_resources(bundle) if r.get("resourceType") == "Patient"]
    [born_after] = [r for r in bundle_resources(moved) if r.get("resourceType") == "Patient"]
    born = date.fromisoformat(str(born_before["birthDate"]))
    assert date.fromisoformat(str(born_after["birthDate"])) == born + timedelta(days=days)


def test_a_history_already_recent_is_left_alone() -> None:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"effectiveDateTime": "2026-11-29"}}],
    }
    moved, days = shift_to_present(bundle, latest=datetime(2026, 11, 1, tzinfo=UTC))
    assert (moved, days) == (bundle, 0)


def test_codes_and_references_that_look_like_dates_are_not_moved() -> None:
    resource: dict[str, Any] = {
        "id": "2001-01-01",
        "code": {"coding": [{"code": "2001"}]},
        "effectiveDateTime": "2001-01-01T10:00:00Z",
    }
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "entry": [{"fullUrl": "urn:uuid:2001-01-01", "resource": resource}],
    }
    moved, days = shift_to_present(bundle, latest=datetime(2001, 1, 11, 10, 0, tzinfo=UTC))
    assert days == 10
    entry: Any = moved["entry"]
    assert entry[0]["fullUrl"] == "urn:uuid:2001-01-01"
    assert entry[0]["resource"]["id"] == "2001-01-01"
    assert entry[0]["resource"]["code"] == {"coding": [{"code": "2001"}]}
    assert entry[0]["resource"]["effectiveDateTime"] == "2001-01-11T10:00:00Z"
