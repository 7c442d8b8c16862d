"""The bot contract: a declaration plus a pure ``compute(event, context) -> list[Effect]``.

A bot never does I/O. Its handler (:mod:`app.botkit.handler`) fetches the notified version and the
bot's prefetch queries in one batch, calls ``compute``, and turns the declarative effects into
FHIR resources with deterministic identifiers (:mod:`app.botkit.plan`): a replayed
event writes nothing new, and a newer suggestion in the same *slot* supersedes the older
pending Task of the same bot and patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from app.clinical.result import Citation
from app.fhir.resource_json import JSONObject
from app.fhir.views import ConditionView, ObservationView, PatientView, ResourceView
from app.handlers.protocol import Interaction, Trigger


@dataclass(frozen=True, slots=True)
class Prefetch:
    """A named FHIR search templated on the patient: ``{{patient}}`` -> ``Patient/<id>``,
    ``{{patient_id}}`` -> ``<id>``. Fetched in the same batch as the notified version, or,
    ``deferred``, only when the bot's ``compute`` asks for it (a search that matters in one
    branch, such as the problem list consulted only once a BMI is in the obesity range: the
    events that never reach that branch save its 20 quota points)."""

    name: str
    query: str  # "Observation?subject={{patient}}&code=http://loinc.org|8302-2&_count=50"
    deferred: bool = False


class NeedsPrefetch(Exception):
    """Raised by :class:`BotContext` when ``compute`` reads a deferred prefetch that was not
    fetched yet: the handler fetches the bot's deferred searches and runs ``compute`` again."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# How long a clinician's rejection silences the same suggestion (unless the evidence crosses
# into a worse category), when a protocol states nothing else.
DEFAULT_SNOOZE = timedelta(days=180)


@dataclass(frozen=True, slots=True)
class SlotPolicy:
    """How the suggestions of one slot (one protocol) reach the clinician.

    ``actionable`` False: the result calls for no action of its own (a normal BMI, a G1 eGFR);
    its proposal joins the patient's one rolling results-review Task instead of opening a Task.
    ``window``: evidence older than this (against the processing time) opens nothing (a bulk
    load of old history gains only what is current). ``snooze``: after a clinician rejects the
    suggestion, the same suggestion is not made again for this long unless the evidence is in a
    worse category (``OpenReviewTask.severity``)."""

    slot: str
    actionable: bool = True
    window: timedelta | None = None
    snooze: timedelta = DEFAULT_SNOOZE


@dataclass(frozen=True, slots=True)
class BotDeclaration:
    name: str  # stable, lower-case: "bmi"
    version: str  # semantic version of the clinical logic
    title: str
    citation: Citation
    trigger: Trigger
    prefetch: tuple[Prefetch, ...] = ()
    description: str = ""
    slots: tuple[SlotPolicy, ...] = ()

    def policy(self, slot: str) -> SlotPolicy:
        """The slot's policy (an actionable slot without window when none is declared)."""
        return next((p for p in self.slots if p.slot == slot), SlotPolicy(slot))


@dataclass(frozen=True, slots=True)
class BotEvent:
    """The notification being processed, with the notified resource's current version (a late
    or out-of-order event computes on the newest state)."""

    interaction: Interaction
    resource: ResourceView | None  # None for a delete
    reference: str  # "Observation/123"
    version_id: str | None
    patient: str | None  # "Patient/abc"


@dataclass(frozen=True, slots=True)
class BotContext:
    patient: PatientView | None
    prefetched: dict[str, list[JSONObject]] = field(default_factory=dict[str, list[JSONObject]])
    # The processing time, only for "as of" bookkeeping (Task due dates); clinical times come
    # from the evidence.
    now: datetime | None = None
    # Deferred prefetches not fetched yet: reading one raises NeedsPrefetch.
    deferred: frozenset[str] = frozenset()

    def resources(self, name: str) -> list[JSONObject]:
        """The resources of the prefetch ``name`` (asks for a deferred one)."""
        if name in self.deferred:
            raise NeedsPrefetch(name)
        return self.prefetched.get(name, [])

    def observations(self, name: str) -> list[ObservationView]:
        return [
            ObservationView(r)
            for r in self.resources(name)
            if r.get("resourceType") == "Observation"
        ]

    def conditions(self, name: str) -> list[ConditionView]:
        return [
            ConditionView(r) for r in self.resources(name) if r.get("resourceType") == "Condition"
        ]


# ---------------------------------------------------------------- effects (declarative)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A version-specific input: ``Observation/1/_history/3``."""

    reference: str
    version_id: str

    @property
    def versioned(self) -> str:
        return f"{self.reference}/_history/{self.version_id}"

    @classmethod
    def of(cls, view: ResourceView) -> Evidence:
        return cls(reference=view.reference, version_id=view.version_id)


@dataclass(frozen=True, slots=True)
class ObservationComponentValue:
    loinc: str
    display: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ProposeObservation:
    """A derived measurement, written ``preliminary`` until a clinician approves."""

    slot: str  # the suggestion kind within the bot, e.g. "bmi"
    loinc: str
    display: str
    value: float | None  # None when only components carry values (BP average)
    unit: str  # UCUM
    effective: datetime
    evidence: tuple[Evidence, ...]
    category: str | None = None  # e.g. "Obesity class I", "G3a"
    components: tuple[ObservationComponentValue, ...] = ()


@dataclass(frozen=True, slots=True)
class ProposeRequest:
    """A proposed action: a ``ServiceRequest`` (or ``CarePlan``) with status ``draft`` and
    intent ``proposal`` until a clinician approves."""

    slot: str
    kind: Literal["ServiceRequest", "CarePlan"]
    code_system: str
    code: str
    display: str
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class OpenReviewTask:
    """The clinician's review Task for the proposal in ``slot`` (its focus)."""

    slot: str
    title: str  # < 140 characters: the task list's row title
    rationale: str  # the numbers and the guideline
    priority: Literal["routine", "urgent"]
    evidence: tuple[Evidence, ...]
    citation: Citation
    # The clinical time of the newest evidence (its effective time, not when it arrived).
    # A suggestion supersedes a pending one of the same slot only when this is at least as
    # recent as the pending one's; when None, the slot's ProposeObservation.effective is used.
    evidence_time: datetime | None = None
    # The rank of the evidence's category within the protocol (higher is worse): a rejected
    # suggestion comes back before its snooze ends only for a worse category.
    severity: int = 0


@dataclass(frozen=True, slots=True)
class Retract:
    """The slot's suggestion no longer holds as of ``evidence_time`` (a corrected weight puts
    the BMI below 30): a pending suggestion of the slot resting on evidence no newer than this
    is withdrawn with ``reason``."""

    slot: str
    reason: str
    evidence_time: datetime


@dataclass(frozen=True, slots=True)
class NoResult:
    """Nothing to propose, and why (recorded in the AuditEvent, never guessed around)."""

    reason: str
    outcome: str  # a stable code: invalid_input, not_applicable, insufficient_evidence, ...


__all__ = [
    "Bot",
    "BotContext",
    "BotDeclaration",
    "BotEvent",
    "Effect",
    "Evidence",
    "Interaction",
    "NeedsPrefetch",
    "NoResult",
    "ObservationComponentValue",
    "OpenReviewTask",
    "Prefetch",
    "ProposeObservation",
    "ProposeRequest",
    "Retract",
    "SlotPolicy",
    "Trigger",
]

type Effect = ProposeObservation | ProposeRequest | OpenReviewTask | Retract | NoResult


class Bot(Protocol):
    @property
    def declaration(self) -> BotDeclaration: ...

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]: ...
