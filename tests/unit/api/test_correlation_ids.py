"""Correlation ids: taken from X-Request-ID or traceparent, generated otherwise, returned in the
X-Request-ID header and bound into every log line of the request."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from app.observability.logging import get_logger
from tests.conftest import LogCapture, Serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
GENERATED = re.compile(r"^[0-9a-f]{32}$")

probe = APIRouter(prefix="/_probe")
log = get_logger("tests.probe")


@probe.get("/work")
async def work(step: int = 0) -> dict[str, str]:
    log.info("work_started", step=step)
    await asyncio.sleep(0.01)
    log.info("work_finished", step=step)
    return {"ok": "yes"}


@pytest.fixture
async def client(
    make_app: Callable[..., FastAPI], serve: Serve
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app()
    app.include_router(probe)
    async with serve(app) as client:
        yield client


def events_of(logs: LogCapture, correlation_id: str) -> list[str]:
    return [
        str(event["event"])
        for event in logs.events()
        if event.get("correlation_id") == correlation_id
    ]


async def test_request_id_is_accepted_and_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert response.headers["x-request-id"] == "abc-123.x:y_z"


async def test_traceparent_trace_id_is_used(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"traceparent": TRACEPARENT})
    assert response.headers["x-request-id"] == TRACE_ID


async def test_request_id_wins_over_traceparent(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/healthz", headers={"X-Request-ID": "mine", "traceparent": TRACEPARENT}
    )
    assert response.headers["x-request-id"] == "mine"


@pytest.mark.parametrize(
    "bad_id", ["has spaces", "<script>", "a" * 129, 'quote"d', "semi;colon", ""]
)
async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient, bad_id: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": bad_id})
    assert GENERATED.match(response.headers["x-request-id"])


async def test_invalid_traceparent_is_ignored(client: httpx.AsyncClient) -> None:
    zero = f"00-{'0' * 32}-00f067aa0ba902b7-01"
    for traceparent in ("garbage", zero):
        response = await client.get("/healthz", headers={"traceparent": traceparent})
        assert GENERATED.match(response.headers["x-request-id"])


async def test_generated_when_absent_and_unique(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert GENERATED.match(first)
    assert GENERATED.match(second)
    assert first != second


async def test_id_is_in_every_log_line_of_the_request(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    response = await client.get("/_probe/work", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 200
    assert events_of(logs, "trace-me") == ["work_started", "work_finished", "request"]
    [request_event] = [event for event in logs.events() if event["event"] == "request"]
    assert request_event["route"] == "/_probe/work"
    assert request_event["status"] == 200
    assert request_event["level"] == "info"
    assert request_event["logger"] == "app.api.request"
    assert "timestamp" in request_event


async def test_concurrent_requests_keep_their_own_ids(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    await asyncio.gather(
        *(
            client.get("/_probe/work", params={"step": n}, headers={"X-Request-ID": f"req-{n}"})
            for n in range(5)
        )
    )
    for event in logs.events():
        if event["event"] in ("work_started", "work_finished"):
            assert event["correlation_id"] == f"req-{event['step']}"
    for n in range(5):
        assert events_of(logs, f"req-{n}") == ["work_started", "work_finished", "request"]


async def test_error_responses_carry_the_id(client: httpx.AsyncClient, logs: LogCapture) -> None:
    response = await client.get("/missing", headers={"X-Request-ID": "lost-1"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "lost-1"
    assert response.json()["correlation_id"] == "lost-1"
    assert events_of(logs, "lost-1") == ["request"]
