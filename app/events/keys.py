"""The PHI-free event key of a verified rest-hook notification.

Medplum's notifications carry no delivery id, so the receiver deduplicates by resource version.
Nothing from the body survives this module except references, version ids and the interaction.

Every value that leaves this module reaches SQL, so each is checked here, at the edge: a full
match of its pattern (``$`` alone would let a trailing newline through), printable characters
only (no NUL, which PostgreSQL refuses in text and which would fail the whole group commit),
and a length cap. Bad input is a 400 for that request, never a database error for its
neighbours.

A delete is recorded under a *provisional* version (:data:`PENDING_DELETE_VERSION`): only
the body ``{}`` is signed, so the deleted resource named in the header is taken at its word
until the worker has confirmed with Medplum that the resource is gone; only then does the event
occupy the ``deleted`` key (app/events/jobs.py). A forged delete therefore can never pre-empt
the genuine one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.repository import PENDING_DELETE_VERSION, EventKey
from app.fhir.resource_json import FHIR_ID, RESOURCE_TYPE, JSONObject, get_str
from app.handlers.registry import HANDLER_NAME
from app.observability.correlation import SAFE_ID

if TYPE_CHECKING:
    import re
    from collections.abc import Mapping

    from app.handlers.protocol import Handler
    from app.handlers.registry import HandlerRegistry

HANDLER_HEADER = "x-starvit-bot"
INTERACTIONS = ("create", "update", "delete")
# The elements that name the patient a resource is about, in the order they are tried.
_PATIENT_ELEMENTS = ("subject", "for", "patient", "beneficiary")
# meta.author.reference is stored as is (Type/id, or a longer absolute reference): capped.
MAX_AUTHOR_LENGTH = 140

# Why a notification was refused, as counted (PHI-free) in the rejected deliveries.
type RejectionReason = Literal["malformed", "unknown_handler", "wrong_resource_type"]


class NotificationRejected(Exception):
    """The notification cannot be accepted; ``field`` names what is wrong (never a value)."""

    def __init__(self, field: str, problem: str, reason: RejectionReason = "malformed") -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.reason: RejectionReason = reason


def _token(value: str, pattern: re.Pattern[str]) -> bool:
    return pattern.fullmatch(value) is not None


def _printable(value: str, field: str, max_length: int) -> str:
    """``value`` when it is printable and short enough, else :class:`NotificationRejected`."""
    if len(value) > max_length or not value.isprintable():
        raise NotificationRejected(field, "contains non-printable characters or is too long")
    return value


def subscribed_handler(headers: Mapping[str, str], registry: HandlerRegistry) -> Handler:
    """The subscribed handler ``X-Starvit-Bot`` names. Checked before the signature: the
    signature is verified with that handler's own secrets."""
    handler = (headers.get(HANDLER_HEADER) or "").strip()
    if not handler:
        raise NotificationRejected(
            "X-Starvit-Bot", "missing (set by the Subscription's channel)", "unknown_handler"
        )
    subscribed = registry.get(handler) if _token(handler, HANDLER_NAME) else None
    if subscribed is None or subscribed.subscription is None:
        raise NotificationRejected(
            "X-Starvit-Bot", "names no subscribed handler", "unknown_handler"
        )
    return subscribed


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


def patient_of(resource: JSONObject, resource_type: str, resource_id: str) -> str | None:
    if resource_type == "Patient":
        return resource_id
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, dict):
            reference = get_str(value, "reference") or ""
            if reference.startswith("Patient/"):
                patient_id = reference.removeprefix("Patient/").split("/", 1)[0]
                return patient_id if _token(patient_id, FHIR_ID) else None
    return None


def _own_write(resource: JSONObject, service_author: str, *, includes_service_tagged: bool) -> bool:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return False
    author = meta.get("author")
    if isinstance(author, dict) and get_str(author, "reference") == service_author:
        return True
    if includes_service_tagged:
        # The handler watches the service's own tagged resources: a person's change to one is
        # exactly its event.
        return False
    tags = meta.get("tag")
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == TAG_SYSTEM and t.get("code") == TAG_CODE
        for t in tags
    )


def event_key(
    body: bytes,
    headers: Mapping[str, str],
    *,
    registry: HandlerRegistry,
    service_author: str,
) -> EventKey | Ignored:
    """The event key of a verified notification, or why it is ignored.

    Raises :class:`NotificationRejected` for malformed input, a handler that is not subscribed,
    an interaction its Subscription does not deliver, or a resource type it does not watch.
    """
    subscribed = subscribed_handler(headers, registry)
    subscription = subscribed.subscription
    assert subscription is not None
    trigger = subscription.trigger
    handler = subscribed.name
    interaction = (headers.get("x-medplum-interaction") or "").strip().lower()
    if interaction not in INTERACTIONS:
        raise NotificationRejected("X-Medplum-Interaction", "must be create, update or delete")
    if interaction not in trigger.interactions:
        raise NotificationRejected("X-Medplum-Interaction", "is not delivered to this handler")
    subscription_id = (headers.get("x-medplum-subscription") or "").strip()
    if not _token(subscription_id, FHIR_ID):
        raise NotificationRejected("X-Medplum-Subscription", "missing or not a resource id")
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotificationRejected("body", "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise NotificationRejected("body", "must be a JSON object")
    resource: JSONObject = parsed  # pyright: ignore[reportUnknownVariableType]
    trace_id = headers.get("x-trace-id")
    if trace_id is not None and not _token(trace_id, SAFE_ID):
        trace_id = None  # it travels into the job and the logs: only a safe token does

    if interaction == "delete":
        deleted = (headers.get("x-medplum-deleted-resource") or "").strip()
        resource_type, _, resource_id = deleted.partition("/")
        if not _token(resource_type, RESOURCE_TYPE) or not _token(resource_id, FHIR_ID):
            raise NotificationRejected("X-Medplum-Deleted-Resource", "must be Type/id")
        _check_resource_type(resource_type, trigger.resource_type, "X-Medplum-Deleted-Resource")
        return EventKey(
            handler=handler,
            resource_type=resource_type,
            resource_id=resource_id,
            # Provisional until the worker has seen Medplum answer 404/410 for it.
            version_id=PENDING_DELETE_VERSION,
            interaction=interaction,
            source="notification",
            subscription_id=subscription_id,
            trace_id=trace_id,
        )

    resource_type = get_str(resource, "resourceType") or ""
    resource_id = get_str(resource, "id") or ""
    meta = resource.get("meta")
    version_id = (get_str(meta, "versionId") if isinstance(meta, dict) else None) or ""
    if not _token(resource_type, RESOURCE_TYPE):
        raise NotificationRejected("resourceType", "missing or invalid")
    _check_resource_type(resource_type, trigger.resource_type, "resourceType")
    if not _token(resource_id, FHIR_ID):
        raise NotificationRejected("id", "missing or invalid")
    if not _token(version_id, FHIR_ID):
        raise NotificationRejected("meta.versionId", "missing or invalid")
    author = meta.get("author") if isinstance(meta, dict) else None
    author_reference = get_str(author, "reference") if isinstance(author, dict) else None
    if author_reference is not None:
        author_reference = _printable(author_reference, "meta.author.reference", MAX_AUTHOR_LENGTH)
    if _own_write(
        resource,
        service_author,
        includes_service_tagged=subscription.includes_service_tagged,
    ):
        return Ignored("own_write")
    return EventKey(
        handler=handler,
        resource_type=resource_type,
        resource_id=resource_id,
        version_id=version_id,
        interaction=interaction,
        source="notification",
        subscription_id=subscription_id,
        patient_id=patient_of(resource, resource_type, resource_id),
        author=author_reference or None,
        trace_id=trace_id,
    )


def _check_resource_type(resource_type: str, expected: str, field: str) -> None:
    if resource_type != expected:
        raise NotificationRejected(
            field, "is not the resource type this handler watches", "wrong_resource_type"
        )
