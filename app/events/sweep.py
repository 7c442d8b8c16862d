"""Reconciliation sweep: find what Medplum changed that the service never received.

For each handler that declares a sweep query (every bot's trigger criteria, the clinicians'
decided review Tasks), page through the matching resources in (``_lastUpdated``, id) order from
the handler's cursor and record their event keys. Keys already recorded from notifications
deduplicate on the unique (handler, resource, version) constraint, so the sweep enqueues only
what was lost: while a subscription was off, after Medplum exhausted its retries, or when
enqueueing failed.

The sweep always makes progress. Each page is a fresh search
``_lastUpdated=ge<cursor>&_sort=_lastUpdated,_id`` (with ``_offset`` only to step over the
resources that share the cursor's exact instant), and the cursor (``_lastUpdated``, id, how
many of that instant were passed) is persisted after every page: a run reads at most
``STARVIT_SWEEP_MAX_PAGES`` pages of ``STARVIT_SWEEP_PAGE_SIZE`` per handler and the next run
resumes where it stopped, however many resources one window holds.

A write committed late can carry a ``_lastUpdated`` earlier than resources already swept. So
the sweep reads up to now, but the persisted cursor never passes ``now - settle``
(``STARVIT_SWEEP_SETTLE_SECONDS``): the newest few seconds are read again by the next run
(recorded keys deduplicate). The lag figure, how far behind now the sweep has looked, is kept
per handler in ``starvit.sweep_watermarks`` (:meth:`EventRepository.sweep_lag`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.keys import patient_of
from app.events.repository import EventKey, EventRepository, SweepCursor, record_events
from app.fhir.views import ResourceView
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.fhir.resource_json import JSONObject
    from app.handlers.protocol import Handler, SweepQuery
    from app.handlers.registry import HandlerRegistry
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.events.sweep")

# Resuming inside a crowded instant, the sweep asks for up to this many resources before the
# cursor's offset, so that the first one it gets is one it passed before even if a few of the
# instant's resources left it meanwhile (updated again, so later). When the first one is not a
# passed one, more left than that: it reads the instant again from its start.
RESUME_SLACK = 20


@dataclass(frozen=True, slots=True)
class SweepResult:
    handler: str
    seen: int
    enqueued: int
    pages: int = 0
    caught_up: bool = True  # the run reached the end of what there was


@dataclass(slots=True)
class _Position:
    """The in-memory cursor of one handler's run."""

    since: datetime
    after_id: str | None
    bucket_offset: int

    def passed(self, last_updated: datetime, resource_id: str) -> bool:
        return (last_updated, resource_id) <= (self.since, self.after_id or "")

    def advance(self, last_updated: datetime, resource_id: str, index_in_bucket: int) -> None:
        self.since, self.after_id, self.bucket_offset = last_updated, resource_id, index_in_bucket

    def frozen(self) -> SweepCursor:
        return SweepCursor(self.since, self.after_id, self.bucket_offset)


async def sweep(
    *,
    settings: Settings,
    medplum: MedplumClient,
    pool: AsyncConnectionPool[AsyncConnection],
    queue: App,
    registry: HandlerRegistry,
    max_pages: int | None = None,
    now: datetime | None = None,
) -> list[SweepResult]:
    repo = EventRepository(pool)
    moment = now or datetime.now(UTC)
    results: list[SweepResult] = []
    for handler in registry.swept():
        results.append(
            await _sweep_handler(
                handler,
                settings=settings,
                medplum=medplum,
                pool=pool,
                queue=queue,
                repo=repo,
                max_pages=max_pages or settings.sweep_max_pages,
                moment=moment,
            )
        )
    return results


async def _sweep_handler(
    handler: Handler,
    *,
    settings: Settings,
    medplum: MedplumClient,
    pool: AsyncConnectionPool[AsyncConnection],
    queue: App,
    repo: EventRepository,
    max_pages: int,
    moment: datetime,
) -> SweepResult:
    target = handler.sweep
    assert target is not None
    page_size = settings.sweep_page_size
    horizon = moment - timedelta(seconds=settings.sweep_settle_seconds)
    stored = await repo.sweep_cursor(handler.name)
    if stored is None:
        stored = SweepCursor(moment - timedelta(hours=settings.sweep_initial_lookback_hours))
    position = _Position(stored.since, stored.after_id, stored.bucket_offset)
    # What may be persisted: the last position before the horizon.
    durable = position.frozen()
    seen = enqueued = pages = 0
    caught_up = False
    while pages < max_pages:
        offset = max(0, position.bucket_offset - RESUME_SLACK)
        resources = await _page(medplum, target, position.since, offset, page_size)
        pages += 1
        if offset and not _starts_at_or_before(resources, position):
            # The crowded instant shrank under the cursor (resources in it were updated
            # again): what now comes first at this offset may have had unread ones before it.
            # Read the instant again from its start (passed resources are skipped).
            log.warning("sweep_cursor_rewound", handler=handler.name)
            position.bucket_offset = 0
            continue
        # Each resource's place in its instant: the page starts `offset` resources into the
        # cursor's instant, and every later instant starts on this page.
        bucket, in_bucket = position.since, offset
        keys: list[EventKey] = []
        for resource in resources:
            view = ResourceView(resource)
            last_updated, resource_id = view.last_updated, view.id
            if last_updated is None or not resource_id:
                continue
            if last_updated != bucket:
                bucket, in_bucket = last_updated, 0
            in_bucket += 1
            if position.passed(last_updated, resource_id):
                if last_updated == position.since:
                    # Re-read after a rewind: the cursor's place in its instant is re-counted.
                    position.bucket_offset = max(position.bucket_offset, in_bucket)
                    if last_updated < horizon:
                        durable = position.frozen()
                continue
            position.advance(last_updated, resource_id, in_bucket)
            if last_updated < horizon:
                durable = position.frozen()
            key = _key_of(handler.name, target, resource, view, settings.service_author)
            if key is not None:
                seen += 1
                keys.append(key)
        if keys:
            async with pool.connection() as conn, conn.transaction():
                recorded = await record_events(conn, queue, keys)
            enqueued += sum(1 for r in recorded if not r.duplicate)
        caught_up = len(resources) < page_size
        await repo.save_sweep_cursor(
            handler.name, durable, scanned_to=moment if caught_up else None
        )
        if caught_up:
            break
    if enqueued:
        log.warning("sweep_found_missed_events", handler=handler.name, enqueued=enqueued)
    if not caught_up:
        log.warning("sweep_behind", handler=handler.name, pages=pages, seen=seen)
    return SweepResult(handler.name, seen, enqueued, pages, caught_up)


def _starts_at_or_before(resources: list[JSONObject], position: _Position) -> bool:
    """Whether the page's first resource is one the cursor has passed: then every resource
    before it (it sorts first) was passed too, and nothing was skipped by the offset."""
    if not resources:
        return False
    view = ResourceView(resources[0])
    if view.last_updated is None or not view.id:
        return False
    return position.passed(view.last_updated, view.id)


async def _page(
    medplum: MedplumClient, target: SweepQuery, since: datetime, offset: int, page_size: int
) -> list[JSONObject]:
    params = [
        *target.params,
        ("_lastUpdated", f"ge{_instant(since)}"),
        ("_sort", "_lastUpdated,_id"),
        ("_count", str(page_size)),
    ]
    if offset:
        params.append(("_offset", str(offset)))
    page = await medplum.search(target.resource_type, params, extended=target.extended)
    return list(page.resources)


def _instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds, as Medplum writes ``meta.lastUpdated``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key_of(
    handler: str,
    target: SweepQuery,
    resource: JSONObject,
    view: ResourceView,
    service_author: str,
) -> EventKey | None:
    if not view.id or not view.version_id or view.author == service_author:
        return None  # the service's own writes
    if not target.includes_service_tagged and view.tagged(TAG_SYSTEM, TAG_CODE):
        return None
    return EventKey(
        handler=handler,
        resource_type=view.resource_type,
        resource_id=view.id,
        version_id=view.version_id,
        interaction="update",
        source="sweep",
        patient_id=patient_of(resource, view.resource_type, view.id),
        author=view.author,
    )
