"""The Handler: one unit per kind of work the service does for Medplum's events.

Every handler (each clinical bot, the clinician-decision loop, the expiry of stale Tasks)
declares, in one place:

* its ``name`` and ``version`` (the name is the Subscription's channel header value, the event
  key's ``handler`` and the AuditEvent's subtype);
* ``subscription``: what Medplum notifies it about (its generated rest-hook Subscription), or
  ``None``;
* ``sweep``: what the reconciliation sweep searches for when notifications were missed, or
  ``None``;
* ``schedule``: when it runs on its own (a cron expression), or ``None``;
* ``handle(event, context)``: what it does with one event; ``run_scheduled(context)``: what it
  does on its schedule.

The receiver, Subscription generation, the sweep and the worker read these declarations from the
one :class:`~app.handlers.registry.HandlerRegistry`; none of them knows any handler by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.handlers.ledger import SlotLedger
    from app.integrations.medplum import MedplumClient
    from app.settings import Settings

# The version id recorded for a delete notification (its body carries no version).
DELETED_VERSION = "deleted"


class Interaction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Trigger:
    """What Medplum should notify a handler about (becomes its Subscription)."""

    resource_type: str
    criteria: str  # a FHIR search string matched in memory by Medplum, e.g. "Observation?code=..."
    # One interaction, or all three: what every Medplum version can deliver (5.0 reads only the
    # first supported-interaction extension; none means all three).
    interactions: tuple[Interaction, ...] = (
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.DELETE,
    )
    # Extra FHIRPath condition (%current / %previous); the service's own writes are excluded by
    # the generated subscription in any case.
    fhirpath: str | None = None

    def search_params(self) -> list[tuple[str, str]]:
        """The criteria's search parameters (what the sweep searches for)."""
        _, _, query = self.criteria.partition("?")
        return [
            (name, value)
            for name, _, value in (part.partition("=") for part in query.split("&"))
            if value
        ]


@dataclass(frozen=True, slots=True)
class Subscribes:
    """A handler's rest-hook Subscription."""

    trigger: Trigger
    reason: str  # Subscription.reason: what a Medplum admin reads
    # Whether resources the service wrote itself (they carry its tag) are events for this
    # handler: true only where a person's change to the service's own resource is the event.
    includes_service_tagged: bool = False


@dataclass(frozen=True, slots=True)
class SweepQuery:
    """What the reconciliation sweep searches for on a handler's behalf (``_lastUpdated`` and
    paging are added by the sweep)."""

    resource_type: str
    params: tuple[tuple[str, str], ...]
    # The search must show ``meta.author`` (``X-Medplum: extended``) when who made a version
    # matters to the handler.
    extended: bool = False
    includes_service_tagged: bool = False


@dataclass(frozen=True, slots=True)
class Schedule:
    cron: str  # croniter syntax; seconds as an optional sixth field


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the worker hands it to a handler: references and versions only, no PHI."""

    id: int
    handler: str
    subscription_id: str | None
    resource_type: str
    resource_id: str
    version_id: str
    interaction: str
    source: str
    patient_id: str | None
    author: str | None
    received_at: datetime
    status: str
    outcome: str | None
    error_code: str | None
    job_id: int | None
    attempts: int

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def deleted(self) -> bool:
        return self.version_id == DELETED_VERSION


@dataclass(frozen=True, slots=True)
class Processed:
    outcome: str  # a stable code: proposed, unchanged, finalised, refused, ...
    medplum_requests: int
    writes: int = 0
    # Medplum quota points the event spent, as the client counted them (set by the processor).
    quota_points: int | None = None


class PermanentFailure(Exception):
    """The event cannot succeed by retrying (dead-lettered at once with ``error_code``)."""

    def __init__(self, error_code: str) -> None:
        super().__init__(error_code)
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler may use: Medplum, the settings and the clock; and the correlation id of
    the work in progress (Medplum echoes it on the notifications that the writes cause)."""

    medplum: MedplumClient
    settings: Settings
    clock: Callable[[], datetime]
    trace_id: str | None = None
    # The service's ledger of derived writes (None: ask Medplum instead).
    ledger: SlotLedger | None = None
    # The id of the event being processed (None outside the event queue).
    event_id: int | None = None


class Handler(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def subscription(self) -> Subscribes | None: ...

    @property
    def sweep(self) -> SweepQuery | None: ...

    @property
    def schedule(self) -> Schedule | None: ...

    async def handle(self, event: StoredEvent, context: HandlerContext) -> Processed: ...

    async def run_scheduled(self, context: HandlerContext) -> int: ...


class EventHandler:
    """The defaults of a handler that only reacts to events: no schedule of its own."""

    __slots__ = ()

    @property
    def schedule(self) -> Schedule | None:
        return None

    async def run_scheduled(self, context: HandlerContext) -> int:
        del context
        return 0
