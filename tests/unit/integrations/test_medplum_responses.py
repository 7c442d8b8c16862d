"""Reading Medplum's answers: RateLimit header, OperationOutcome summaries, bundle entries."""

from __future__ import annotations

import httpx
import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import (
    BundleRequest,
    MedplumClient,
    MedplumRateLimited,
    OperationOutcomeSummary,
)
from app.integrations.medplum.responses import (
    RateLimitPolicy,
    RateLimitStatus,
    error_for_response,
    parse_rate_limit,
    parse_rate_limit_reset,
    version_from_etag,
)
from app.integrations.medplum.results import entry_is_idempotent
from tests.unit.integrations.conftest import FHIR, FakeClock, add_token, make_config


@pytest.mark.parametrize(
    ("headers", "throttled", "expected"),
    [
        ({"RateLimit": '"requests";r=0;t=12'}, False, 12.0),
        ({"RateLimit": '"fhirInteractions";r=0;t=3'}, False, 3.0),
        # Two policies: the exhausted one decides.
        ({"RateLimit": '"requests";r=40;t=50, "fhirInteractions";r=0;t=7'}, False, 7.0),
        # What real Medplum sends on every ordinary answer: nothing is exhausted, no wait.
        ({"RateLimit": '"requests";r=59290;t=25, "fhirInteractions";r=4766444;t=25'}, False, None),
        ({"RateLimit": '"requests";r=5;t=9'}, False, None),
        # A 429 with nothing listed as exhausted waits for the longest reset.
        ({"RateLimit": '"requests";r=5;t=9'}, True, 9.0),
        ({"RateLimit": "limit=100, remaining=0, reset=4"}, False, 4.0),
        ({"RateLimit-Reset": "6"}, True, 6.0),
        ({"Retry-After": "2"}, True, 2.0),
        ({"Retry-After": "2"}, False, None),
        ({}, True, None),
        ({"RateLimit": "garbage"}, True, None),
    ],
)
def test_rate_limit_reset(headers: dict[str, str], throttled: bool, expected: float | None) -> None:
    assert parse_rate_limit_reset(httpx.Headers(headers), throttled=throttled) == expected


def test_two_ratelimit_header_lines_are_read_as_two_policies() -> None:
    headers = httpx.Headers(
        [("RateLimit", '"requests";r=59290;t=25'), ("RateLimit", '"fhirInteractions";r=0;t=11')]
    )
    assert parse_rate_limit_reset(headers) == 11.0


@pytest.mark.parametrize("status", [409, 500, 503])
def test_a_conflict_or_server_error_never_waits_for_the_quota_window(status: int) -> None:
    response = httpx.Response(
        status,
        headers={"RateLimit": '"requests";r=59290;t=25, "fhirInteractions";r=4766444;t=25'},
        json={"resourceType": "OperationOutcome", "issue": []},
    )
    error = error_for_response(response, operation="transaction", resource_type=None, attempts=1)
    assert error.retryable
    assert error.retry_after is None


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


# --- the RateLimit status a caller can pace itself by ----------------------------------------


def test_rate_limit_status_names_every_policy() -> None:
    headers = httpx.Headers(
        {"RateLimit": '"requests";r=59290;t=25, "fhirInteractions";r=4766;t=24'}
    )
    status = parse_rate_limit(headers, observed_at=12.5)
    assert status is not None
    assert status.observed_at == 12.5
    assert status.policies == {
        "requests": RateLimitPolicy(remaining=59290, reset_seconds=25.0),
        "fhirInteractions": RateLimitPolicy(remaining=4766, reset_seconds=24.0),
    }
    assert status.policy("fhirInteractions") == (4766, 24.0)
    assert status.policy("other") is None


def test_rate_limit_status_reads_one_header_line_per_policy() -> None:
    headers = httpx.Headers(
        [("RateLimit", '"requests";r=10;t=5'), ("RateLimit", '"fhirInteractions";r=0;t=11')]
    )
    status = parse_rate_limit(headers, observed_at=0.0)
    assert status is not None
    assert status.policy("fhirInteractions") == RateLimitPolicy(0, 11.0)
    assert status.policy("requests") == RateLimitPolicy(10, 5.0)


@pytest.mark.parametrize(
    "headers", [{}, {"RateLimit": "garbage"}, {"RateLimit": "limit=100, remaining=0, reset=4"}]
)
def test_no_named_policy_is_no_status(headers: dict[str, str]) -> None:
    assert parse_rate_limit(httpx.Headers(headers), observed_at=0.0) is None


async def test_the_client_reports_the_last_rate_limit_it_saw(httpx_mock: HTTPXMock) -> None:
    clock = FakeClock(100.0)
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        json={"resourceType": "Patient", "id": "p1"},
        headers={"RateLimit": '"requests";r=59999;t=60, "fhirInteractions";r=49999;t=60'},
    )
    httpx_mock.add_response(
        url=FHIR + "Patient/p2",
        json={"resourceType": "Patient", "id": "p2"},  # no header: the last status stays
    )
    httpx_mock.add_response(
        url=FHIR + "Patient/p3",
        status_code=429,
        json={"resourceType": "OperationOutcome", "issue": [{"code": "throttled"}]},
        headers={"RateLimit": '"requests";r=59997;t=58, "fhirInteractions";r=0;t=58'},
        is_reusable=True,
    )
    async with MedplumClient(make_config(max_attempts=1), clock=clock) as medplum:
        assert medplum.last_rate_limit is None
        await medplum.read("Patient", "p1")
        first = medplum.last_rate_limit
        assert first == RateLimitStatus(
            policies={
                "requests": RateLimitPolicy(59999, 60.0),
                "fhirInteractions": RateLimitPolicy(49999, 60.0),
            },
            observed_at=100.0,
        )
        clock.advance(2.0)
        await medplum.read("Patient", "p2")
        assert medplum.last_rate_limit == first
        with pytest.raises(MedplumRateLimited):
            await medplum.read("Patient", "p3")
        throttled = medplum.last_rate_limit
        assert throttled is not None
        assert throttled.observed_at == 102.0
        assert throttled.policy("fhirInteractions") == RateLimitPolicy(0, 58.0)


def test_a_policy_an_answer_does_not_list_keeps_its_state_counted_down() -> None:
    earlier = RateLimitStatus(
        policies={
            "requests": RateLimitPolicy(100, 30.0),
            "fhirInteractions": RateLimitPolicy(3_840, 30.0),
            "short": RateLimitPolicy(5, 4.0),
        },
        observed_at=10.0,
    )
    # A free request (e.g. $validate) answered 5 s later lists only "requests".
    newer = RateLimitStatus(policies={"requests": RateLimitPolicy(99, 25.0)}, observed_at=15.0)
    merged = earlier.updated_by(newer)
    assert merged.observed_at == 15.0
    assert merged.policies == {
        "requests": RateLimitPolicy(99, 25.0),
        "fhirInteractions": RateLimitPolicy(3_840, 25.0),
    }  # "short" has reset since: what it had left no longer counts


async def test_the_client_keeps_the_quota_a_free_answer_does_not_list(
    httpx_mock: HTTPXMock,
) -> None:
    clock = FakeClock(0.0)
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        json={"resourceType": "Patient", "id": "p1"},
        headers={"RateLimit": '"requests";r=10;t=60, "fhirInteractions";r=3840;t=60'},
    )
    httpx_mock.add_response(
        url=FHIR + "Patient/p2",
        json={"resourceType": "Patient", "id": "p2"},
        headers={"RateLimit": '"requests";r=9;t=58'},
    )
    async with MedplumClient(make_config(), clock=clock) as medplum:
        await medplum.read("Patient", "p1")
        clock.advance(2.0)
        await medplum.read("Patient", "p2")
        status = medplum.last_rate_limit
        assert status is not None
        assert status.policy("fhirInteractions") == RateLimitPolicy(3840, 58.0)
        assert status.policy("requests") == RateLimitPolicy(9, 58.0)
