"""Reading Medplum's answers: RateLimit header, OperationOutcome summaries, bundle entries."""

from __future__ import annotations

import httpx
import pytest

from app.integrations.medplum import BundleRequest, OperationOutcomeSummary
from app.integrations.medplum.responses import parse_rate_limit_reset, version_from_etag
from app.integrations.medplum.results import entry_is_idempotent


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit": '"requests";r=0;t=12'}, 12.0),
        ({"RateLimit": '"fhirInteractions";r=0;t=3'}, 3.0),
        # Two policies: the exhausted one decides.
        ({"RateLimit": '"requests";r=40;t=50, "fhirInteractions";r=0;t=7'}, 7.0),
        ({"RateLimit": '"requests";r=5;t=9'}, 9.0),
        ({"RateLimit": "limit=100, remaining=0, reset=4"}, 4.0),
        ({"RateLimit-Reset": "6"}, 6.0),
        ({"Retry-After": "2"}, 2.0),
        ({}, None),
        ({"RateLimit": "garbage"}, None),
    ],
)
def test_rate_limit_reset(headers: dict[str, str], expected: float | None) -> None:
    assert parse_rate_limit_reset(httpx.Headers(headers)) == expected


@pytest.mark.parametrize(
    ("etag", "version"),
    [('W/"3"', "3"), ('"abc"', "abc"), ("7", "7"), (None, None), ('W/""', None)],
)
def test_version_from_etag(etag: str | None, version: str | None) -> None:
    assert version_from_etag(etag) == version


def test_outcome_summary_keeps_codes_and_drops_quoted_values() -> None:
    summary = OperationOutcomeSummary.from_json(
        {
            "resourceType": "OperationOutcome",
            "id": "bad-request",
            "issue": [
                {
                    "severity": "error",
                    "code": "invalid",
                    "diagnostics": "Invalid name 'Ann Example' born 1950-01-02, MRN 123456789",
                    "expression": ["Patient.name[0]"],
                }
            ],
        }
    )
    assert summary is not None
    assert summary.codes == ("invalid",)
    text = summary.diagnostics[0]
    assert "Ann Example" not in text
    assert "1950-01-02" not in text
    assert "123456789" not in text
    assert text.startswith("Invalid name")


def test_non_outcome_bodies_give_no_summary() -> None:
    assert OperationOutcomeSummary.from_json({"resourceType": "Patient", "id": "x"}) is None


@pytest.mark.parametrize(
    ("entry", "idempotent"),
    [
        (BundleRequest.read("Patient", "p1"), True),
        (BundleRequest.search("Observation", "code=x"), True),
        (BundleRequest.create({"resourceType": "Task"}, if_none_exist="identifier=a|b"), True),
        (BundleRequest.create({"resourceType": "Task"}), False),
        (BundleRequest.update({"resourceType": "Task", "id": "t"}, if_match_version="2"), True),
        (BundleRequest.update({"resourceType": "Task", "id": "t"}), False),
        (BundleRequest.conditional_update({"resourceType": "Task"}, "identifier=a|b"), True),
        (BundleRequest.delete("Task", "t"), True),
        ({"request": {"method": "post", "url": "Task", "ifNoneExist": "identifier=a|b"}}, True),
        ({"request": {"method": "POST", "url": "Task"}}, False),
        ({"resource": {"resourceType": "Task"}}, False),
    ],
)
def test_bundle_entry_idempotency(
    entry: BundleRequest | dict[str, object], idempotent: bool
) -> None:
    assert entry_is_idempotent(entry) is idempotent


def test_conditional_entries_are_flagged() -> None:
    assert BundleRequest.create({"resourceType": "Task"}, if_none_exist="x=y").is_conditional
    assert BundleRequest.conditional_update({"resourceType": "Task"}, "x=y").is_conditional
    assert not BundleRequest.read("Task", "t").is_conditional
