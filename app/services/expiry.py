"""Pending review Tasks expire: after ``STARVIT_TASK_EXPIRY_DAYS`` without a decision the Task
is cancelled (``statusReason`` "expired") and its proposal withdrawn, so a clinician's list
never fills with stale suggestions. Runs as a periodic job of the worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app import __version__
from app.domain.fhir_views import ResourceView, TaskView
from app.domain.proposals import (
    OPEN_TASK_STATUSES,
    TAG_CODE,
    TAG_SYSTEM,
    PlannedWrite,
    audit_event,
    withdraw_writes,
)
from app.observability.logging import get_logger
from app.services.processing import WriteExecutor

if TYPE_CHECKING:
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.services.expiry")


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
                        handler="expiry",
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
