"""Processing one event: its handler, looked up in the registry, does the work; this module
times it and logs one PHI-free line."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.events.ledger import PostgresSlotLedger
from app.handlers.protocol import HandlerContext, PermanentFailure, Processed
from app.integrations.medplum import metered
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from app.handlers.ledger import SlotLedger
    from app.handlers.protocol import StoredEvent
    from app.handlers.registry import HandlerRegistry
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.events.processor")


class EventProcessor:
    """Runs events through their handler. Shared by all jobs of one worker process."""

    def __init__(
        self,
        medplum: MedplumClient,
        settings: Settings,
        registry: HandlerRegistry,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ledger: SlotLedger | None = None,
    ) -> None:
        self.registry = registry
        self.context = HandlerContext(
            medplum=medplum, settings=settings, clock=clock, ledger=ledger
        )

    async def process(self, event: StoredEvent, *, trace_id: str | None = None) -> Processed:
        handler = self.registry.get(event.handler)
        if handler is None:
            raise PermanentFailure("unknown_handler")
        started = time.perf_counter()
        ledger = self.context.ledger
        if isinstance(ledger, PostgresSlotLedger) and not ledger.complete:
            # Once per database: the suggestions written before the ledger existed.
            await ledger.backfill(self.context.medplum)
        with metered() as meter:
            result = await handler.handle(
                event, replace(self.context, trace_id=trace_id, event_id=event.id)
            )
        if meter.requests:
            # What was really sent, the client's retries included (the handler counts the
            # requests it made, once each).
            result = replace(result, medplum_requests=meter.requests, quota_points=meter.points)
        log.info(
            "event_processed",
            event_id=event.id,
            handler=event.handler,
            outcome=result.outcome,
            medplum_requests=result.medplum_requests,
            writes=result.writes,
            quota_points=meter.points,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return result
