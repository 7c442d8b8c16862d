"""Reconciliation sweep: find what Medplum changed that the service never received.

For each bot, search its trigger criteria for resources updated since the bot's watermark
(with an overlap, because a resource committed late can carry an earlier ``_lastUpdated``) and
record their event keys. Keys already recorded from notifications deduplicate on the unique
(bot, resource, version) constraint, so the sweep enqueues only what was lost: while a
subscription was off, after Medplum exhausted its retries, or when enqueueing failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.domain.fhir_views import ResourceView
from app.domain.proposals import TAG_CODE, TAG_SYSTEM
from app.observability.logging import get_logger
from app.persistence.events import EventKey, record_events
from app.services.notifications import patient_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from procrastinate import App
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.domain.bot import Bot
    from app.integrations.medplum import MedplumClient
    from app.persistence.events import EventRepository

log = get_logger("app.services.sweep")

OVERLAP = timedelta(minutes=5)
PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class SweepResult:
    bot: str
    seen: int
    enqueued: int


async def sweep(
    *,
    medplum: MedplumClient,
    repo: EventRepository,
    pool: AsyncConnectionPool[AsyncConnection],
    queue: App,
    bots: Sequence[Bot],
    initial_lookback: timedelta,
    max_pages: int = 20,
    now: datetime | None = None,
) -> list[SweepResult]:
    results: list[SweepResult] = []
    moment = now or datetime.now(UTC)
    for bot in bots:
        declaration = bot.declaration
        since = await repo.watermark(declaration.name) or (moment - initial_lookback)
        resource_type, _, criteria = declaration.trigger.criteria.partition("?")
        params: list[tuple[str, str]] = [
            tuple(part.split("=", 1))  # pyright: ignore[reportAssignmentType]
            for part in criteria.split("&")
            if "=" in part
        ]
        params += [
            ("_lastUpdated", f"gt{(since - OVERLAP).isoformat()}"),
            ("_sort", "_lastUpdated"),
            ("_count", str(PAGE_SIZE)),
        ]
        seen = enqueued = 0
        newest = since
        pages = 0
        async for page in medplum.search_pages(resource_type, params):
            keys: list[EventKey] = []
            for resource in page.resources:
                view = ResourceView(resource)
                if view.last_updated is not None and view.last_updated > newest:
                    newest = view.last_updated
                if view.tagged(TAG_SYSTEM, TAG_CODE) or not view.id or not view.version_id:
                    continue  # the service's own writes
                seen += 1
                keys.append(
                    EventKey(
                        bot=declaration.name,
                        resource_type=view.resource_type,
                        resource_id=view.id,
                        version_id=view.version_id,
                        interaction="update",
                        source="sweep",
                        patient_id=patient_of(resource, view.resource_type, view.id),
                    )
                )
            if keys:
                async with pool.connection() as conn, conn.transaction():
                    recorded = await record_events(conn, queue, keys)
                enqueued += sum(1 for r in recorded if not r.duplicate)
            pages += 1
            if pages >= max_pages:
                break
        if newest > since:
            await repo.set_watermark(declaration.name, newest)
        if enqueued:
            log.warning("sweep_found_missed_events", bot=declaration.name, enqueued=enqueued)
        results.append(SweepResult(declaration.name, seen, enqueued))
    return results
