"""Backtest: replay a bot over patients' recorded histories without writing anything.

For each patient bundle (a FHIR Bundle holding one Patient and their resources, as Synthea
writes them), every Observation matching the bot's trigger is replayed as a ``create`` in
chronological order, with a context built from that patient's resources *as they stood at
that moment*: each prefetch query is emulated on the resources effective up to the event's
time (its codes, ``clinical-status``, ``_sort=-date`` and ``_count``), a Condition counts
as active when its onset is at or before the moment and it had not abated by then, and an
Encounter is there from its ``period.start``.

Only the parts of FHIR search the bots' declarations use are emulated: ``code`` and
``clinical-status`` token lists (``system|code``), ``_sort=-date`` and ``_count``; ``subject``
is implied (one patient per bundle). A query using anything else raises ``ValueError``, so a new
bot cannot be backtested on a silently wrong context.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from app.botkit.declaration import (
    Bot,
    BotContext,
    BotEvent,
    Effect,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str, rewrite_resource
from app.fhir.views import ObservationView, PatientView, parse_datetime
from devtools.synthea import BundleFileError, bundle_resources, read_bundle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime
    from pathlib import Path

_SUPPORTED_PARAMS = frozenset({"subject", "patient", "code", "clinical-status", "_sort", "_count"})


# A file is not a readable FHIR Bundle (the Synthea reader's error, a ``ValueError``).
BundleError = BundleFileError


# ------------------------------------------------------------------------- loading bundles


@dataclass(frozen=True, slots=True)
class PatientHistory:
    """One patient's resources, references rewritten to ``Patient/<id>`` and every resource
    given ``meta.versionId`` "1" when it has none (bundles carry no server versions)."""

    patient: JSONObject
    resources: tuple[JSONObject, ...]

    @property
    def patient_id(self) -> str:
        return get_str(self.patient, "id") or ""

    @property
    def reference(self) -> str:
        return f"Patient/{self.patient_id}"


def _with_version(resource: JSONObject) -> JSONObject:
    meta = get_object(resource, "meta") or {}
    if get_str(meta, "versionId"):
        return resource
    return {**resource, "meta": {**meta, "versionId": "1"}}


def history_from_bundle(bundle: JSONObject) -> PatientHistory | None:
    """The patient history in a Bundle, or None when it holds no Patient (support bundles)."""
    if get_str(bundle, "resourceType") != "Bundle":
        msg = "not a FHIR Bundle"
        raise BundleError(msg)
    resources = bundle_resources(bundle)
    patients = [r for r in resources if get_str(r, "resourceType") == "Patient"]
    if not patients:
        return None
    patient_id = get_str(patients[0], "id") or ""
    # Synthea refers to the Patient by its fullUrl (``urn:uuid:<id>``).
    to_patient = {f"urn:uuid:{patient_id}": f"Patient/{patient_id}"}
    rewritten = [_with_version(rewrite_resource(resource, to_patient)) for resource in resources]
    patient = next(r for r in rewritten if get_str(r, "resourceType") == "Patient")
    others = tuple(r for r in rewritten if get_str(r, "resourceType") != "Patient")
    return PatientHistory(patient=patient, resources=others)


def load_history(path: Path) -> PatientHistory | None:
    """Read one bundle file (:func:`devtools.synthea.read_bundle`); ``BundleError`` when it is
    not JSON or not a Bundle."""
    return history_from_bundle(read_bundle(path, loadable=False))


def bundle_files(data: Path) -> list[Path]:
    """The ``*.json`` files of a folder (sorted), or the file itself."""
    if data.is_file():
        return [data]
    return sorted(data.glob("*.json"))


# ------------------------------------------------------------------------- search emulation


@dataclass(frozen=True, slots=True)
class Query:
    resource_type: str
    codes: frozenset[tuple[str, str]]  # empty: any code
    clinical_status: frozenset[str]  # empty: any
    newest_first: bool
    count: int | None


def _tokens(value: str) -> frozenset[tuple[str, str]]:
    tokens: set[tuple[str, str]] = set()
    for token in value.split(","):
        system, _, code = token.rpartition("|")
        tokens.add((system, code))
    return frozenset(tokens)


def parse_query(query: str) -> Query:
    """Parse the search subset the bots use (see the module docstring)."""
    resource_type, _, params = query.partition("?")
    codes: frozenset[tuple[str, str]] = frozenset()
    statuses: frozenset[str] = frozenset()
    newest_first = False
    count: int | None = None
    for name, value in parse_qsl(params, keep_blank_values=True):
        if name not in _SUPPORTED_PARAMS:
            msg = f"backtest cannot emulate the search parameter {name!r} in {query!r}"
            raise ValueError(msg)
        if name == "code":
            codes = _tokens(value)
        elif name == "clinical-status":
            statuses = frozenset(code for _, code in _tokens(value))
        elif name == "_sort":
            if value not in ("-date", "date"):
                msg = f"backtest cannot emulate _sort={value} in {query!r}"
                raise ValueError(msg)
            newest_first = value == "-date"
        elif name == "_count":
            count = int(value)
    return Query(resource_type, codes, statuses, newest_first, count)


def _codings(resource: JSONObject) -> set[tuple[str, str]]:
    concept = get_object(resource, "code")
    if concept is None:
        return set()
    return {
        (get_str(c, "system") or "", get_str(c, "code") or "")
        for c in get_objects(concept, "coding")
    }


def _matches_code(resource: JSONObject, codes: frozenset[tuple[str, str]]) -> bool:
    if not codes:
        return True
    for system, code in _codings(resource):
        if (system, code) in codes or ("", code) in codes:
            return True
    return False


def _observation_time(resource: JSONObject) -> datetime | None:
    return ObservationView(resource).effective


def _condition_as_of(resource: JSONObject, moment: datetime) -> JSONObject | None:
    """The Condition as recorded at ``moment``: None before its onset; clinical status
    ``active`` until its abatement, ``resolved`` after."""
    onset = parse_datetime(get_str(resource, "onsetDateTime") or get_str(resource, "recordedDate"))
    if onset is None or onset > moment:
        return None
    abated = parse_datetime(get_str(resource, "abatementDateTime"))
    status = "resolved" if abated is not None and abated <= moment else "active"
    return {
        **resource,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": status,
                }
            ]
        },
    }


def _status_code(resource: JSONObject) -> str | None:
    concept = get_object(resource, "clinicalStatus")
    codings = get_objects(concept, "coding") if concept else []
    return get_str(codings[0], "code") if codings else None


def run_query(query: Query, resources: Sequence[JSONObject], moment: datetime) -> list[JSONObject]:
    """What the search would have returned at ``moment`` over one patient's resources."""
    found: list[tuple[datetime, str, JSONObject]] = []
    for resource in resources:
        if get_str(resource, "resourceType") != query.resource_type:
            continue
        if not _matches_code(resource, query.codes):
            continue
        if query.resource_type == "Condition":
            as_of = _condition_as_of(resource, moment)
            if as_of is None:
                continue
            if query.clinical_status and _status_code(as_of) not in query.clinical_status:
                continue
            onset = parse_datetime(get_str(resource, "onsetDateTime")) or moment
            found.append((onset, get_str(resource, "id") or "", as_of))
            continue
        if query.resource_type == "Encounter":
            period = get_object(resource, "period") or {}
            effective = parse_datetime(get_str(period, "start"))
        else:
            effective = _observation_time(resource)
        if effective is None or effective > moment:
            continue
        found.append((effective, get_str(resource, "id") or "", resource))
    found.sort(key=lambda item: (item[0], item[1]), reverse=query.newest_first)
    results = [resource for _, _, resource in found]
    return results[: query.count] if query.count is not None else results


# ------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class Replayed:
    """One replayed event and what the bot returned."""

    reference: str
    at: datetime
    effects: tuple[Effect, ...]
    error: str | None = None


@dataclass(slots=True)
class PatientSummary:
    patient_id: str
    events: int = 0
    proposals: int = 0
    tasks: int = 0
    urgent: int = 0
    no_results: int = 0
    errors: int = 0


@dataclass(slots=True)
class BacktestReport:
    bot: str
    version: str
    outcomes: Counter[str] = field(default_factory=Counter[str])
    patients: list[PatientSummary] = field(default_factory=list[PatientSummary])

    @property
    def events(self) -> int:
        return sum(patient.events for patient in self.patients)


def outcome_keys(effects: Iterable[Effect]) -> list[str]:
    """Counting keys of one event's effects: ``ProposeObservation:bmi``,
    ``OpenReviewTask:hypertensive-crisis:urgent``, ``NoResult:insufficient_evidence``, or
    ``nothing`` for an empty list."""
    keys: list[str] = []
    for effect in effects:
        match effect:
            case ProposeObservation() | ProposeRequest():
                keys.append(f"{type(effect).__name__}:{effect.slot}")
            case OpenReviewTask():
                keys.append(f"OpenReviewTask:{effect.slot}:{effect.priority}")
            case NoResult():
                keys.append(f"NoResult:{effect.outcome}")
    return keys or ["nothing"]


def triggering_observations(bot: Bot, history: PatientHistory) -> list[tuple[datetime, JSONObject]]:
    """The patient's Observations that match the bot's trigger, oldest first (ties by id)."""
    trigger = bot.declaration.trigger
    query = parse_query(trigger.criteria)
    events: list[tuple[datetime, str, JSONObject]] = []
    for resource in history.resources:
        if get_str(resource, "resourceType") != trigger.resource_type:
            continue
        if not _matches_code(resource, query.codes):
            continue
        effective = _observation_time(resource)
        if effective is not None:
            events.append((effective, get_str(resource, "id") or "", resource))
    events.sort(key=lambda item: (item[0], item[1]))
    return [(at, resource) for at, _, resource in events]


def context_at(bot: Bot, history: PatientHistory, moment: datetime) -> BotContext:
    prefetched = {
        prefetch.name: run_query(parse_query(prefetch.query), history.resources, moment)
        for prefetch in bot.declaration.prefetch
    }
    return BotContext(
        patient=PatientView(patient_as_of(history.patient, moment)),
        prefetched=prefetched,
        now=moment,
    )


def patient_as_of(patient: JSONObject, moment: datetime) -> JSONObject:
    """The Patient as the chart stood at ``moment``: a death recorded after it had not happened
    yet (a history replayed today must not see every earlier result as after death)."""
    died = parse_datetime(get_str(patient, "deceasedDateTime"))
    if died is None or died <= moment:
        return patient
    return {k: v for k, v in patient.items() if k not in ("deceasedDateTime", "deceasedBoolean")}


def replay_history(
    bot: Bot, history: PatientHistory, *, since: datetime | None = None
) -> list[Replayed]:
    """Replay every triggering Observation of one patient (at or after ``since``)."""
    replayed: list[Replayed] = []
    for at, resource in triggering_observations(bot, history):
        if since is not None and at < since:
            continue
        view = ObservationView(resource)
        event = BotEvent(
            interaction=Interaction.CREATE,
            resource=view,
            reference=view.reference,
            version_id=view.version_id,
            patient=history.reference,
        )
        try:
            effects = tuple(bot.compute(event, context_at(bot, history, at)))
        except Exception as exc:  # a bot must never raise: count it, keep going
            replayed.append(Replayed(view.reference, at, (), f"{type(exc).__name__}: {exc}"))
            continue
        replayed.append(Replayed(view.reference, at, effects))
    return replayed


def summarise(patient_id: str, replayed: Iterable[Replayed], report: BacktestReport) -> None:
    summary = PatientSummary(patient_id)
    for item in replayed:
        summary.events += 1
        if item.error is not None:
            summary.errors += 1
            report.outcomes["error"] += 1
            continue
        report.outcomes.update(outcome_keys(item.effects))
        for effect in item.effects:
            match effect:
                case ProposeObservation() | ProposeRequest():
                    summary.proposals += 1
                case OpenReviewTask():
                    summary.tasks += 1
                    summary.urgent += effect.priority == "urgent"
                case NoResult():
                    summary.no_results += 1
    report.patients.append(summary)


def backtest(
    bot: Bot,
    histories: Iterable[PatientHistory],
    *,
    since: datetime | None = None,
    progress: Callable[[PatientHistory], None] | None = None,
) -> BacktestReport:
    """Replay ``bot`` over the histories and count what it would have proposed."""
    report = BacktestReport(bot=bot.declaration.name, version=bot.declaration.version)
    for history in histories:
        if progress is not None:
            progress(history)
        summarise(history.patient_id, replay_history(bot, history, since=since), report)
    return report
