"""FHIR operations of the Medplum client: request shapes, status mapping, retries only where a
replay cannot duplicate an effect, waits from Medplum's RateLimit header, no PHI in errors."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import (
    BundleRequest,
    MedplumBadRequest,
    MedplumClient,
    MedplumConflict,
    MedplumError,
    MedplumNotFound,
    MedplumPreconditionFailed,
    MedplumRateLimited,
    MedplumRequestTooLarge,
    MedplumUnavailable,
    metered,
)
from app.observability.correlation import correlation_id_var
from tests.unit.integrations.conftest import (
    FHIR,
    RecordingSleep,
    add_token,
    fhir_requests,
    outcome,
    patient,
)

IDENTIFIER = "identifier=https://starvit.example/ids|obs-42"
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "BMI"},
    "identifier": [{"system": "https://starvit.example/ids", "value": "obs-42"}],
}


def body_of(request: httpx.Request) -> Any:
    return orjson.loads(request.content)


# --- reads -----------------------------------------------------------------------------------


async def test_read_returns_resource_and_version_from_etag(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        json=patient(version="7"),
        headers={"ETag": 'W/"7"', "Last-Modified": "Tue, 01 Jul 2025 10:00:00 GMT"},
    )

    result = await medplum.read("Patient", "p1")

    assert result.resource["resourceType"] == "Patient"
    assert result.reference == "Patient/p1"
    assert result.version_id == "7"
    assert result.etag == 'W/"7"'
    assert result.last_modified == "Tue, 01 Jul 2025 10:00:00 GMT"


async def test_vread_path_and_not_found_mapping(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1/_history/3", json=patient(version="3"))
    httpx_mock.add_response(
        url=FHIR + "Patient/gone", status_code=410, json=outcome("deleted", "Gone", "gone")
    )

    result = await medplum.vread("Patient", "p1", "3")
    assert result.version_id == "3"

    with pytest.raises(MedplumNotFound) as caught:
        await medplum.read("Patient", "gone")
    assert caught.value.gone
    assert caught.value.operation_outcome is not None
    assert caught.value.operation_outcome.codes == ("deleted",)


@pytest.mark.parametrize("bad", ["../oauth2/token", "p1?x=1", "", "a/b"])
async def test_ids_that_would_change_the_path_are_refused(
    httpx_mock: HTTPXMock, medplum: MedplumClient, bad: str
) -> None:
    with pytest.raises(ValueError):
        await medplum.read("Patient", bad)
    assert httpx_mock.get_requests() == []


async def test_search_encodes_params_and_splits_matches_from_includes(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "o1"}, "search": {"mode": "match"}},
            {"resource": patient(), "search": {"mode": "include"}},
        ],
        "link": [{"relation": "self", "url": FHIR + "Observation?code=1"}],
    }
    httpx_mock.add_response(
        method="GET",
        url=re.compile(re.escape(FHIR + "Observation") + r"\?.*"),
        json=bundle,
    )

    page = await medplum.search(
        "Observation",
        {"subject": "Patient/p1", "code": ["http://loinc.org|39156-5", "x|y"], "_count": 20},
    )

    request = fhir_requests(httpx_mock)[0]
    assert request.url.params.get_list("code") == ["http://loinc.org|39156-5", "x|y"]
    assert request.url.params["subject"] == "Patient/p1"
    assert request.url.params["_count"] == "20"
    assert [r["id"] for r in page.resources] == ["o1"]
    assert [r["id"] for r in page.included] == ["p1"]
    assert page.total == 1
    assert page.next_url is None


async def test_search_all_follows_next_links(httpx_mock: HTTPXMock, medplum: MedplumClient) -> None:
    add_token(httpx_mock)
    page_two = FHIR + "Task?status=requested&_offset=1"
    httpx_mock.add_response(
        url=FHIR + "Task?status=requested",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Task", "id": "t1"}}],
            "link": [{"relation": "next", "url": page_two}],
        },
    )
    httpx_mock.add_response(
        url=page_two,
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Task", "id": "t2"}}],
        },
    )

    resources = await medplum.search_all("Task", {"status": "requested"})

    assert [r["id"] for r in resources] == ["t1", "t2"]
    assert medplum.request_count["search"] == 2
    assert medplum.estimated_points == 40


# --- retries ---------------------------------------------------------------------------------


async def test_read_retried_on_503_then_succeeds(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", status_code=503)
    httpx_mock.add_response(url=FHIR + "Patient/p1", status_code=503)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())

    result = await medplum.read("Patient", "p1")

    assert result.id == "p1"
    assert len(fhir_requests(httpx_mock)) == 3
    assert len(sleeps.waits) == 2
    assert all(0 < wait <= 5.0 for wait in sleeps.waits)  # exponential backoff, capped
    assert medplum.retry_count == {"read": 2}


async def test_timeouts_are_retried_and_finally_unavailable(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_exception(
        httpx.ReadTimeout("timed out"), url=FHIR + "Patient/p1", is_reusable=True
    )

    with pytest.raises(MedplumUnavailable) as caught:
        await medplum.read("Patient", "p1")

    assert caught.value.cause == "ReadTimeout"
    assert caught.value.attempts == 5
    assert len(fhir_requests(httpx_mock)) == 5  # max_attempts
    assert len(sleeps.waits) == 4


async def test_409_on_an_idempotent_write_is_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="POST", url=FHIR + "Observation", status_code=409, json=outcome("conflict", "x")
    )
    httpx_mock.add_response(
        method="POST",
        url=FHIR + "Observation",
        status_code=201,
        json={**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}},
    )

    result = await medplum.create(OBSERVATION, if_none_exist=IDENTIFIER)

    assert result.created
    assert len(sleeps.waits) == 1


async def test_a_transaction_conflict_is_retried_within_a_second_despite_a_ratelimit_header(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    """Real Medplum sends RateLimit on every answer; its ``t`` is a window, not a wait."""
    add_token(httpx_mock)
    ordinary = {"RateLimit": '"requests";r=59290;t=25, "fhirInteractions";r=4766444;t=25'}
    httpx_mock.add_response(
        method="POST",
        url=FHIR,
        status_code=409,
        headers=ordinary,
        json=outcome("conflict", "could not serialize access"),
    )
    httpx_mock.add_response(
        method="POST",
        url=FHIR,
        headers=ordinary,
        json={"resourceType": "Bundle", "type": "transaction-response", "entry": []},
    )

    with metered() as meter:
        await medplum.transaction([BundleRequest.create(OBSERVATION, if_none_exist=IDENTIFIER)])

    assert len(sleeps.waits) == 1
    assert sleeps.waits[0] < 1.0
    # The event's count is what was sent: the retry included.
    assert meter.requests == 2


async def test_the_meter_counts_only_its_own_context(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

    async def one_job() -> int:
        with metered() as meter:
            await medplum.read("Patient", "p1")
            return meter.requests

    assert await asyncio.gather(one_job(), one_job()) == [1, 1]


async def test_429_waits_the_seconds_of_the_ratelimit_header(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        status_code=429,
        headers={"RateLimit": '"requests";r=0;t=1'},
        json=outcome("throttled", "Too Many Requests", "too-many-requests"),
    )
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())

    await medplum.read("Patient", "p1")

    assert len(sleeps.waits) == 1
    assert 1.0 <= sleeps.waits[0] <= 1.06  # t=1 plus a little jitter, not the backoff


async def test_429_wait_is_capped_and_exhaustion_carries_retry_after(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        status_code=429,
        headers={"RateLimit": '"fhirInteractions";r=0;t=45'},
        json=outcome("throttled", "Too Many Requests", "too-many-requests"),
        is_reusable=True,
    )

    with pytest.raises(MedplumRateLimited) as caught:
        await medplum.read("Patient", "p1")

    assert sleeps.waits == [30.0] * 4  # max_retry_wait_seconds
    assert caught.value.retry_after == 45.0
    assert caught.value.retryable
    assert caught.value.error_code == "medplum_rate_limited"


async def test_plain_create_is_never_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="POST", url=FHIR + "Observation", status_code=503)

    with pytest.raises(MedplumUnavailable):
        await medplum.create(OBSERVATION)

    assert len(fhir_requests(httpx_mock)) == 1
    assert sleeps.waits == []


async def test_plain_create_timeout_is_not_replayed(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_exception(httpx.ReadTimeout("slow"), method="POST", url=FHIR + "Observation")

    with pytest.raises(MedplumUnavailable):
        await medplum.create(OBSERVATION)

    assert len(fhir_requests(httpx_mock)) == 1
    assert sleeps.waits == []


async def test_unguarded_update_not_retried_unless_declared_idempotent(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="PUT", url=FHIR + "Patient/p1", status_code=502)
    httpx_mock.add_response(method="PUT", url=FHIR + "Patient/p1", status_code=502)
    httpx_mock.add_response(method="PUT", url=FHIR + "Patient/p1", json=patient(version="2"))

    with pytest.raises(MedplumUnavailable):
        await medplum.update(patient())
    result = await medplum.update(patient(), idempotent=True)

    assert result.version_id == "2"
    assert len(sleeps.waits) == 1


async def test_400_is_not_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Patient/p1", status_code=400, json=outcome("invalid", "Invalid search")
    )

    with pytest.raises(MedplumBadRequest):
        await medplum.read("Patient", "p1")
    assert sleeps.waits == []


# --- writes ----------------------------------------------------------------------------------


async def test_conditional_create_201_created(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="POST",
        url=FHIR + "Observation",
        status_code=201,
        json={**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}},
        headers={"ETag": 'W/"1"', "Location": FHIR + "Observation/o1/_history/1"},
    )

    result = await medplum.create(OBSERVATION, if_none_exist=IDENTIFIER, trace_id="trace-1")

    assert result.created
    assert result.status_code == 201
    assert result.version_id == "1"
    assert result.location == FHIR + "Observation/o1/_history/1"
    request = fhir_requests(httpx_mock)[0]
    assert request.headers["if-none-exist"] == IDENTIFIER
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers["x-trace-id"] == "trace-1"
    assert body_of(request) == OBSERVATION


async def test_conditional_create_200_returns_the_existing_resource(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    existing = {**OBSERVATION, "id": "o-old", "meta": {"versionId": "4"}}
    httpx_mock.add_response(method="POST", url=FHIR + "Observation", json=existing)

    result = await medplum.create(OBSERVATION, if_none_exist=IDENTIFIER)

    assert not result.created
    assert result.id == "o-old"
    assert result.version_id == "4"


async def test_conditional_create_412_is_precondition_failed_not_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="POST",
        url=FHIR + "Observation",
        status_code=412,
        json=outcome(
            "multiple-matches", "Multiple resources found matching condition", "multiple-matches"
        ),
    )

    with pytest.raises(MedplumPreconditionFailed) as caught:
        await medplum.create(OBSERVATION, if_none_exist=IDENTIFIER)

    assert caught.value.operation_outcome is not None
    assert caught.value.operation_outcome.outcome_id == "multiple-matches"
    assert sleeps.waits == []


async def test_trace_id_defaults_to_the_correlation_id_on_writes_only(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())
    httpx_mock.add_response(method="PUT", url=FHIR + "Patient/p1", json=patient(version="2"))
    token = correlation_id_var.set("corr-123")
    try:
        await medplum.read("Patient", "p1")
        await medplum.update(patient(), if_match_version="1")
    finally:
        correlation_id_var.reset(token)

    read, write = fhir_requests(httpx_mock)
    assert "x-trace-id" not in read.headers
    assert write.headers["x-trace-id"] == "corr-123"


async def test_unsafe_trace_id_is_not_sent(httpx_mock: HTTPXMock, medplum: MedplumClient) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="DELETE", url=FHIR + "Task/t1", status_code=200)

    await medplum.delete("Task", "t1", trace_id="bad value\r\nX-Injected: 1")

    assert "x-trace-id" not in fhir_requests(httpx_mock)[0].headers


async def test_if_match_update_sends_weak_etag_and_maps_412(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="PUT",
        url=FHIR + "Patient/p1",
        status_code=412,
        json=outcome("processing", "Precondition Failed", "precondition-failed"),
    )

    with pytest.raises(MedplumPreconditionFailed):
        await medplum.update(patient(version="3"), if_match_version="3")

    request = fhir_requests(httpx_mock)[0]
    assert request.headers["if-match"] == 'W/"3"'
    assert sleeps.waits == []


async def test_guarded_patch_prepends_the_version_test(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="PATCH",
        url=FHIR + "Task/t1",
        json={
            "resourceType": "Task",
            "id": "t1",
            "status": "cancelled",
            "meta": {"versionId": "6"},
        },
        headers={"ETag": 'W/"6"'},
    )

    result = await medplum.patch(
        "Task",
        "t1",
        [{"op": "replace", "path": "/status", "value": "cancelled"}],
        expected_version="5",
    )

    assert result.version_id == "6"
    request = fhir_requests(httpx_mock)[0]
    assert request.headers["content-type"] == "application/json-patch+json"
    assert request.headers["if-match"] == 'W/"5"'
    assert body_of(request) == [
        {"op": "test", "path": "/meta/versionId", "value": "5"},
        {"op": "replace", "path": "/status", "value": "cancelled"},
    ]


async def test_failed_version_test_is_precondition_failed(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="PATCH",
        url=FHIR + "Task/t1",
        status_code=400,
        json=outcome("invalid", "Test failed: 6 != 5"),
    )

    with pytest.raises(MedplumPreconditionFailed):
        await medplum.patch(
            "Task", "t1", [{"op": "remove", "path": "/owner"}], expected_version="5"
        )


async def test_unguarded_patch_400_stays_bad_request(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="PATCH",
        url=FHIR + "Task/t1",
        status_code=400,
        json=outcome("invalid", "Test failed: 1 != 2"),
    )

    with pytest.raises(MedplumBadRequest) as caught:
        await medplum.patch("Task", "t1", [{"op": "test", "path": "/status", "value": "x"}])
    assert not isinstance(caught.value, MedplumPreconditionFailed)


async def test_delete_of_a_gone_resource_is_not_an_error(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="DELETE", url=FHIR + "Task/t1", status_code=200)
    httpx_mock.add_response(
        method="DELETE", url=FHIR + "Task/t1", status_code=410, json=outcome("deleted", "Gone")
    )

    assert await medplum.delete("Task", "t1") is True
    assert await medplum.delete("Task", "t1") is False


async def test_bodies_over_one_megabyte_are_refused_before_sending(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    huge = {"resourceType": "Binary", "data": "A" * 1_100_000}

    with pytest.raises(MedplumRequestTooLarge):
        await medplum.create(huge)
    assert httpx_mock.get_requests() == []


# --- bundles ---------------------------------------------------------------------------------


TRANSACTION_RESPONSE = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [
        {
            "response": {
                "status": "201",
                "location": "Observation/o1",
                "etag": 'W/"1"',
                "outcome": outcome("informational", "Created", "created"),
            },
            "resource": {**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}},
        },
        {
            "response": {"status": "200 OK", "location": "Task/t9/_history/3"},
            "resource": {"resourceType": "Task", "id": "t9", "meta": {"versionId": "3"}},
        },
        {
            "response": {
                "status": "412",
                "outcome": outcome(
                    "multiple-matches", "Multiple resources found", "multiple-matches"
                ),
            }
        },
    ],
}


async def test_transaction_request_and_response_parsing(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="POST", url=FHIR, json=TRANSACTION_RESPONSE)
    task = {"resourceType": "Task", "status": "requested", "intent": "proposal"}

    result = await medplum.transaction(
        [
            BundleRequest.create(OBSERVATION, if_none_exist=IDENTIFIER, full_url="urn:uuid:1"),
            BundleRequest.create(task, if_none_exist="identifier=s|t9"),
            BundleRequest.create(task, if_none_exist="identifier=s|t10"),
        ],
        trace_id="trace-7",
    )

    request = fhir_requests(httpx_mock)[0]
    sent = body_of(request)
    assert sent["resourceType"] == "Bundle"
    assert sent["type"] == "transaction"
    assert sent["entry"][0] == {
        "fullUrl": "urn:uuid:1",
        "request": {"method": "POST", "url": "Observation", "ifNoneExist": IDENTIFIER},
        "resource": OBSERVATION,
    }
    assert request.headers["x-trace-id"] == "trace-7"

    assert result.bundle_type == "transaction-response"
    first, second, third = result.entries
    assert (first.status_code, first.created, first.reference, first.version_id) == (
        201,
        True,
        "Observation/o1",
        "1",
    )
    assert first.outcome is not None
    assert first.outcome.outcome_id == "created"
    assert (second.status_code, second.created, second.reference, second.version_id) == (
        200,
        False,
        "Task/t9",
        "3",
    )
    assert not third.ok
    assert result.failed == (third,)
    with pytest.raises(MedplumPreconditionFailed):
        result.raise_for_failed(operation="transaction")


async def test_transaction_of_conditional_entries_is_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="POST", url=FHIR, status_code=503)
    httpx_mock.add_response(method="POST", url=FHIR, json=TRANSACTION_RESPONSE)

    await medplum.transaction([BundleRequest.create(OBSERVATION, if_none_exist=IDENTIFIER)])

    assert len(sleeps.waits) == 1


async def test_transaction_with_a_plain_create_is_not_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(method="POST", url=FHIR, status_code=503)

    with pytest.raises(MedplumUnavailable):
        await medplum.transaction(
            [
                BundleRequest.create(OBSERVATION, if_none_exist=IDENTIFIER),
                {
                    "request": {"method": "POST", "url": "AuditEvent"},
                    "resource": {"resourceType": "AuditEvent"},
                },
            ]
        )
    assert sleeps.waits == []


async def test_batch_of_reads_carries_no_trace_id_and_exposes_searches(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    search_bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "o2"}}],
    }
    httpx_mock.add_response(
        method="POST",
        url=FHIR,
        json={
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"response": {"status": "200"}, "resource": patient(version="2")},
                {"response": {"status": "200"}, "resource": search_bundle},
            ],
        },
    )
    token = correlation_id_var.set("corr-9")
    try:
        result = await medplum.batch(
            [
                BundleRequest.vread("Patient", "p1", "2"),
                BundleRequest.search("Observation", "subject=Patient/p1&_count=5"),
            ]
        )
    finally:
        correlation_id_var.reset(token)

    request = fhir_requests(httpx_mock)[0]
    assert "x-trace-id" not in request.headers
    assert body_of(request)["type"] == "batch"
    assert result.entries[0].version_id == "2"
    page = result.entries[1].search_result()
    assert page is not None
    assert [r["id"] for r in page.resources] == ["o2"]
    assert medplum.estimated_points == 21  # one read, one search


# --- no PHI in errors ------------------------------------------------------------------------

CANARY_NAME = "Zebulon Quixote-Canary"
CANARY_BIRTH = "1931-02-29"


def _everything_said(error: MedplumError) -> str:
    parts = [str(error), repr(error), *(repr(value) for value in vars(error).values())]
    return "\n".join(parts)


async def test_errors_carry_no_resource_body_or_quoted_values(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    leaky_outcome = {
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": f"<div>{CANARY_NAME}</div>"},
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "details": {"text": f'Invalid value "{CANARY_NAME}" for birthDate {CANARY_BIRTH}'},
                "expression": ["Patient.birthDate"],
            }
        ],
    }
    httpx_mock.add_response(
        method="POST", url=FHIR + "Patient", status_code=400, json=leaky_outcome
    )
    # A resource body (not an OperationOutcome) on an error status must be ignored entirely.
    httpx_mock.add_response(
        method="PUT",
        url=FHIR + "Patient/p1",
        status_code=412,
        json=patient(name=[{"text": CANARY_NAME}], birthDate=CANARY_BIRTH),
    )

    resource = patient(name=[{"text": CANARY_NAME}], birthDate=CANARY_BIRTH)
    with pytest.raises(MedplumBadRequest) as bad:
        await medplum.create(resource)
    with pytest.raises(MedplumPreconditionFailed) as failed:
        await medplum.update(resource, if_match_version="1")

    for error in (bad.value, failed.value):
        said = _everything_said(error)
        assert CANARY_NAME not in said
        assert CANARY_BIRTH not in said
    assert bad.value.operation_outcome is not None
    assert bad.value.operation_outcome.issues[0].expression == ("Patient.birthDate",)
    assert bad.value.operation_outcome.codes == ("invalid",)
    assert failed.value.operation_outcome is None


async def test_transport_errors_do_not_quote_the_search(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_exception(
        httpx.ConnectError(f"cannot reach ...?name={CANARY_NAME}"),
        url=re.compile(re.escape(FHIR) + r"Patient\?.*"),
        is_reusable=True,
    )

    with pytest.raises(MedplumUnavailable) as caught:
        await medplum.search("Patient", {"name": CANARY_NAME})

    assert CANARY_NAME not in _everything_said(caught.value)
    assert caught.value.__cause__ is None


async def test_conflict_after_retries_is_typed(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="POST",
        url=FHIR,
        status_code=409,
        json=outcome("conflict", "Conflict"),
        is_reusable=True,
    )

    with pytest.raises(MedplumConflict) as caught:
        await medplum.batch([BundleRequest.read("Patient", "p1")])

    assert caught.value.attempts == 5
    assert caught.value.error_code == "medplum_conflict"
