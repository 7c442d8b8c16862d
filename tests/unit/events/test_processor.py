"""EventProcessor: an event goes to the handler its key names, with the work's trace id, and
leaves one PHI-free log line."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import pytest

from app.events.processor import EventProcessor
from app.handlers.protocol import PermanentFailure, Processed
from app.handlers.registry import HandlerRegistry
from app.integrations.medplum import MedplumUnavailable
from tests.conftest import LogCapture, settings_for_tests
from tests.unit.events.support import RecordingHandler, stored_event

if TYPE_CHECKING:
    from app.integrations.medplum import MedplumClient

NOW = datetime(2025, 3, 2, 8, 30, tzinfo=UTC)
# Identifiers that must stay out of the processing log line (they say whose record it is).
PATIENT = "pat-canary-5521"
RESOURCE = "obs-canary-7710"
AUTHOR = "Practitioner/author-canary-3303"


def processor_for(*handlers: RecordingHandler) -> tuple[EventProcessor, object]:
    medplum = object()
    processor = EventProcessor(
        cast("MedplumClient", medplum),
        settings_for_tests(),
        HandlerRegistry(handlers),
        clock=lambda: NOW,
    )
    return processor, medplum


async def test_the_event_goes_to_its_handler_with_the_trace_id() -> None:
    bmi = RecordingHandler(name="bmi", result=Processed("proposed", 2, writes=5))
    review = RecordingHandler(name="review")
    processor, medplum = processor_for(bmi, review)
    event = stored_event(handler="bmi")

    result = await processor.process(event, trace_id="trace-123")

    assert result == Processed("proposed", 2, writes=5)
    assert review.calls == []
    [(given, context)] = bmi.calls
    assert given is event
    assert context.trace_id == "trace-123"
    assert context.medplum is medplum
    assert context.clock() == NOW
    assert context.settings.job_max_attempts == settings_for_tests().job_max_attempts


async def test_each_event_gets_its_own_trace_id() -> None:
    # The processor is shared by every job of a worker: one job's trace id must not leak into
    # the next job's writes (Medplum would echo it on their notifications).
    handler = RecordingHandler()
    processor, _ = processor_for(handler)
    await processor.process(stored_event(id=1), trace_id="first")
    await processor.process(stored_event(id=2))
    assert [context.trace_id for _, context in handler.calls] == ["first", None]
    assert processor.context.trace_id is None


async def test_an_unknown_handler_is_a_permanent_failure(logs: LogCapture) -> None:
    handler = RecordingHandler(name="bmi")
    processor, _ = processor_for(handler)
    with pytest.raises(PermanentFailure) as raised:
        await processor.process(stored_event(handler="retired-bot"))
    assert raised.value.error_code == "unknown_handler"
    assert handler.calls == []
    assert not [e for e in logs.events() if e["event"] == "event_processed"]


async def test_a_handler_error_reaches_the_job_unchanged(logs: LogCapture) -> None:
    # The job's retry policy decides on the error's type: it must not be wrapped or swallowed.
    error = MedplumUnavailable("Medplum server error", status_code=503)
    processor, _ = processor_for(RecordingHandler(error=error))
    with pytest.raises(MedplumUnavailable) as raised:
        await processor.process(stored_event())
    assert raised.value is error
    assert not [e for e in logs.events() if e["event"] == "event_processed"]


async def test_one_log_line_without_phi(logs: LogCapture) -> None:
    handler = RecordingHandler(name="bmi", result=Processed("proposed", 2, writes=5))
    processor, _ = processor_for(handler)
    event = stored_event(
        id=99, handler="bmi", patient_id=PATIENT, resource_id=RESOURCE, author=AUTHOR
    )

    await processor.process(event, trace_id="trace-9")

    [line] = [e for e in logs.events() if e["event"] == "event_processed"]
    assert line["event_id"] == 99
    assert line["handler"] == "bmi"
    assert line["outcome"] == "proposed"
    assert line["medplum_requests"] == 2
    assert line["writes"] == 5
    assert isinstance(line["duration_ms"], int | float)
    for identifier in (PATIENT, RESOURCE, AUTHOR):
        assert identifier not in logs.text
