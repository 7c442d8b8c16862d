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
from app.domain.review import APPROVING, REJECTING
from app.observability.logging import get_logger
from app.persistence.events import EventKey, EventRepository, record_events
from app.services.notifications import REVIEW_HANDLER, patient_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from procrastinate import App
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.domain.bot import Bot
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.services.sweep")

OVERLAP = timedelta(minutes=5)
PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class SweepResult:
    bot: str
    seen: int
    enqueued: int


@dataclass(frozen=True, slots=True)
class SweepTarget:
    """What one handler's Subscription would have notified: a search, and whether the search
    must show ``meta.author`` (decisions are only valid with their author)."""

    handler: str
    resource_type: str
    params: list[tuple[str, str]]
    extended: bool = False


def targets(bots: Sequence[Bot]) -> list[SweepTarget]:
    found: list[SweepTarget] = []
    for bot in bots:
        resource_type, _, criteria = bot.declaration.trigger.criteria.partition("?")
        params = [
            (name, value)
            for name, _, value in (part.partition("=") for part in criteria.split("&"))
            if value
        ]
        found.append(SweepTarget(bot.declaration.name, resource_type, params))
    # Clinicians' decisions on review Tasks: every decided status, with the author.
    decided = ",".join(sorted(APPROVING | REJECTING))
    found.append(
        SweepTarget(
            REVIEW_HANDLER,
            "Task",
            [("_tag", f"{TAG_SYSTEM}|{TAG_CODE}"), ("status", decided)],
            extended=True,
        )
    )
    return found


async def sweep(
    *,
    settings: Settings,
    medplum: MedplumClient,
    pool: AsyncConnectionPool[AsyncConnection],
    queue: App,
    bots: Sequence[Bot],
    max_pages: int = 20,
    now: datetime | None = None,
) -> list[SweepResult]:
    repo = EventRepository(pool)
    initial_lookback = timedelta(hours=settings.sweep_initial_lookback_hours)
    service_author = settings.service_author
    results: list[SweepResult] = []
    moment = now or datetime.now(UTC)
    for target in targets(bots):
        since = await repo.watermark(target.handler) or (moment - initial_lookback)
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
                if target.handler != REVIEW_HANDLER and view.tagged(TAG_SYSTEM, TAG_CODE):
                    continue
                seen += 1
                keys.append(
                    EventKey(
                        bot=target.handler,
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
            await repo.set_watermark(target.handler, newest)
        if enqueued:
            log.warning("sweep_found_missed_events", handler=target.handler, enqueued=enqueued)
        results.append(SweepResult(target.handler, seen, enqueued))
    return results
