"""Every failure the API can produce answers with the JSON error envelope and its status code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Literal

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

from app.api.errors import SAFE_MESSAGES, ApiError, ErrorCode
from tests.conftest import LogCapture, Serve

ENVELOPE_KEYS = {"error_code", "message", "correlation_id", "details"}


class Reading(BaseModel):
    systolic: int = Field(ge=40, le=300)
    unit: Literal["mm[Hg]"]


probe = APIRouter(prefix="/_probe")


@probe.post("/readings")
async def post_reading(reading: Reading) -> dict[str, int]:
    return {"systolic": reading.systolic}


@probe.post("/bytes")
async def count_bytes(request: Request) -> dict[str, int]:
    return {"bytes": len(await request.body())}


@probe.get("/rate-limited")
async def rate_limited() -> None:
    raise ApiError(429, ErrorCode.RATE_LIMITED, headers={"Retry-After": "30"})


@probe.get("/boom")
async def boom() -> None:
    raise RuntimeError("canary secret text")


def assert_envelope(response: httpx.Response, status: int, code: ErrorCode) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= ENVELOPE_KEYS
    assert body["error_code"] == code.value
    assert body["message"] == SAFE_MESSAGES[code]
    assert body["correlation_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return body


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    app = make_app(max_body_bytes=1024)
    app.include_router(probe)
    return app


@pytest.fixture
async def client(app: FastAPI, serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


async def test_valid_request_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/_probe/readings", json={"systolic": 120, "unit": "mm[Hg]"})
    assert response.status_code == 200
    assert response.json() == {"systolic": 120}


class TestValidation:
    async def test_422_names_fields_without_echoing_values(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/_probe/readings", json={"systolic": "canary-value-77", "unit": "canary-unit"}
        )
        body = assert_envelope(response, 422, ErrorCode.VALIDATION_ERROR)
        assert body["details"] == {
            "errors": [
                {"loc": ["body", "systolic"], "type": "int_parsing"},
                {"loc": ["body", "unit"], "type": "literal_error"},
            ]
        }
        assert "canary" not in response.text

    async def test_422_on_missing_body(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/_probe/readings")
        assert_envelope(response, 422, ErrorCode.VALIDATION_ERROR)

    async def test_422_on_broken_json_without_echoing_it(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/_probe/readings",
            content=b'{"systolic": "canary-fragment',
            headers={"content-type": "application/json"},
        )
        assert_envelope(response, 422, ErrorCode.VALIDATION_ERROR)
        assert "canary" not in response.text


async def test_404_unknown_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/route")
    assert_envelope(response, 404, ErrorCode.NOT_FOUND)


async def test_405_wrong_method_keeps_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz")
    assert_envelope(response, 405, ErrorCode.METHOD_NOT_ALLOWED)
    assert "GET" in response.headers["allow"]


class TestBodySizeLimit:
    async def test_413_by_declared_content_length(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/_probe/bytes", content=b"x" * 1025)
        assert_envelope(response, 413, ErrorCode.PAYLOAD_TOO_LARGE)

    async def test_413_while_streaming_without_length(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"x" * 400

        request = client.build_request("POST", "/_probe/bytes", content=chunks())
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = await client.send(request)
        assert_envelope(response, 413, ErrorCode.PAYLOAD_TOO_LARGE)

    async def test_streamed_body_within_limit_is_read(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(2):
                yield b"x" * 500

        response = await client.post("/_probe/bytes", content=chunks())
        assert response.status_code == 200
        assert response.json() == {"bytes": 1000}

    async def test_body_at_exactly_the_limit_is_accepted(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/_probe/bytes", content=b"x" * 1024)
        assert response.status_code == 200

    async def test_400_on_unparseable_content_length(self, client: httpx.AsyncClient) -> None:
        request = client.build_request("POST", "/_probe/bytes", content=b"abc")
        request.headers["content-length"] = "three"
        response = await client.send(request)
        assert_envelope(response, 400, ErrorCode.MALFORMED_BODY)


async def test_429_rate_limited_keeps_retry_after(client: httpx.AsyncClient) -> None:
    response = await client.get("/_probe/rate-limited")
    assert_envelope(response, 429, ErrorCode.RATE_LIMITED)
    assert response.headers["retry-after"] == "30"


async def test_500_hides_exception_text(client: httpx.AsyncClient, logs: LogCapture) -> None:
    response = await client.get("/_probe/boom", headers={"X-Request-ID": "req-500"})
    body = assert_envelope(response, 500, ErrorCode.INTERNAL_ERROR)
    assert body["correlation_id"] == "req-500"
    assert "canary secret text" not in response.text
    assert "canary secret text" not in logs.text
    assert "Traceback" not in logs.text
    [failure] = [event for event in logs.events() if event["event"] == "unhandled_exception"]
    assert failure["exception_type"] == "RuntimeError"
    assert failure["correlation_id"] == "req-500"
    assert failure["level"] == "error"
