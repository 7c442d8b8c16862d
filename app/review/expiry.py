"""Pending review Tasks expire: after ``STARVIT_TASK_EXPIRY_DAYS`` without a decision a routine
Task is cancelled (``statusReason`` "expired") and its proposal withdrawn, so a clinician's list
never fills with stale suggestions. Urgent Tasks never expire silently: once past their due
time (``STARVIT_URGENT_TASK_DUE_HOURS`` after they were opened or last updated) they are
escalated, once, to ``STARVIT_ESCALATION_TARGET`` (the Task's ``owner``, priority ``stat``),
audited. The patient's rolling results-review list holds only current results and is never
expired. A handler with a schedule and no Subscription: the worker runs it hourly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app import __version__
from app.botkit.audit import audit_event
from app.botkit.identifiers import IDENTIFIER_BASE, TAG_CODE, TAG_SYSTEM
from app.botkit.plan import withdraw_writes
from app.botkit.review_list import is_results_review
from app.botkit.statuses import OPEN_TASK_STATUSES
from app.fhir.resource_json import JSONValue, get_objects, get_str
from app.fhir.views import ResourceView, TaskView, parse_datetime
from app.fhir.writes import PlannedWrite, strip_meta
from app.handlers.protocol import PermanentFailure, Processed, Schedule
from app.handlers.writes import WriteExecutor
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from app.handlers.protocol import HandlerContext, StoredEvent, Subscribes, SweepQuery
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

log = get_logger("app.review.expiry")

EXPIRY_HANDLER = "expiry"
# On an escalated Task: when it was escalated (escalation happens once).
ESCALATED_URL = f"{IDENTIFIER_BASE}/StructureDefinition/escalated"
URGENT_PRIORITIES = frozenset({"urgent", "asap", "stat"})


def never_expires(task: TaskView) -> bool:
    """Urgent Tasks (escalated instead) and the rolling results-review list."""
    return task.json.get("priority") in URGENT_PRIORITIES or is_results_review(task)


def escalated(task: TaskView) -> bool:
    return any(get_str(e, "url") == ESCALATED_URL for e in get_objects(task.json, "extension"))


def overdue(task: TaskView, now: datetime) -> bool:
    """Past the due time the plan set (``restriction.period.end``)."""
    restriction = task.json.get("restriction")
    period = restriction.get("period") if isinstance(restriction, dict) else None
    end = parse_datetime(get_str(period, "end")) if isinstance(period, dict) else None
    return end is not None and end <= now


def escalation_writes(task: TaskView, target: str, now: datetime) -> list[PlannedWrite]:
    """The overdue urgent Task raised to ``stat``, owned by the escalation target (when one is
    configured), with a note; guarded by the Task's version."""
    updated = strip_meta(task.json)
    updated["priority"] = "stat"
    text = f"Escalated: urgent suggestion not decided by its due time ({now.isoformat()})"
    if target:
        updated["owner"] = {"reference": target}
        text += f"; escalated to {target}"
    updated["businessStatus"] = {"text": text}
    notes = updated.get("note")
    note: JSONValue = {"text": text, "time": now.isoformat()}
    updated["note"] = [*(notes if isinstance(notes, list) else []), note]
    extensions = updated.get("extension")
    extension: JSONValue = {"url": ESCALATED_URL, "valueDateTime": now.isoformat()}
    updated["extension"] = [*(extensions if isinstance(extensions, list) else []), extension]
    return [PlannedWrite("PUT", updated, if_match_version=task.version_id)]


async def escalate_tasks(
    medplum: MedplumClient, settings: Settings, *, now: datetime | None = None, max_pages: int = 10
) -> int:
    """Escalate the open urgent Tasks past their due time, once each, with an AuditEvent."""
    moment = now or datetime.now(UTC)
    opened_before = moment - timedelta(hours=settings.urgent_task_due_hours)
    params = [
        ("_tag", f"{TAG_SYSTEM}|{TAG_CODE}"),
        ("status", ",".join(OPEN_TASK_STATUSES)),
        ("authored-on", f"le{opened_before.isoformat()}"),
        ("_count", "50"),
    ]
    count = 0
    executor = WriteExecutor(medplum, transactions=settings.medplum_transactions)
    async for page in medplum.search_pages("Task", params, max_pages=max_pages):
        groups: list[list[PlannedWrite]] = []
        for resource in page.resources:
            task = TaskView(resource)
            if (
                task.json.get("priority") not in URGENT_PRIORITIES
                or escalated(task)
                or not overdue(task, moment)
            ):
                continue
            writes = escalation_writes(task, settings.escalation_target, moment)
            writes.append(
                audit_event(
                    handler=EXPIRY_HANDLER,
                    version=__version__,
                    event_reference=task.reference,
                    event_version=task.version_id,
                    inputs=[task.versioned_reference],
                    outputs=[{"reference": task.reference}],
                    outcome="escalated",
                    reasons=[
                        "urgent suggestion overdue; escalated to "
                        + (settings.escalation_target or "priority stat")
                    ],
                    succeeded=True,
                    now=moment,
                    # An escalation has no Provenance: its AuditEvent is its record.
                    required=True,
                )
            )
            groups.append(writes)
        await executor.apply(groups, trace_id=None)
        count += len(groups)
    if count:
        log.info("tasks_escalated", count=count)
    return count


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
            if never_expires(task):
                continue
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
        now = context.clock()
        expired = await expire_tasks(context.medplum, context.settings, now=now)
        return expired + await escalate_tasks(context.medplum, context.settings, now=now)
