"""Client-credentials tokens: cached, renewed before expiry, one renewal at a time, and a 401
from FHIR renews once."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import httpx
import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import MedplumClient, MedplumForbidden, MedplumUnavailable
from tests.unit.integrations.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FHIR,
    TOKEN_URL,
    FakeClock,
    RecordingSleep,
    add_token,
    fhir_requests,
    make_config,
    outcome,
    patient,
)


async def test_token_request_is_a_client_credentials_form_post(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())

    await medplum.read("Patient", "p1")

    token_request = httpx_mock.get_request(url=TOKEN_URL)
    assert token_request is not None
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = parse_qs(token_request.content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    read = httpx_mock.get_request(url=FHIR + "Patient/p1")
    assert read is not None
    assert read.headers["authorization"] == "Bearer token-1"
    assert read.headers["accept"] == "application/fhir+json"


async def test_one_token_request_serves_many_calls(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

    for _ in range(10):
        await medplum.read("Patient", "p1")

    assert medplum.token_request_count == 1
    assert medplum.request_count == {"read": 10, "token": 1}


async def test_token_renewed_refresh_margin_before_expiry(
    httpx_mock: HTTPXMock, medplum: MedplumClient, clock: FakeClock
) -> None:
    add_token(httpx_mock, "token-1", expires_in=3600)
    add_token(httpx_mock, "token-2", expires_in=3600)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

    await medplum.read("Patient", "p1")
    clock.advance(3600 - 300 - 1)  # just inside the token's useful life
    await medplum.read("Patient", "p1")
    assert medplum.token_request_count == 1

    clock.advance(2)  # now within the 300 s refresh margin, token not yet expired
    await medplum.read("Patient", "p1")

    assert medplum.token_request_count == 2
    last = fhir_requests(httpx_mock)[-1]
    assert last.headers["authorization"] == "Bearer token-2"


async def test_short_lived_token_renewed_half_way(
    httpx_mock: HTTPXMock, medplum: MedplumClient, clock: FakeClock
) -> None:
    # expires_in below the margin: renewal must not be scheduled in the past (token storm).
    add_token(httpx_mock, "token-1", expires_in=120)
    add_token(httpx_mock, "token-2", expires_in=120)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

    await medplum.read("Patient", "p1")
    clock.advance(59)
    await medplum.read("Patient", "p1")
    assert medplum.token_request_count == 1
    clock.advance(2)
    await medplum.read("Patient", "p1")
    assert medplum.token_request_count == 2


async def test_concurrent_callers_share_a_single_token_request(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # keep the renewal in flight while the others arrive
        return httpx.Response(200, json={"access_token": "token-1", "expires_in": 3600})

    httpx_mock.add_callback(slow_token, method="POST", url=TOKEN_URL)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

    results = await asyncio.gather(*(medplum.read("Patient", "p1") for _ in range(20)))

    assert len(results) == 20
    assert medplum.token_request_count == 1
    assert len(httpx_mock.get_requests(url=TOKEN_URL)) == 1


async def test_concurrent_401s_cause_one_renewal(
    httpx_mock: HTTPXMock, medplum: MedplumClient, clock: FakeClock
) -> None:
    add_token(httpx_mock, "token-1")
    add_token(httpx_mock, "token-2")

    def by_token(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer token-1":
            return httpx.Response(401, json=outcome("login", "Unauthorized", "unauthorized"))
        return httpx.Response(200, json=patient())

    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())
    httpx_mock.add_callback(by_token, url=FHIR + "Patient/p1", is_reusable=True)
    await medplum.read("Patient", "p1")  # caches token-1

    await asyncio.gather(*(medplum.read("Patient", "p1") for _ in range(10)))

    assert medplum.token_request_count == 2


async def test_401_renews_the_token_once_and_resends(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock, "token-1")
    add_token(httpx_mock, "token-2")
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        status_code=401,
        json=outcome("login", "Unauthorized", "unauthorized"),
    )
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())

    result = await medplum.read("Patient", "p1")

    assert result.id == "p1"
    reads = fhir_requests(httpx_mock)
    assert [r.headers["authorization"] for r in reads] == ["Bearer token-1", "Bearer token-2"]
    assert medplum.token_request_count == 2


async def test_401_twice_is_forbidden_without_a_token_storm(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    add_token(httpx_mock, "token-1")
    add_token(httpx_mock, "token-2")
    httpx_mock.add_response(
        url=FHIR + "Patient/p1",
        status_code=401,
        json=outcome("login", "Unauthorized", "unauthorized"),
        is_reusable=True,
    )

    with pytest.raises(MedplumForbidden) as caught:
        await medplum.read("Patient", "p1")

    assert caught.value.status_code == 401
    assert medplum.token_request_count == 2
    assert len(fhir_requests(httpx_mock)) == 2
    assert sleeps.waits == []  # 401 is not a retryable failure


async def test_bad_client_credentials_are_forbidden_and_not_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=TOKEN_URL,
        status_code=400,
        json={"error": "invalid_request", "error_description": "Invalid secret"},
    )

    with pytest.raises(MedplumForbidden) as caught:
        await medplum.read("Patient", "p1")

    assert caught.value.operation == "token"
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in repr(caught.value)
    assert fhir_requests(httpx_mock) == []


async def test_token_endpoint_503_is_retried(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=503)
    add_token(httpx_mock)
    httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient())

    await medplum.read("Patient", "p1")

    assert medplum.token_request_count == 2
    assert len(sleeps.waits) == 1


async def test_early_renewal_failure_keeps_the_still_valid_token(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    async with MedplumClient(make_config(max_attempts=1), clock=clock, sleep=sleeps) as medplum:
        add_token(httpx_mock, "token-1")
        httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=503)
        httpx_mock.add_response(url=FHIR + "Patient/p1", json=patient(), is_reusable=True)

        await medplum.read("Patient", "p1")
        clock.advance(3400)  # inside the refresh margin, 200 s before expiry
        await medplum.read("Patient", "p1")

    assert medplum.token_request_count == 2
    assert fhir_requests(httpx_mock)[-1].headers["authorization"] == "Bearer token-1"


def test_config_repr_hides_the_secret() -> None:
    assert CLIENT_SECRET not in repr(make_config())


async def test_token_endpoint_down_is_retried_once_per_policy_not_per_fhir_attempt(
    httpx_mock: HTTPXMock, medplum: MedplumClient, sleeps: RecordingSleep
) -> None:
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=503, is_reusable=True)

    with pytest.raises(MedplumUnavailable) as caught:
        await medplum.read("Patient", "p1")

    assert caught.value.operation == "token"
    assert medplum.token_request_count == 5  # max_attempts, not max_attempts squared
    assert fhir_requests(httpx_mock) == []
