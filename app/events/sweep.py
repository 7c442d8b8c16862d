"""Reconciliation sweep: find what Medplum changed that the service never received.

For each handler that declares a sweep query (every bot's trigger criteria, the clinicians'
decided review Tasks), search for resources updated since the handler's watermark
(with an overlap, because a resource committed late can carry an earlier ``_lastUpdated``) and
record their event keys. Keys already recorded from notifications deduplicate on the unique
(handler, resource, version) constraint, so the sweep enqueues only what was lost: while a
subscription was off, after Medplum exhausted its retries, or when enqueueing failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.keys import patient_of
from app.events.repository import EventKey, EventRepository, record_events
from app.fhir.views import ResourceView
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.handlers.registry import HandlerRegistry
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.events.sweep")

OVERLAP = timedelta(minutes=5)
PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class SweepResult:
    handler: str
    seen: int
    enqueued: int


async def sweep(
    *,
    settings: Settings,
    medplum: MedplumClient,
    pool: AsyncConnectionPool[AsyncConnection],
    queue: App,
    registry: HandlerRegistry,
    max_pages: int = 20,
    now: datetime | None = None,
) -> list[SweepResult]:
    repo = EventRepository(pool)
    initial_lookback = timedelta(hours=settings.sweep_initial_lookback_hours)
    service_author = settings.service_author
    results: list[SweepResult] = []
    moment = now or datetime.now(UTC)
    for handler in registry.swept():
        target = handler.sweep
        assert target is not None
        since = await repo.watermark(handler.name) or (moment - initial_lookback)
        params = [
            *target.params,
            ("_lastUpdated", f"gt{(since - OVERLAP).isoformat()}"),
            ("_sort", "_lastUpdated"),
            ("_count", str(PAGE_SIZE)),
        ]
        seen = enqueued = 0
        newest = since
        async for page in medplum.search_pages(
            target.resource_type, params, max_pages=max_pages, extended=target.extended
        ):
            keys: list[EventKey] = []
            for resource in page.resources:
                view = ResourceView(resource)
                if view.last_updated is not None and view.last_updated > newest:
                    newest = view.last_updated
                if not view.id or not view.version_id or view.author == service_author:
                    continue  # the service's own writes
                if not target.includes_service_tagged and view.tagged(TAG_SYSTEM, TAG_CODE):
                    continue
                seen += 1
                keys.append(
                    EventKey(
                        handler=handler.name,
                        resource_type=view.resource_type,
                        resource_id=view.id,
                        version_id=view.version_id,
                        interaction="update",
                        source="sweep",
                        patient_id=patient_of(resource, view.resource_type, view.id),
                        author=view.author,
                    )
                )
            if keys:
                async with pool.connection() as conn, conn.transaction():
                    recorded = await record_events(conn, queue, keys)
                enqueued += sum(1 for r in recorded if not r.duplicate)
        if newest > since:
            await repo.set_watermark(handler.name, newest)
        if enqueued:
            log.warning("sweep_found_missed_events", handler=handler.name, enqueued=enqueued)
        results.append(SweepResult(handler.name, seen, enqueued))
    return results
