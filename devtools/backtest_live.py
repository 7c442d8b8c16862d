"""Backtest of what a clinician would have lived through: every bot, one patient's chart.

Each patient's triggering Observations are replayed in clinical-time order through every bot,
and each bot's effects go through the same write plan as the live worker
(:func:`app.botkit.plan.plan_writes`, with the same selection of pending Tasks as
:class:`app.botkit.handler.BotHandler`). The writes are applied to an in-memory chart that
plays Medplum's part for conditional creates and version-guarded updates, and the hourly
expiry (:func:`app.botkit.plan.withdraw_writes`) runs before each event, so what stays open,
what is updated in place and what is withdrawn is what the worklist would have shown. Nobody
decides in a backtest: Tasks stay open until updated, withdrawn or expired.

Two ways to arrive: ``live`` (each result processed when it was taken: ``now`` is its time) and
``bulk`` (a partner posts the whole history at once: ``now`` is the day after the newest
result, so the protocols' evidence windows apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from app.botkit.declaration import Bot, BotEvent, Interaction
from app.botkit.handler import task_is_for_bot
from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.botkit.plan import PlanSettings, plan_writes, withdraw_writes
from app.botkit.review_list import is_results_review
from app.botkit.statuses import OPEN_TASK_STATUSES
from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str, rewrite_resource
from app.fhir.views import ObservationView, ResourceView, TaskView, parse_datetime
from devtools.backtest import PatientHistory, context_at, triggering_observations

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from app.fhir.writes import PlannedWrite

type Arrival = Literal["live", "bulk"]


class ConflictError(RuntimeError):
    """A guarded update named a version the chart no longer has (a planning bug here: the
    replay is sequential, so the live worker would have retried on the new version)."""


@dataclass(slots=True)
class Chart:
    """The service's writes for one patient, kept as Medplum would: ids, versions, conditional
    creates (``identifier=`` and ``_tag=``) and ``If-Match`` updates."""

    resources: dict[str, JSONObject] = field(default_factory=dict[str, JSONObject])
    counter: int = 0

    def _find(self, condition: str) -> str | None:
        name, _, value = condition.partition("=")
        system, _, code = unquote(value).rpartition("|")
        for reference, resource in self.resources.items():
            if name == "identifier":
                found = any(
                    get_str(i, "system") == system and get_str(i, "value") == code
                    for i in get_objects(resource, "identifier")
                )
            else:
                found = ResourceView(resource).tagged(system, code)
            if found:
                return reference
        return None

    def apply(
        self, writes: Sequence[PlannedWrite]
    ) -> list[tuple[str, JSONObject, JSONObject | None]]:
        """Apply one transaction; returns ``(method, new, previous)`` per resource changed."""
        mapping: dict[str, str] = {}
        created: list[tuple[PlannedWrite, str]] = []
        for write in writes:
            if write.method != "POST":
                continue
            existing = self._find(write.if_none_exist) if write.if_none_exist else None
            if existing is not None:
                if write.full_url:
                    mapping[write.full_url] = existing
                continue
            self.counter += 1
            kind = get_str(write.resource, "resourceType") or "Resource"
            reference = f"{kind}/{kind.lower()}-{self.counter}"
            if write.full_url:
                mapping[write.full_url] = reference
            created.append((write, reference))
        changes: list[tuple[str, JSONObject, JSONObject | None]] = []
        for write, reference in created:
            resource = rewrite_resource(write.resource, mapping)
            resource = {
                **resource,
                "id": reference.split("/", 1)[1],
                "meta": {**(get_object(resource, "meta") or {}), "versionId": "1"},
            }
            self.resources[reference] = resource
            changes.append(("POST", resource, None))
        for write in writes:
            if write.method != "PUT":
                continue
            resource = rewrite_resource(write.resource, mapping)
            reference = f"{get_str(resource, 'resourceType')}/{get_str(resource, 'id')}"
            previous = self.resources.get(reference)
            if previous is None:
                msg = f"update of {reference}, which the chart does not hold"
                raise ConflictError(msg)
            version = get_str(get_object(previous, "meta") or {}, "versionId") or "1"
            if write.if_match_version is not None and write.if_match_version != version:
                msg = f"update of {reference} at version {write.if_match_version}, now {version}"
                raise ConflictError(msg)
            stored = {
                **resource,
                "meta": {
                    **(get_object(resource, "meta") or {}),
                    "versionId": str(int(version) + 1),
                },
            }
            self.resources[reference] = stored
            changes.append(("PUT", stored, previous))
        return changes

    def tasks(self) -> list[TaskView]:
        return [
            TaskView(r) for r in self.resources.values() if get_str(r, "resourceType") == "Task"
        ]


@dataclass(slots=True)
class PatientBurden:
    """What one patient's clinician would have seen (Tasks; the results list counts as one)."""

    patient_id: str
    events: int = 0
    opened: int = 0
    updated: int = 0
    withdrawn: int = 0
    withdrawn_unseen: int = 0
    expired: int = 0
    urgent: int = 0
    listed: int = 0  # results put on (or replaced in) the results-review list
    open_at_end: int = 0
    errors: int = 0
    by_protocol: dict[str, int] = field(default_factory=dict[str, int])


@dataclass(slots=True)
class BurdenReport:
    arrival: Arrival
    bots: tuple[str, ...]
    patients: list[PatientBurden] = field(default_factory=list[PatientBurden])

    def total(self, name: str) -> int:
        return sum(getattr(patient, name) for patient in self.patients)


def _protocol(task: JSONObject) -> str:
    code = get_object(task, "code")
    codings = get_objects(code, "coding") if code else []
    return (get_str(codings[0], "code") or "?") if codings else "?"


def _open(task: JSONObject) -> bool:
    return get_str(task, "status") in OPEN_TASK_STATUSES


@dataclass(slots=True)
class _Replay:
    history: PatientHistory
    settings: PlanSettings
    expiry_days: int
    seen_after: timedelta
    burden: PatientBurden
    chart: Chart = field(default_factory=Chart)
    shown_at: dict[str, datetime] = field(default_factory=dict[str, datetime])

    def record(
        self, changes: list[tuple[str, JSONObject, JSONObject | None]], now: datetime
    ) -> None:
        for method, resource, previous in changes:
            if get_str(resource, "resourceType") == "Observation":
                if method == "POST" or get_str(resource, "status") == "preliminary":
                    self.burden.listed += int(_listed_item(resource, self.chart))
                continue
            if get_str(resource, "resourceType") != "Task":
                continue
            reference = f"Task/{get_str(resource, 'id')}"
            if method == "POST":
                self.burden.opened += 1
                self.burden.urgent += get_str(resource, "priority") == "urgent"
                protocol = _protocol(resource)
                self.burden.by_protocol[protocol] = self.burden.by_protocol.get(protocol, 0) + 1
                self.shown_at[reference] = now
            elif previous is not None and _open(previous) and _open(resource):
                self.burden.updated += 1
            elif previous is not None and _open(previous):
                reason = get_object(resource, "statusReason")
                codings = get_objects(reason, "coding") if reason else []
                code = get_str(codings[0], "code") if codings else None
                if code == "expired":
                    self.burden.expired += 1
                else:
                    self.burden.withdrawn += 1
                    if now - self.shown_at.get(reference, now) < self.seen_after:
                        self.burden.withdrawn_unseen += 1

    def expire(self, now: datetime) -> None:
        """The hourly expiry: routine Tasks past the expiry age (urgent ones and the results
        list never expire)."""
        cutoff = now - timedelta(days=self.expiry_days)
        focus = self.chart.resources
        for view in self.chart.tasks():
            if not _open(view.json) or view.json.get("priority") != "routine":
                continue
            if is_results_review(view):
                continue
            authored = parse_datetime(get_str(view.json, "authoredOn"))
            if authored is None or authored >= cutoff:
                continue
            writes = withdraw_writes(
                [view], focus, code="expired", text="Expired without a decision", now=now
            )
            self.record(self.chart.apply(writes), now)

    def event(self, bot: Bot, resource: JSONObject, now: datetime) -> None:
        view = ObservationView(resource)
        event = BotEvent(
            interaction=Interaction.CREATE,
            resource=view,
            reference=view.reference,
            version_id=view.version_id,
            patient=self.history.reference,
        )
        # What Medplum holds when the event is processed: the results up to ``now`` (the
        # event's own time when results arrive as they are taken; the load time in a bulk load).
        context = context_at(bot, self.history, now)
        effects = bot.compute(event, context)
        tasks = self.chart.tasks()
        pending = [t for t in tasks if _open(t.json) and task_is_for_bot(t, bot.declaration.name)]
        review_list = next((t for t in tasks if _open(t.json) and is_results_review(t)), None)
        items = {
            ref: r
            for ref, r in self.chart.resources.items()
            if get_str(r, "resourceType") == "Observation"
            and get_str(r, "status") == "preliminary"
            and ResourceView(r).tagged(TAG_SYSTEM, TAG_CODE)
        }
        plan = plan_writes(
            declaration=bot.declaration,
            event=event,
            effects=effects,
            patient=self.history.reference,
            pending_tasks=pending,
            pending_focus=self.chart.resources,
            now=now,
            decided_tasks=[],
            review_list=review_list,
            pending_items=items,
            settings=self.settings,
        )
        for slot in plan.slots:
            if slot.writes:
                self.record(self.chart.apply(slot.writes), now)


def _listed_item(resource: JSONObject, chart: Chart) -> bool:
    reference = f"Observation/{get_str(resource, 'id')}"
    for task in chart.tasks():
        if is_results_review(task) and any(
            get_str(get_object(i, "valueReference") or {}, "reference") == reference
            for i in get_objects(task.json, "input")
        ):
            return True
    return False


def replay_patient(
    bots: Sequence[Bot],
    history: PatientHistory,
    *,
    arrival: Arrival = "live",
    settings: PlanSettings | None = None,
    expiry_days: int = 30,
    seen_after: timedelta = timedelta(hours=24),
) -> tuple[PatientBurden, Chart]:
    """Replay every bot over one patient's history; the burden and the resulting chart."""
    events: list[tuple[datetime, str, Bot, JSONObject]] = []
    for bot in bots:
        for at, resource in triggering_observations(bot, history):
            events.append((at, get_str(resource, "id") or "", bot, resource))
    order = {bot.declaration.name: index for index, bot in enumerate(bots)}
    events.sort(key=lambda item: (item[0], item[1], order[item[2].declaration.name]))
    load_time = (events[-1][0] + timedelta(days=1)) if events else None
    replay = _Replay(
        history,
        settings or PlanSettings(),
        expiry_days,
        seen_after,
        PatientBurden(history.patient_id),
    )
    seen: set[str] = set()
    for at, resource_id, bot, resource in events:
        now = at if arrival == "live" or load_time is None else load_time
        replay.expire(now)
        seen.add(resource_id)
        try:
            replay.event(bot, resource, now)
        except Exception:  # a bot or the plan must never raise: count it, keep going
            replay.burden.errors += 1
    replay.burden.events = len(seen)
    replay.burden.open_at_end = sum(1 for t in replay.chart.tasks() if _open(t.json))
    return replay.burden, replay.chart


def burden(
    bots: Sequence[Bot],
    histories: Iterable[PatientHistory],
    *,
    arrival: Arrival = "live",
    settings: PlanSettings | None = None,
    expiry_days: int = 30,
    progress: Callable[[PatientHistory], None] | None = None,
) -> BurdenReport:
    report = BurdenReport(arrival, tuple(bot.declaration.name for bot in bots))
    for history in histories:
        if progress is not None:
            progress(history)
        patient, _ = replay_patient(
            bots, history, arrival=arrival, settings=settings, expiry_days=expiry_days
        )
        report.patients.append(patient)
    return report
