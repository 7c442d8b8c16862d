"""Canary PHI sent through the API, handled by deliberately careless code, must not reach a log
line, a span attribute or an error response."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from app.observability.logging import get_logger
from app.observability.tracing import configure_tracing
from tests.conftest import LogCapture, Serve, settings_for_tests

NAME = "Zebediah Quackenbush"
BIRTH_DATE = "1937-11-05"
ADDRESS = "742 Evergreen Terrace Springfield"
NOTE = "patient reports canary-symptom-xyz"
CANARIES = (NAME, "Zebediah", "Quackenbush", BIRTH_DATE, ADDRESS, "Evergreen", "canary-symptom")

PATIENT = {
    "resourceType": "Patient",
    "id": "p-1",
    "name": [{"text": NAME, "given": ["Zebediah"], "family": "Quackenbush"}],
    "birthDate": BIRTH_DATE,
    "address": [{"line": ["742 Evergreen Terrace"], "city": "Springfield", "text": ADDRESS}],
    "note": [{"text": NOTE}],
}


class Intake(BaseModel):
    name: str
    birthDate: str  # FHIR's spelling
    address: str
    note: str


log = get_logger("tests.careless")
careless = APIRouter(prefix="/_careless")


@careless.post("/intake")
async def intake(intake: Intake, request: Request) -> dict[str, str]:
    raw = await request.body()
    # Everything careless code does with a payload:
    log.info("got", body=raw, name=intake.name, resource=intake.model_dump())
    log.info("patient", birthDate=intake.birthDate, address=intake.address, note=intake.note)
    log.info("nested", context={"patient": {"name": intake.name, "text": intake.note}})
    log.warning("bytes", chunk=raw)
    logging.getLogger("some.library").warning(
        "failed for %s born %s", intake.name, intake.birthDate
    )
    return {"status": "accepted"}


@careless.post("/fhir")
async def fhir(request: Request) -> None:
    patient = json.loads(await request.body())
    log.info("received", payload=patient, resource=patient, data=patient)
    log.info("summary", patient=patient, names=patient["name"], addresses=patient["address"])
    raise ValueError(f"cannot file {patient['name'][0]['text']} born {patient['birthDate']}")


_exporter = InMemorySpanExporter()
_tracing_ready: list[bool] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not _tracing_ready:
        configure_tracing(settings_for_tests(), extra_processor=SimpleSpanProcessor(_exporter))
        _tracing_ready.append(True)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


@pytest.fixture
async def client(
    make_app: Callable[..., FastAPI], serve: Serve, spans: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app()
    app.include_router(careless)
    async with serve(app) as client:
        yield client


def assert_no_canary(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


def span_text(span: ReadableSpan) -> str:
    parts = [span.name, json.dumps(dict(span.attributes or {}), default=str)]
    parts += [json.dumps(dict(event.attributes or {}), default=str) for event in span.events]
    return "\n".join(parts)


async def test_careless_logging_of_a_request_leaks_nothing(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    response = await client.post(
        "/_careless/intake",
        params={"name": NAME, "dob": BIRTH_DATE},
        json={"name": NAME, "birthDate": BIRTH_DATE, "address": ADDRESS, "note": NOTE},
        headers={"X-Request-ID": "canary-run-1"},
    )
    assert response.status_code == 200
    assert_no_canary(logs.text)
    events = {str(event["event"]) for event in logs.events()}
    assert {"got", "patient", "nested", "bytes", "request"} <= events
    [got] = [event for event in logs.events() if event["event"] == "got"]
    assert got["phi_guard"] == "body_refused"
    assert got["correlation_id"] == "canary-run-1"


async def test_failure_with_phi_in_the_exception_leaks_nothing(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    response = await client.post("/_careless/fhir", json=PATIENT)
    assert response.status_code == 500
    assert response.json()["error_code"] == "internal_error"
    assert_no_canary(response.text)
    assert_no_canary(logs.text)
    assert "Traceback" not in logs.text
    assert any(event.get("exception_type") == "ValueError" for event in logs.events())


async def test_validation_failure_with_phi_leaks_nothing(
    client: httpx.AsyncClient, logs: LogCapture
) -> None:
    response = await client.post(
        "/_careless/intake", json={"name": NAME, "birthDate": 19371105, "address": ADDRESS}
    )
    assert response.status_code == 422
    assert_no_canary(response.text)
    assert_no_canary(logs.text)


async def test_spans_carry_the_correlation_id_and_no_phi_or_query(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    await client.post(
        "/_careless/intake",
        params={"name": NAME, "dob": BIRTH_DATE},
        json={"name": NAME, "birthDate": BIRTH_DATE, "address": ADDRESS, "note": NOTE},
        headers={"X-Request-ID": "canary-span-1"},
    )
    await client.post(
        "/_careless/fhir",
        params={"q": NAME},
        json=PATIENT,
        headers={"X-Request-ID": "canary-span-2"},
    )
    finished = spans.get_finished_spans()
    servers = [span for span in finished if span.parent is None]
    assert sorted(str((span.attributes or {}).get("correlation_id")) for span in servers) == [
        "canary-span-1",
        "canary-span-2",
    ]
    for span in finished:
        text = span_text(span)
        assert_no_canary(text)
        assert "?" not in text
        assert "dob=" not in text
        assert "Zebediah" not in text
