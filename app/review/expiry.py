"""Pending review Tasks expire: after ``STARVIT_TASK_EXPIRY_DAYS`` without a decision the Task
is cancelled (``statusReason`` "expired") and its proposal withdrawn, so a clinician's list
never fills with stale suggestions. A handler with a schedule and no Subscription: the worker
runs it hourly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app import __version__
from app.botkit.audit import audit_event
from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.botkit.plan import withdraw_writes
from app.botkit.statuses import OPEN_TASK_STATUSES
from app.fhir.views import ResourceView, TaskView
from app.handlers.protocol import PermanentFailure, Processed, Schedule
from app.handlers.writes import WriteExecutor
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from app.fhir.writes import PlannedWrite
    from app.handlers.protocol import HandlerContext, StoredEvent, Subscribes, SweepQuery
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.review.expiry")

EXPIRY_HANDLER = "expiry"


async def expire_tasks(
    medplum: MedplumClient, settings: Settings, *, now: datetime | None = None, max_pages: int = 10
) -> int:
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.task_expiry_days)
    params = [
        ("_tag", f"{TAG_SYSTEM}|{TAG_CODE}"),
        ("status", ",".join(OPEN_TASK_STATUSES)),
        ("authored-on", f"lt{cutoff.isoformat()}"),
        ("_include", "Task:focus"),
        ("_count", "50"),
    ]
    expired = 0
    executor = WriteExecutor(medplum, transactions=settings.medplum_transactions)
    async for page in medplum.search_pages("Task", params, max_pages=max_pages):
        tasks = [TaskView(t) for t in page.resources]
        focus = {ResourceView(r).reference: r for r in page.included}
        moment = now or datetime.now(UTC)
        groups: list[list[PlannedWrite]] = []
        for task in tasks:
            writes = withdraw_writes(
                [task],
                focus,
                code="expired",
                text=f"Expired after {settings.task_expiry_days} days without a decision",
                now=moment,
            )
            if writes:
                writes.append(
                    audit_event(
                        handler=EXPIRY_HANDLER,
                        version=__version__,
                        event_reference=task.reference,
                        event_version=task.version_id,
                        inputs=[task.versioned_reference],
                        outputs=[{"reference": task.reference}],
                        outcome="expired",
                        reasons=[f"no decision within {settings.task_expiry_days} days"],
                        succeeded=True,
                        now=moment,
                    )
                )
            groups.append(writes)
        await executor.apply(groups, trace_id=None)
        expired += sum(1 for g in groups if g)
    if expired:
        log.info("tasks_expired", count=expired)
    return expired


@dataclass(frozen=True, slots=True)
class ExpiryHandler:
    name: str = EXPIRY_HANDLER

    @property
    def schedule(self) -> Schedule:
        # Hourly, away from the top of the hour where other periodic jobs start.
        return Schedule(cron="17 * * * *")

    @property
    def version(self) -> str:
        return __version__

    @property
    def subscription(self) -> Subscribes | None:
        return None

    @property
    def sweep(self) -> SweepQuery | None:
        return None

    async def handle(self, event: StoredEvent, context: HandlerContext) -> Processed:
        del event, context
        raise PermanentFailure("not_an_event_handler")  # it has no Subscription

    async def run_scheduled(self, context: HandlerContext) -> int:
        return await expire_tasks(context.medplum, context.settings, now=context.clock())
