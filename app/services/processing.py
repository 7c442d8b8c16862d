"""Processing one event: one batch read, the handler's pure logic, one write.

A bot event reads, in a single batch, the notified resource's *current* version (so an event
that arrives late or out of order computes on the newest state, and duplicates of older
versions collapse onto the same deterministic identifiers), the Patient, the bot's prefetch
queries and the patient's pending review Tasks with their focus resources. It then writes the
plan (proposals, review Task, Provenance, supersession) and an AuditEvent in one transaction.

A review event (a clinician's status change on a review Task) reads the Task version that was
notified (``X-Medplum: extended`` to see who made it), the current Task with its focus, and the
author's PractitionerRoles, again in one batch, and writes the decision's effects and an
AuditEvent in one transaction.

Deleted or ``entered-in-error`` evidence withdraws the pending proposals derived from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from app import __version__
from app.domain.bot import Bot, BotContext, BotEvent, Interaction, NoResult
from app.domain.fhir_json import JSONObject, iter_references, rewrite_resource
from app.domain.fhir_views import PatientView, ResourceView, TaskView
from app.domain.proposals import (
    OPEN_TASK_STATUSES,
    PROPOSAL_SYSTEM,
    TAG_CODE,
    TAG_SYSTEM,
    TASK_CODE_SYSTEM,
    TASK_SYSTEM,
    PlannedWrite,
    audit_event,
    plan_writes,
    withdraw_writes,
)
from app.domain.review import has_clinician_role, plan_review
from app.integrations.medplum import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    BundleEntryResult,
    BundleRequest,
    MedplumClient,
    MedplumError,
)
from app.integrations.medplum.responses import error_for_status
from app.observability.logging import get_logger
from app.persistence.events import DELETED_VERSION
from app.services.notifications import REVIEW_HANDLER

if TYPE_CHECKING:
    from app.persistence.events import StoredEvent
    from app.settings import Settings

log = get_logger("app.services.processing")

WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})


class PermanentFailure(Exception):
    """The event cannot succeed by retrying (dead-lettered at once with ``error_code``)."""

    def __init__(self, error_code: str) -> None:
        super().__init__(error_code)
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class Processed:
    outcome: str
    medplum_requests: int
    writes: int = 0


def _task_is_for_bot(task: TaskView, bot: str) -> bool:
    code = task.json.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        return False
    return any(
        isinstance(c, dict)
        and c.get("system") == TASK_CODE_SYSTEM
        and str(c.get("code", "")).startswith(f"{bot}.")
        for c in codings
    )


def _derived_from(task: TaskView, reference: str) -> bool:
    prefix = f"{reference}/_history/"
    return any(ref == reference or ref.startswith(prefix) for ref in task.input_references)


def pending_tasks_query(patient: str) -> str:
    statuses = ",".join(OPEN_TASK_STATUSES)
    return (
        f"subject={quote(patient)}&status={statuses}&_tag={quote(f'{TAG_SYSTEM}|{TAG_CODE}')}"
        "&_include=Task:focus&_count=100"
    )


def to_request(write: PlannedWrite) -> BundleRequest:
    if write.method == "POST":
        return BundleRequest.create(
            write.resource, if_none_exist=write.if_none_exist, full_url=write.full_url
        )
    return BundleRequest.update(
        write.resource, if_match_version=write.if_match_version, full_url=write.full_url
    )


def chunk_for_transactions(groups: list[list[PlannedWrite]]) -> list[list[PlannedWrite]]:
    """Pack groups of writes (each must stay together: they reference each other by
    ``urn:uuid``) into transactions Medplum accepts (at most 8 entries with any conditional)."""
    chunks: list[list[PlannedWrite]] = []
    current: list[PlannedWrite] = []
    for group in groups:
        if current and len(current) + len(group) > MAX_CONDITIONAL_TRANSACTION_ENTRIES:
            chunks.append(current)
            current = []
        current = [*current, *group]
    if current:
        chunks.append(current)
    return chunks


class WriteExecutor:
    """Sends planned writes: one transaction per chunk when the project has
    ``transaction-bundles``; otherwise batches in dependency order (proposals, then the Task
    that focuses on them, then the Provenance naming both), every entry conditional or
    version-guarded, so a partial failure heals on retry."""

    def __init__(self, medplum: MedplumClient, *, transactions: bool) -> None:
        self.medplum = medplum
        self.transactions = transactions
        self.requests = 0

    async def apply(self, groups: list[list[PlannedWrite]], trace_id: str | None) -> int:
        groups = [g for g in groups if g]
        if not groups:
            return 0
        if self.transactions:
            for chunk in chunk_for_transactions(groups):
                self.requests += 1
                response = await self.medplum.transaction(
                    [to_request(w) for w in chunk], trace_id=trace_id
                )
                response.raise_for_failed(operation="transaction")
            return sum(len(g) for g in groups)
        return await self._in_dependency_order([w for g in groups for w in g], trace_id)

    async def _in_dependency_order(self, writes: list[PlannedWrite], trace_id: str | None) -> int:
        mapping: dict[str, str] = {}
        remaining: list[PlannedWrite] = list(writes)
        while remaining:
            ready: list[PlannedWrite] = [
                w for w in remaining if _urns_in(w.resource) <= mapping.keys()
            ]
            if not ready:
                raise PermanentFailure("unresolvable_references")
            remaining = [w for w in remaining if w not in ready]
            resolved = [
                PlannedWrite(
                    w.method,
                    rewrite_resource(w.resource, mapping),
                    None,  # a batch gives urn:uuid full URLs no meaning
                    w.if_none_exist,
                    w.if_match_version,
                )
                for w in ready
            ]
            self.requests += 1
            response = await self.medplum.batch(
                [to_request(w) for w in resolved], trace_id=trace_id
            )
            response.raise_for_failed(operation="batch")
            for write, entry in zip(ready, response.entries, strict=True):
                if write.full_url and entry.reference:
                    mapping[write.full_url] = entry.reference
        return len(writes)


def _urns_in(resource: JSONObject) -> set[str]:
    return {ref for ref in iter_references(resource) if ref.startswith("urn:uuid:")}


def _search_resources(entry: BundleEntryResult) -> tuple[list[JSONObject], list[JSONObject]]:
    page = entry.search_result()
    if page is None:
        return [], []
    return page.resources, page.included


def _template(query: str, patient: str) -> tuple[str, str]:
    resolved = query.replace("{{patient}}", quote(patient, safe="/")).replace(
        "{{patient_id}}", quote(patient.removeprefix("Patient/"), safe="")
    )
    resource_type, _, params = resolved.partition("?")
    return resource_type, params


class EventProcessor:
    """Runs events through their handler. Shared by all jobs of one worker process."""

    def __init__(
        self,
        medplum: MedplumClient,
        settings: Settings,
        bots: Mapping[str, Bot],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.medplum = medplum
        self.settings = settings
        self.bots = dict(bots)
        self.clock = clock
        self.clinician_codes = frozenset(settings.clinician_role_codes)

    async def process(self, event: StoredEvent, *, trace_id: str | None = None) -> Processed:
        started = time.perf_counter()
        if event.bot == REVIEW_HANDLER:
            result = await self._review(event, trace_id)
        elif event.bot in self.bots:
            result = await self._bot(self.bots[event.bot], event, trace_id)
        else:
            raise PermanentFailure("unknown_handler")
        log.info(
            "event_processed",
            event_id=event.id,
            bot=event.bot,
            outcome=result.outcome,
            medplum_requests=result.medplum_requests,
            writes=result.writes,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return result

    # ------------------------------------------------------------------ bots

    async def _bot(self, bot: Bot, event: StoredEvent, trace_id: str | None) -> Processed:
        declaration = bot.declaration
        patient_id = event.patient_id
        requests = 0
        # The current version is read even for a delete: the notification's headers are not
        # signed (only its ``{}`` body is), so a delete counts only when Medplum confirms it.
        entries = [BundleRequest.read(event.resource_type, event.resource_id)]
        patient = f"Patient/{patient_id}" if patient_id else None
        if patient is not None:
            entries.append(BundleRequest.read("Patient", patient.removeprefix("Patient/")))
            for prefetch in declaration.prefetch:
                entries.append(BundleRequest.search(*_template(prefetch.query, patient)))
            entries.append(BundleRequest.search("Task", pending_tasks_query(patient)))
        requests += 1
        response = await self.medplum.batch(entries)
        results = list(response.entries)

        current: JSONObject | None = None
        first = results.pop(0)
        if first.ok and first.resource is not None:
            current = first.resource
        elif first.status_code not in (404, 410):
            raise _entry_error(first)
        if patient is None:
            # No subject in the notification: nothing to compute for, nothing to withdraw.
            return Processed("no_patient", requests)
        patient_entry = results.pop(0)
        patient_json = patient_entry.resource if patient_entry.ok else None
        prefetched: dict[str, list[JSONObject]] = {}
        for prefetch in declaration.prefetch:
            entry = results.pop(0)
            if not entry.ok:
                raise _entry_error(entry)
            prefetched[prefetch.name] = _search_resources(entry)[0]
        task_entry = results.pop(0)
        if not task_entry.ok:
            raise _entry_error(task_entry)
        task_json, included = _search_resources(task_entry)
        tasks = [TaskView(t) for t in task_json if _task_is_for_bot(TaskView(t), declaration.name)]
        focus = {ResourceView(r).reference: r for r in included}
        now = self.clock()
        reference = f"{event.resource_type}/{event.resource_id}"
        executor = WriteExecutor(self.medplum, transactions=self.settings.medplum_transactions)

        withdrawn = current is None or ResourceView(current).status in WITHDRAWN_STATUSES
        groups: list[list[PlannedWrite]] = []
        outputs: list[JSONObject] = []
        reasons: list[str] = []
        if withdrawn:
            derived = [t for t in tasks if _derived_from(t, reference)]
            writes = withdraw_writes(
                derived,
                focus,
                code="evidence-withdrawn",
                text="Evidence deleted or entered in error",
                now=now,
            )
            groups.append(writes)
            outcome = "retracted" if derived else "nothing_to_retract"
            outputs.extend({"reference": t.reference} for t in derived)
            inputs: list[str] = []
        else:
            assert current is not None
            view = ResourceView(current)
            bot_event = BotEvent(
                interaction=Interaction(event.interaction),
                resource=view,
                reference=reference,
                version_id=view.version_id,
                patient=patient,
            )
            context = BotContext(
                patient=PatientView(patient_json) if patient_json else None,
                prefetched=prefetched,
                now=now,
            )
            effects = bot.compute(bot_event, context)
            plan = plan_writes(
                declaration=declaration,
                event=bot_event,
                effects=effects,
                patient=patient,
                pending_tasks=tasks,
                pending_focus=focus,
                now=now,
                due_days=self.settings.task_due_days,
            )
            reasons.extend(f"{n.outcome}: {n.reason}" for n in plan.no_results)
            existing = {t.identifier_value(TASK_SYSTEM) for t in tasks}
            fresh = [s for s in plan.slots if s.task_key not in existing]
            groups.extend(s.writes for s in fresh)
            for slot in plan.slots:
                outputs.append({"identifier": {"system": TASK_SYSTEM, "value": slot.task_key}})
                outputs.append({"identifier": {"system": PROPOSAL_SYSTEM, "value": slot.task_key}})
            # The notified version and every piece of evidence the effects rest on.
            inputs = list(
                dict.fromkeys(
                    [
                        view.versioned_reference,
                        *(
                            e.versioned
                            for effect in effects
                            if not isinstance(effect, NoResult)
                            for e in effect.evidence
                        ),
                    ]
                )
            )
            if fresh:
                outcome = "proposed"
            elif plan.slots:
                outcome = "unchanged"
            else:
                outcome = plan.no_results[0].outcome if plan.no_results else "no_result"
        if outcome == "unchanged":
            # A re-delivery or a late event whose suggestion already stands: the first run's
            # writes and AuditEvent stand too, and Medplum's write quota is not spent again.
            return Processed(outcome, requests)
        audit = audit_event(
            handler=declaration.name,
            version=declaration.version,
            event_reference=reference,
            event_version=event.version_id,
            inputs=inputs,
            outputs=outputs,
            outcome=outcome,
            reasons=reasons,
            succeeded=True,
            now=now,
        )
        groups.append([audit])
        written = await executor.apply(groups, trace_id)
        return Processed(outcome, requests + executor.requests, written)

    # ------------------------------------------------------------------ review decisions

    async def _review(self, event: StoredEvent, trace_id: str | None) -> Processed:
        if event.resource_type != "Task" or event.version_id == DELETED_VERSION:
            return Processed("not_a_decision", 0)
        author = event.author
        entries = [
            BundleRequest.vread("Task", event.resource_id, event.version_id),
            BundleRequest.search("Task", f"_id={quote(event.resource_id)}&_include=Task:focus"),
        ]
        if author and author.startswith("Practitioner/"):
            entries.append(
                BundleRequest.search("PractitionerRole", f"practitioner={quote(author)}&_count=50")
            )
        response = await self.medplum.batch(entries, extended=True)
        requests = 1
        version_entry, current_entry, *role_entries = response.entries
        if not version_entry.ok or version_entry.resource is None:
            raise _entry_error(version_entry)
        task = TaskView(version_entry.resource)
        decider = task.author  # who made this version, as Medplum recorded it
        if not current_entry.ok:
            raise _entry_error(current_entry)
        current, included = _search_resources(current_entry)
        if current and ResourceView(current[0]).version_id != task.version_id:
            later = TaskView(current[0])
            if later.status == task.status and later.author == task.author:
                pass  # a later edit (a note, an owner) that kept the decision
            else:
                return Processed("stale", requests)
        focus_ref = task.focus
        focus = next((r for r in included if ResourceView(r).reference == focus_ref), None)
        roles = _search_resources(role_entries[0])[0] if role_entries else []
        is_clinician = (
            decider is not None
            and decider == author
            and has_clinician_role(roles, decider, self.clinician_codes)
        )
        now = self.clock()
        plan = plan_review(
            task, decider=decider, decider_is_clinician=is_clinician, focus=focus, now=now
        )
        if plan.outcome == "refused":
            log.warning("review_refused", task=task.reference, decider_type=_type_of(decider))
        outputs: list[JSONObject] = [{"reference": focus_ref}] if focus_ref else []
        audit = audit_event(
            handler=REVIEW_HANDLER,
            version=__version__,
            event_reference=task.reference,
            event_version=task.version_id,
            inputs=[task.versioned_reference],
            outputs=outputs if plan.writes else [],
            outcome=plan.outcome,
            reasons=[*plan.reasons, f"decided by {decider or 'unknown'}"],
            succeeded=plan.outcome != "refused",
            now=now,
        )
        if plan.outcome in ("no_decision", "not_ours", "already_decided"):
            return Processed(plan.outcome, requests)
        executor = WriteExecutor(self.medplum, transactions=self.settings.medplum_transactions)
        written = await executor.apply([plan.writes, [audit]], trace_id)
        return Processed(plan.outcome, requests + executor.requests, written)


def _type_of(reference: str | None) -> str:
    return reference.split("/", 1)[0] if reference else "unknown"


def _entry_error(entry: BundleEntryResult) -> MedplumError:
    return error_for_status(
        entry.status_code,
        outcome=entry.outcome,
        operation=f"batch[{entry.index}]",
        resource_type=None,
        attempts=1,
    )
