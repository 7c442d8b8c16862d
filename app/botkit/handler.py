"""A clinical bot as a handler: one batch read, the bot's pure ``compute``, and only when
something new is suggested a second read and one write.

An event reads, in a single named batch, the notified resource's *current* version (so an event
that arrives late or out of order computes on the newest state, and duplicates of older versions
collapse onto the same deterministic identifiers), the Patient and the bot's prefetch queries.
A suggestion the ledger of derived writes already holds ends there (``unchanged``); a new one
reads the patient's review Tasks with their focus resources and writes the plan
(proposals, review Task, Provenance, supersession) in one transaction. See
:class:`BotHandler` for what each request costs.

Deleted or ``entered-in-error`` evidence withdraws the pending proposals derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import quote

from app.botkit.audit import audit_event
from app.botkit.declaration import (
    Bot,
    BotContext,
    BotEvent,
    NeedsPrefetch,
    NoResult,
    Prefetch,
    Retract,
)
from app.botkit.identifiers import (
    PROPOSAL_SYSTEM,
    TAG_CODE,
    TAG_SYSTEM,
    TASK_CODE_SYSTEM,
    TASK_SYSTEM,
)
from app.botkit.plan import (
    PATIENT_DECEASED,
    PlanSettings,
    WritePlan,
    plan_writes,
    withdraw_listed,
    withdraw_writes,
)
from app.botkit.prefetch import Member, MergedSearch, merge
from app.botkit.review_list import is_results_review, list_items
from app.botkit.statuses import APPROVING, OPEN_TASK_STATUSES, REJECTING
from app.fhir.views import PatientView, ResourceView, TaskView
from app.handlers.protocol import (
    EventHandler,
    Interaction,
    Processed,
    Subscribes,
    SweepQuery,
)
from app.handlers.reads import entry_error, search_resources
from app.handlers.writes import writer_for
from app.integrations.medplum import BundleEntryResult, BundleRequest
from app.integrations.medplum.client import BundleEntryInput

if TYPE_CHECKING:
    from datetime import datetime

    from app.fhir.resource_json import JSONObject
    from app.fhir.writes import PlannedWrite
    from app.handlers.protocol import HandlerContext, StoredEvent

# Evidence in these states no longer supports anything derived from it.
WITHDRAWN_STATUSES = frozenset({"entered-in-error", "cancelled"})


def task_is_for_bot(task: TaskView, bot: str) -> bool:
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


def derived_from(task: TaskView, reference: str) -> bool:
    prefix = f"{reference}/_history/"
    return any(ref == reference or ref.startswith(prefix) for ref in task.input_references)


def pending_tasks_query(patient: str) -> str:
    statuses = ",".join(OPEN_TASK_STATUSES)
    return (
        f"subject={quote(patient)}&status={statuses}&_tag={quote(f'{TAG_SYSTEM}|{TAG_CODE}')}"
        "&_include=Task:focus&_count=100"
    )


def decided_tasks_query(patient: str) -> str:
    """The patient's decided review Tasks, newest first, with their focus (for "already
    ordered" and a rejection's snooze)."""
    statuses = ",".join(sorted(APPROVING | REJECTING))
    return (
        f"subject={quote(patient)}&status={statuses}&_tag={quote(f'{TAG_SYSTEM}|{TAG_CODE}')}"
        "&_sort=-_lastUpdated&_include=Task:focus&_count=50"
    )


def review_tasks_query(patient: str) -> str:
    """The patient's pending and decided review Tasks in one search, newest first, with their
    focus: one search (20 points) where two ask for the same patient's Tasks. A full page
    falls back to the two searches (:func:`pending_tasks_query`, :func:`decided_tasks_query`)
    so that an old pending Task is never lost behind many newer decided ones."""
    statuses = ",".join([*OPEN_TASK_STATUSES, *sorted(APPROVING | REJECTING)])
    return (
        f"subject={quote(patient)}&status={statuses}&_tag={quote(f'{TAG_SYSTEM}|{TAG_CODE}')}"
        "&_sort=-_lastUpdated&_include=Task:focus&_count=100"
    )


def pending_items_query(patient: str) -> str:
    """The patient's pending derived Observations (the results-review list's items)."""
    return (
        f"subject={quote(patient)}&status=preliminary"
        f"&_tag={quote(f'{TAG_SYSTEM}|{TAG_CODE}')}&_count=100"
    )


def template(query: str, patient: str) -> tuple[str, str]:
    """A prefetch query for ``patient``: ``(resource type, search parameters)``."""
    resolved = query.replace("{{patient}}", quote(patient, safe="/")).replace(
        "{{patient_id}}", quote(patient.removeprefix("Patient/"), safe="")
    )
    resource_type, _, params = resolved.partition("?")
    return resource_type, params


# Names of the batch entries that are not prefetch queries (prefetch names are the bot's own).
_CURRENT = "current version"
_PATIENT = "patient"
_PENDING = "pending review Tasks"
_DECIDED = "decided review Tasks"
_ITEMS = "pending derived results"
_NOTIFIED = "notified version"
_TASKS = "review Tasks"
_KNOWN = "suggestions already written"
_MERGED = "prefetch "


@dataclass(frozen=True, slots=True)
class BotHandler(EventHandler):
    """Runs one :class:`~app.botkit.declaration.Bot` for the events of its Subscription.

    What an event asks of Medplum, and what it costs (the FHIR quota's points):

    1. one batch read: the notified resource's current version (1), the Patient (1) and the
       bot's prefetch searches, those that differ only in their codes sent as one (20 each)
       -- the whole of most events whose outcome is ``unchanged`` or a ``NoResult``. Only
       when the current version is not the notified one, a read of the notified version (1):
       a version Medplum never had is not an event. Only when ``compute`` reaches a branch
       that reads a deferred prefetch (the problem list, once a BMI is in the obesity range),
       a batch with the deferred searches (20 each);
    2. only when the bot suggests something the ledger of derived writes does not already
       hold: a second batch with one search for the patient's pending and decided review
       Tasks and their focus (20 + 1 each), plus, only for a suggestion whose earlier write
       has an unknown outcome (or without a ledger), a search for its Task by identifier
       (20); then, only when the patient's open results-review list holds this bot's
       results, those results read by id (1 each);
    3. only when something is new: one transaction of plain creates (100 each: proposal,
       Task, Provenance) and version-guarded updates (supersession), no serialisable
       conditional entries, so the two bots of one patient never conflict.

    Deleted or withdrawn evidence reads the pending Tasks (step 2) and withdraws them. Only a
    deceased patient's events search every pending derived result of the patient (20): they
    withdraw the whole results-review list.
    """

    bot: Bot

    @property
    def name(self) -> str:
        return self.bot.declaration.name

    @property
    def version(self) -> str:
        return self.bot.declaration.version

    @property
    def subscription(self) -> Subscribes:
        declaration = self.bot.declaration
        return Subscribes(
            trigger=declaration.trigger,
            reason=(
                f"Starvit bot {declaration.name} {declaration.version}: {declaration.title} "
                "(generated by `starvit subscriptions`; edits are overwritten by sync)"
            ),
        )

    @property
    def sweep(self) -> SweepQuery:
        trigger = self.bot.declaration.trigger
        return SweepQuery(trigger.resource_type, tuple(trigger.search_params()))

    async def handle(self, event: StoredEvent, context: HandlerContext) -> Processed:
        declaration = self.bot.declaration
        patient = f"Patient/{event.patient_id}" if event.patient_id else None
        # The current version is read even for a delete: the notification's headers are not
        # signed (only its ``{}`` body is), so a delete counts only when Medplum confirms it.
        reads: dict[str, BundleEntryInput] = {
            _CURRENT: BundleRequest.read(event.resource_type, event.resource_id)
        }
        searches: list[MergedSearch] = []
        if patient is not None:
            reads[_PATIENT] = BundleRequest.read("Patient", patient.removeprefix("Patient/"))
            searches, prefetch_reads = _prefetch_reads(
                [p for p in declaration.prefetch if not p.deferred], patient
            )
            reads.update(prefetch_reads)
        answers = await context.medplum.batch_named(reads)
        requests = 1

        first = answers[_CURRENT]
        current: JSONObject | None = None
        if first.ok and first.resource is not None:
            current = first.resource
        elif first.status_code not in (404, 410):
            raise entry_error(first)
        if not event.deleted and (
            current is None or ResourceView(current).version_id != event.version_id
        ):
            # The notified version is not the current one (a late or replayed notification, a
            # deleted resource): a version Medplum never had is not an event, and must leave no
            # trace claiming work. Read only then (1 point, a round trip); when the current
            # version is the notified one, its read already proves it.
            again = await context.medplum.batch_named(
                {
                    _NOTIFIED: BundleRequest.vread(
                        event.resource_type, event.resource_id, event.version_id
                    )
                }
            )
            requests += 1
            notified = again[_NOTIFIED]
            if not notified.ok:
                if notified.status_code in (404, 410):
                    return Processed("unknown_version", requests)
                raise entry_error(notified)
        if patient is None:
            # No subject in the notification: nothing to compute for, nothing to withdraw.
            return Processed("no_patient", requests)
        patient_entry = answers[_PATIENT]
        patient_json = patient_entry.resource if patient_entry.ok else None
        prefetched, short = _split_prefetch(searches, answers)
        requests += await _fetch_short(context, short, searches, prefetched)
        now = context.clock()
        reference = event.reference
        writer = writer_for(context)

        if current is None or ResourceView(current).status in WITHDRAWN_STATUSES:
            pending = await context.medplum.batch_named(
                {_PENDING: BundleRequest.search("Task", pending_tasks_query(patient))}
            )
            requests += 1
            tasks, _, focus, review_list = self._review_tasks(*search_resources(pending[_PENDING]))
            # Only this bot's listed results can derive from the evidence.
            items, item_requests = await self._listed_items(review_list, context)
            requests += item_requests
            derived = [t for t in tasks if derived_from(t, reference)]
            withdrawn = withdraw_writes(
                derived,
                focus,
                code="evidence-withdrawn",
                text="Evidence deleted or entered in error",
                now=now,
            )
            listed = withdraw_listed(
                review_list,
                items,
                reference,
                bot=self.name,
                text="Evidence deleted or entered in error",
                now=now,
            )
            outcome = "retracted" if derived or listed else "nothing_to_retract"
            outputs: list[JSONObject] = [{"reference": t.reference} for t in derived]
            audit = self._audit(event, reference, [], outputs, outcome, [], now)
            written = await writer.apply([withdrawn, listed, [audit]], context.trace_id)
            return Processed(outcome, requests + writer.requests, written)

        view = ResourceView(current)
        bot_event = BotEvent(
            interaction=Interaction(event.interaction),
            resource=view,
            reference=reference,
            version_id=view.version_id,
            patient=patient,
        )
        deferred = [p for p in declaration.prefetch if p.deferred]
        bot_context = BotContext(
            patient=PatientView(patient_json) if patient_json else None,
            prefetched=prefetched,
            now=now,
            deferred=frozenset(p.name for p in deferred),
        )
        try:
            effects = self.bot.compute(bot_event, bot_context)
        except NeedsPrefetch:
            # The bot reached a branch that reads a deferred search: fetch them all, once.
            requests += await _fetch_deferred(context, deferred, patient, prefetched)
            bot_context = replace(bot_context, deferred=frozenset())
            effects = self.bot.compute(bot_event, bot_context)

        settings = PlanSettings(
            due_days=context.settings.task_due_days,
            urgent_due_hours=context.settings.urgent_task_due_hours,
            snooze_days=context.settings.suggestion_snooze_days,
        )

        def planned(
            tasks: list[TaskView],
            focus: dict[str, JSONObject],
            decided: list[TaskView],
            review_list: TaskView | None,
            items: dict[str, JSONObject],
        ) -> WritePlan:
            return plan_writes(
                declaration=declaration,
                event=bot_event,
                effects=effects,
                patient=patient,
                pending_tasks=tasks,
                pending_focus=focus,
                now=now,
                decided_tasks=decided,
                review_list=review_list,
                pending_items=items,
                settings=settings,
            )

        # The suggestions' keys, before anything else is read: a plan without the chart's
        # Tasks names every slot the effects open. A withdrawal (a Retract, a deceased
        # patient) needs the pending Tasks whatever the keys say.
        bare = planned([], {}, [], None, {})
        keys = [slot.task_key for slot in bare.slots]
        withdraws = any(
            isinstance(e, Retract) or (isinstance(e, NoResult) and e.outcome == PATIENT_DECEASED)
            for e in effects
        )
        if not keys and not withdraws:
            outcome = bare.no_results[0].outcome if bare.no_results else "no_result"
            # Nothing to write: the outcome is the events table's (no AuditEvent, no Task
            # search). A NoResult is not an action that failed.
            return Processed(outcome, requests)
        ledger = context.ledger
        states = dict(await ledger.states(keys)) if ledger is not None else {}
        if keys and not withdraws and all(states.get(k) == "written" for k in keys):
            return Processed("unchanged", requests)

        second: dict[str, BundleEntryInput] = {
            _TASKS: BundleRequest.search("Task", review_tasks_query(patient))
        }
        if any(isinstance(e, NoResult) and e.outcome == PATIENT_DECEASED for e in effects):
            # Withdrawing for a deceased patient touches every listed result, whoever listed it
            # (any other plan touches only this bot's, read by id below).
            second[_ITEMS] = BundleRequest.search("Observation", pending_items_query(patient))
        # Keys whose earlier write has an unknown outcome (or every unwritten key, without a
        # complete ledger).
        uncertain = [k for k in keys if states.get(k) != "written"]
        if ledger is not None and ledger.complete:
            uncertain = [k for k in uncertain if states.get(k) == "claimed"]
        if uncertain:
            identifiers = ",".join(f"{TASK_SYSTEM}|{k}" for k in uncertain)
            second[_KNOWN] = BundleRequest.search(
                "Task", f"identifier={quote(identifiers, safe='|,:/')}&_count={len(uncertain)}"
            )
        answers2 = await context.medplum.batch_named(second)
        requests += 1
        review_tasks, included = search_resources(answers2[_TASKS])
        page = answers2[_TASKS].search_result()
        if page is not None and page.next_url is not None:
            # More review Tasks than one page holds: the pending ones and the newest decided
            # ones, each searched on its own.
            again = await context.medplum.batch_named(
                {
                    _PENDING: BundleRequest.search("Task", pending_tasks_query(patient)),
                    _DECIDED: BundleRequest.search("Task", decided_tasks_query(patient)),
                }
            )
            requests += 1
            pending_json, pending_focus = search_resources(again[_PENDING])
            decided_json, decided_focus = search_resources(again[_DECIDED])
            review_tasks = [*pending_json, *decided_json]
            included = [*pending_focus, *decided_focus]
        tasks, decided, focus, review_list = self._review_tasks(review_tasks, included)
        if _ITEMS in answers2:
            items = {ResourceView(r).reference: r for r in search_resources(answers2[_ITEMS])[0]}
        else:
            items, item_requests = await self._listed_items(review_list, context)
            requests += item_requests
        found_tasks = [*tasks]
        if _KNOWN in answers2:
            found_tasks.extend(TaskView(t) for t in search_resources(answers2[_KNOWN])[0])
        known = {k for k, state in states.items() if state == "written"}
        for found_task in found_tasks:
            value = found_task.identifier_value(TASK_SYSTEM)
            if value is not None:
                known.add(value)
        plan = planned(tasks, focus, decided, review_list, items)
        reasons = [f"{n.outcome}: {n.reason}" for n in plan.no_results]
        fresh = [s for s in plan.slots if s.writes and s.task_key not in known]
        found = [k for k in keys if k in known and states.get(k) != "written"]
        if ledger is not None and event.id and found:
            await ledger.confirm(self.name, found, event.id)
        if not fresh:
            if plan.slots or plan.unchanged:
                return Processed("unchanged", requests)
            outcome = plan.no_results[0].outcome if plan.no_results else "no_result"
            return Processed(outcome, requests)
        outputs = []
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
                        if not isinstance(effect, NoResult | Retract)
                        for e in effect.evidence
                    ),
                ]
            )
        )
        audit = self._audit(event, reference, inputs, outputs, "proposed", reasons, now)
        fresh_keys = [s.task_key for s in fresh]
        if ledger is not None and event.id:
            await ledger.claim(self.name, fresh_keys, event.id)
        written = await writer.apply(
            [*(s.writes for s in fresh), [audit]],
            context.trace_id,
            # The ledger (or the search just made) established that these suggestions are new.
            plain_creates=True,
        )
        if ledger is not None and event.id:
            await ledger.confirm(self.name, fresh_keys, event.id)
        return Processed("proposed", requests + writer.requests, written)

    async def _listed_items(
        self, review_list: TaskView | None, context: HandlerContext
    ) -> tuple[dict[str, JSONObject], int]:
        """The bot's own items on the patient's open results-review list, read by id (1 point
        each, where a search for every pending derived result costs 20): the plan replaces or
        removes only the items of this bot's protocols. ``(items by reference, requests)``."""
        if review_list is None:
            return {}, 0
        prefix = f"{self.name}."
        references = [
            item.reference
            for item in list_items(review_list)
            if item.code.startswith(prefix) and item.reference.startswith("Observation/")
        ]
        if not references:
            return {}, 0
        answers = await context.medplum.batch_named(
            {ref: BundleRequest.read("Observation", ref.split("/", 1)[1]) for ref in references}
        )
        items: dict[str, JSONObject] = {}
        for ref, entry in answers.items():
            if entry.ok and entry.resource is not None:
                view = ResourceView(entry.resource)
                # What the search for pending derived results would have found.
                if view.status == "preliminary" and view.tagged(TAG_SYSTEM, TAG_CODE):
                    items[ref] = entry.resource
            elif entry.status_code not in (404, 410):
                raise entry_error(entry)
        return items, 1

    def _review_tasks(
        self, task_json: list[JSONObject], included: list[JSONObject]
    ) -> tuple[list[TaskView], list[TaskView], dict[str, JSONObject], TaskView | None]:
        """Of the patient's review Tasks: the bot's pending ones, the bot's decided ones, their
        focus resources by reference, and the patient's open results-review Task (shared by
        every bot)."""
        views = [TaskView(t) for t in task_json]
        mine = [t for t in views if task_is_for_bot(t, self.name)]
        return (
            [t for t in mine if t.status in OPEN_TASK_STATUSES],
            [t for t in mine if t.status in APPROVING | REJECTING],
            {ResourceView(r).reference: r for r in included},
            next(
                (t for t in views if t.status in OPEN_TASK_STATUSES and is_results_review(t)),
                None,
            ),
        )

    def _audit(  # noqa: PLR0917 - internal, three call sites
        self,
        event: StoredEvent,
        reference: str,
        inputs: list[str],
        outputs: list[JSONObject],
        outcome: str,
        reasons: list[str],
        now: datetime,
    ) -> PlannedWrite:
        return audit_event(
            handler=self.name,
            version=self.version,
            event_reference=reference,
            event_version=event.version_id,
            inputs=inputs,
            outputs=outputs,
            outcome=outcome,
            reasons=reasons,
            succeeded=True,
            now=now,
        )


def template_query(query: str, searches: list[MergedSearch]) -> tuple[str, str]:
    """``(resource type, query)`` of a declared search that is already templated."""
    for search in searches:
        for member in search.members:
            if member.query == query:
                return search.resource_type, query
    raise KeyError(query)  # pragma: no cover - only called with a member's own query


def _prefetch_reads(
    prefetches: list[Prefetch], patient: str
) -> tuple[list[MergedSearch], dict[str, BundleEntryInput]]:
    """The declared searches templated on ``patient`` and merged, and their batch entries
    (named as :func:`_split_prefetch` reads them back)."""
    searches = merge([(p.name, *template(p.query, patient)) for p in prefetches])
    reads: dict[str, BundleEntryInput] = {
        f"{_MERGED}{i}": BundleRequest.search(search.resource_type, search.query)
        for i, search in enumerate(searches)
    }
    return searches, reads


async def _fetch_short(
    context: HandlerContext,
    short: list[Member],
    searches: list[MergedSearch],
    prefetched: dict[str, list[JSONObject]],
) -> int:
    """Fetches, each on its own, the declared searches a combined page may have cut short;
    returns the requests made."""
    if not short:
        return 0
    again = await context.medplum.batch_named(
        {m.name: BundleRequest.search(*template_query(m.query, searches)) for m in short}
    )
    for m in short:
        prefetched[m.name] = search_resources(again[m.name])[0]
    return 1


async def _fetch_deferred(
    context: HandlerContext,
    deferred: list[Prefetch],
    patient: str,
    prefetched: dict[str, list[JSONObject]],
) -> int:
    """Fetches the bot's deferred prefetch searches into ``prefetched``; returns the requests
    made."""
    searches, reads = _prefetch_reads(deferred, patient)
    answers = await context.medplum.batch_named(reads)
    found, short = _split_prefetch(searches, answers)
    prefetched.update(found)
    return 1 + await _fetch_short(context, short, searches, prefetched)


def _split_prefetch(
    searches: list[MergedSearch], answers: dict[str, BundleEntryResult]
) -> tuple[dict[str, list[JSONObject]], list[Member]]:
    prefetched: dict[str, list[JSONObject]] = {}
    short: list[Member] = []
    for i, search in enumerate(searches):
        entry = answers[f"{_MERGED}{i}"]
        resources = search_resources(entry)[0]
        page = entry.search_result()
        split = search.split(resources)
        prefetched.update(split)
        short.extend(search.short(split, page_full=page is not None and page.next_url is not None))
    return prefetched, short
