"""What the ops dashboard asks Medplum: each handler's Subscription as Medplum reports it,
Medplum's own record of its delivery attempts (``transmit`` AuditEvents), what Medplum changed
that never reached the inbox (gap detection), the clinicians' decisions on the service's review
Tasks; and the Medplum side of the ops actions (re-enable a Subscription, ``$resend``, a sweep
of a window).

Only references, codes, statuses, times and counts leave this module: no resource body, no
free text (a Subscription's ``error`` text is Medplum's own message, sanitised and cut).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median
from typing import TYPE_CHECKING

from app.botkit.identifiers import BOT_VERSION_URL, TAG_CODE, TAG_SYSTEM
from app.botkit.statuses import OPEN_TASK_STATUSES
from app.events.keys import patient_of
from app.events.repository import EventKey, record_events
from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str
from app.fhir.views import ResourceView
from app.handlers.registry import HandlerRegistry
from app.integrations.medplum.errors import sanitise_diagnostics
from app.ops import queries
from app.subscriptions.service import SUBSCRIPTION_TAG_SYSTEM, SyncResult, sync_subscriptions

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg_pool import AsyncConnectionPool

    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

_STATUS = re.compile(r"received status (\d{3})")
PAGE = 100


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    handler: str
    subscription_id: str | None
    status: str  # active | off | error | requested | missing
    error: str | None


@dataclass(frozen=True, slots=True)
class TransmitStats:
    attempts: int
    failures: int
    http_codes: dict[str, int]
    auto_disabled: int
    last_attempt_at: datetime | None
    truncated: bool = False  # more AuditEvents than were read


@dataclass(frozen=True, slots=True)
class Gap:
    handler: str
    window_start: datetime
    window_end: datetime
    changed_in_medplum: int
    reached_inbox: int
    recovered_by_sweep: int
    missing: list[str] = field(default_factory=list[str])  # Type/id/_history/version
    truncated: bool = False


@dataclass(slots=True)
class Acceptance:
    bot: str
    version: str
    approved: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict[str, int])
    expired: int = 0
    withdrawn: int = 0
    pending: int = 0
    decision_hours: list[float] = field(default_factory=list[float])

    @property
    def median_hours_to_decision(self) -> float | None:
        return round(median(self.decision_hours), 2) if self.decision_hours else None


def _handler_tag(resource: JSONObject) -> str | None:
    meta = get_object(resource, "meta") or {}
    for tag in get_objects(meta, "tag"):
        if get_str(tag, "system") == SUBSCRIPTION_TAG_SYSTEM:
            return get_str(tag, "code")
    return None


async def subscriptions(
    medplum: MedplumClient, registry: HandlerRegistry
) -> dict[str, SubscriptionState]:
    """Each subscribed handler's Subscription as Medplum has it now (``missing`` if none)."""
    names = sorted(registry.subscribed_names())
    result = await medplum.search(
        "Subscription",
        {
            "_tag": ",".join(f"{SUBSCRIPTION_TAG_SYSTEM}|{name}" for name in names),
            "_count": str(PAGE),
        },
    )
    found: dict[str, JSONObject] = {}
    for resource in result.resources:
        name = _handler_tag(resource)
        if name is None or not get_str(resource, "id"):
            continue
        # With duplicates, an active one speaks for the handler (as sync manages it).
        if name not in found or get_str(resource, "status") == "active":
            found[name] = resource
    states: dict[str, SubscriptionState] = {}
    for name in names:
        resource = found.get(name)
        if resource is None:
            states[name] = SubscriptionState(name, None, "missing", None)
            continue
        error = get_str(resource, "error")
        states[name] = SubscriptionState(
            handler=name,
            subscription_id=get_str(resource, "id"),
            status=get_str(resource, "status") or "error",
            error=sanitise_diagnostics(error)[:200] if error and error.strip() else None,
        )
    return states


async def transmit_stats(
    medplum: MedplumClient, subscription_id: str, since: datetime, *, max_pages: int = 3
) -> TransmitStats:
    """Medplum's delivery attempts for one Subscription since ``since``: its ``transmit``
    AuditEvents (outcome 0 success, 4 failed attempt, 8 auto-disabled) and the HTTP status each
    attempt got (``network`` when none: a timeout or a refused connection)."""
    attempts = failures = disabled = 0
    codes: Counter[str] = Counter()
    last: datetime | None = None
    pages = 0
    truncated = False
    params = [
        ("type", "transmit"),
        ("entity", f"Subscription/{subscription_id}"),
        ("_lastUpdated", f"ge{since.isoformat()}"),
        ("_sort", "-_lastUpdated"),
        ("_count", str(PAGE)),
    ]
    async for page in medplum.search_pages("AuditEvent", params, max_pages=max_pages):
        pages += 1
        truncated = pages >= max_pages and page.next_url is not None
        for event in page.resources:
            outcome = get_str(event, "outcome")
            if outcome == "8":
                disabled += 1
                continue
            attempts += 1
            if outcome != "0":
                failures += 1
            match = _STATUS.search(get_str(event, "outcomeDesc") or "")
            codes[match.group(1) if match else "network"] += 1
            updated = ResourceView(event).last_updated
            if updated is not None and (last is None or updated > last):
                last = updated
    return TransmitStats(attempts, failures, dict(codes), disabled, last, truncated)


async def gaps(
    medplum: MedplumClient,
    pool: AsyncConnectionPool,
    registry: HandlerRegistry,
    *,
    settings: Settings,
    start: datetime,
    end: datetime,
    handler: str | None = None,
    max_pages: int = 5,
) -> list[Gap]:
    """Per handler: the resources Medplum changed in [start, end) (their ``_lastUpdated``) that
    the handler watches, and which of those versions never reached the inbox (no event key, by
    notification, sweep or replay). Medplum's search sees each resource's current version only,
    so a resource changed twice in the window counts once."""
    out: list[Gap] = []
    for swept in registry.swept():
        if handler is not None and swept.name != handler:
            continue
        target = swept.sweep
        assert target is not None
        params = [
            *target.params,
            ("_lastUpdated", f"ge{start.isoformat()}"),
            ("_lastUpdated", f"lt{end.isoformat()}"),
            ("_sort", "_lastUpdated"),
            ("_count", str(PAGE)),
        ]
        changed: list[tuple[str, str, str]] = []
        truncated = False
        pages = 0
        async for page in medplum.search_pages(
            target.resource_type, params, max_pages=max_pages, extended=target.extended
        ):
            pages += 1
            for resource in page.resources:
                view = ResourceView(resource)
                if not view.id or not view.version_id:
                    continue
                if view.author == settings.service_author:
                    continue
                if not target.includes_service_tagged and view.tagged(TAG_SYSTEM, TAG_CODE):
                    continue
                changed.append((view.resource_type, view.id, view.version_id))
            if pages >= max_pages and page.next_url:
                truncated = True
        known = await queries.is_known_event(pool, swept.name, changed)
        missing = [f"{t}/{i}/_history/{v}" for t, i, v in changed if (t, i, v) not in known]
        out.append(
            Gap(
                handler=swept.name,
                window_start=start,
                window_end=end,
                changed_in_medplum=len(changed),
                reached_inbox=len(changed) - len(missing),
                recovered_by_sweep=await queries.swept_in_window(pool, swept.name, start, end),
                missing=missing[:50],
                truncated=truncated,
            )
        )
    return out


def _reason_code(task: JSONObject) -> str:
    reason = get_object(task, "statusReason") or {}
    for coding in get_objects(reason, "coding"):
        code = get_str(coding, "code")
        if code:
            return code[:64]
    # A clinician's free-text reason is never shown: it may name the patient.
    return "uncoded"


def _bot_version(task: JSONObject) -> tuple[str, str] | None:
    for extension in get_objects(task, "extension"):
        if get_str(extension, "url") == BOT_VERSION_URL:
            value = get_str(extension, "valueString") or ""
            bot, _, version = value.partition("@")
            if bot:
                return bot, version or "?"
    return None


async def acceptance(
    medplum: MedplumClient, since: datetime, *, max_pages: int = 10
) -> list[Acceptance]:
    """The clinicians' decisions on the service's review Tasks changed since ``since``, per bot
    and version: approved (completed or accepted), rejected (with the coded reasons), expired,
    withdrawn (superseded or retracted by the service), still pending; hours from the Task's
    creation to the decision."""
    rows: dict[tuple[str, str], Acceptance] = {}
    params = [
        ("_tag", f"{TAG_SYSTEM}|{TAG_CODE}"),
        ("_lastUpdated", f"ge{since.isoformat()}"),
        ("_count", str(PAGE)),
    ]
    async for page in medplum.search_pages("Task", params, max_pages=max_pages):
        for task in page.resources:
            key = _bot_version(task)
            if key is None:
                continue
            row = rows.setdefault(key, Acceptance(*key))
            status = get_str(task, "status") or ""
            if status in OPEN_TASK_STATUSES:
                row.pending += 1
                continue
            if status in ("completed", "accepted"):
                row.approved += 1
            elif status == "rejected":
                row.rejected += 1
                code = _reason_code(task)
                row.rejected_reasons[code] = row.rejected_reasons.get(code, 0) + 1
            elif status == "cancelled" and _reason_code(task) == "expired":
                row.expired += 1
                continue
            else:
                row.withdrawn += 1
                continue
            authored = get_str(task, "authoredOn")
            decided = ResourceView(task).last_updated
            if authored and decided is not None:
                try:
                    hours = (decided - datetime.fromisoformat(authored)).total_seconds() / 3600
                except ValueError:
                    continue
                row.decision_hours.append(max(0.0, hours))
    return sorted(rows.values(), key=lambda r: (r.bot, r.version))


async def reenable(
    medplum: MedplumClient, settings: Settings, registry: HandlerRegistry, handler: str
) -> SyncResult:
    """``starvit subscriptions sync`` for one handler: its Subscription rewritten as the
    handler declares it, which sets ``status: active`` again."""
    chosen = registry.get(handler)
    if chosen is None or chosen.subscription is None:
        raise LookupError(handler)
    [result] = await sync_subscriptions(medplum, settings, HandlerRegistry([chosen]))
    return result


async def resend(
    user_medplum: MedplumClient, reference: str, subscription_id: str, interaction: str
) -> None:
    """Medplum's ``$resend`` of one resource to one Subscription, as the signed-in user
    (Medplum allows it to project admins only)."""
    resource_type, _, resource_id = reference.partition("/")
    await user_medplum.operation(
        resource_type,
        resource_id,
        "resend",
        {"subscription": f"Subscription/{subscription_id}", "interaction": interaction},
    )


async def sweep_window(
    medplum: MedplumClient,
    pool: AsyncConnectionPool,
    queue: App,
    *,
    registry: HandlerRegistry,
    settings: Settings,
    start: datetime,
    end: datetime,
    handler: str | None = None,
    max_pages: int = 20,
) -> int:
    """The reconciliation sweep over [start, end) for one handler or all, whatever their
    watermarks say: what Medplum changed in the window and the inbox never had is recorded and
    queued (source ``sweep``). The number of events queued."""
    queued = 0
    for swept in registry.swept():
        if handler is not None and swept.name != handler:
            continue
        target = swept.sweep
        assert target is not None
        params = [
            *target.params,
            ("_lastUpdated", f"ge{start.isoformat()}"),
            ("_lastUpdated", f"lt{end.isoformat()}"),
            ("_sort", "_lastUpdated"),
            ("_count", str(PAGE)),
        ]
        async for page in medplum.search_pages(
            target.resource_type, params, max_pages=max_pages, extended=target.extended
        ):
            keys: list[EventKey] = []
            for resource in page.resources:
                view = ResourceView(resource)
                if not view.id or not view.version_id or view.author == settings.service_author:
                    continue
                if not target.includes_service_tagged and view.tagged(TAG_SYSTEM, TAG_CODE):
                    continue
                keys.append(
                    EventKey(
                        handler=swept.name,
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
                queued += sum(1 for r in recorded if not r.duplicate)
    return queued
