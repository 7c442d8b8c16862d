"""Test doubles shared by the event tests: stored events and a recording handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.handlers.protocol import (
    HandlerContext,
    Processed,
    Schedule,
    StoredEvent,
    Subscribes,
    SweepQuery,
)

RECEIVED = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def stored_event(**overrides: Any) -> StoredEvent:
    values: dict[str, Any] = {
        "id": 41,
        "handler": "fake",
        "subscription_id": "sub-1",
        "resource_type": "Observation",
        "resource_id": "obs-1",
        "version_id": "3",
        "interaction": "update",
        "source": "notification",
        "patient_id": "pat-1",
        "author": "Practitioner/author-1",
        "received_at": RECEIVED,
        "status": "queued",
        "outcome": None,
        "error_code": None,
        "job_id": 7,
        "attempts": 0,
    }
    values.update(overrides)
    return StoredEvent(**values)


@dataclass
class RecordingHandler:
    """A handler that records what it was given and answers ``result`` (or raises ``error``)."""

    name: str = "fake"
    version: str = "1.0.0"
    subscription: Subscribes | None = None
    sweep: SweepQuery | None = None
    schedule: Schedule | None = None
    result: Processed = field(default_factory=lambda: Processed("proposed", 2, writes=4))
    error: Exception | None = None
    calls: list[tuple[StoredEvent, HandlerContext]] = field(
        default_factory=list[tuple[StoredEvent, HandlerContext]]
    )

    async def handle(self, event: StoredEvent, context: HandlerContext) -> Processed:
        self.calls.append((event, context))
        if self.error is not None:
            raise self.error
        return self.result

    async def run_scheduled(self, context: HandlerContext) -> int:
        del context
        return 0
