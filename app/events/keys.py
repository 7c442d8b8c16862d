"""The PHI-free event key of a verified rest-hook notification.

Medplum's notifications carry no delivery id, so the receiver deduplicates by resource version.
Nothing from the body survives this module except references, version ids and the interaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.repository import EventKey
from app.fhir.resource_json import FHIR_ID, RESOURCE_TYPE, JSONObject, get_str
from app.handlers.protocol import DELETED_VERSION
from app.observability.correlation import SAFE_ID

if TYPE_CHECKING:
    from collections.abc import Mapping

    from app.handlers.registry import HandlerRegistry

HANDLER_HEADER = "x-starvit-bot"
INTERACTIONS = ("create", "update", "delete")
# The elements that name the patient a resource is about, in the order they are tried.
_PATIENT_ELEMENTS = ("subject", "for", "patient", "beneficiary")


class NotificationRejected(Exception):
    """The notification cannot be accepted; ``field`` names what is wrong (never a value)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


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
                return patient_id if FHIR_ID.match(patient_id) else None
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

    Raises :class:`NotificationRejected` for malformed input.
    """
    handler = (headers.get(HANDLER_HEADER) or "").strip()
    if not handler:
        raise NotificationRejected("X-Starvit-Bot", "missing (set by the Subscription's channel)")
    subscribed = registry.get(handler)
    if subscribed is None or subscribed.subscription is None:
        raise NotificationRejected("X-Starvit-Bot", "names no subscribed handler")
    interaction = (headers.get("x-medplum-interaction") or "").strip().lower()
    if interaction not in INTERACTIONS:
        raise NotificationRejected("X-Medplum-Interaction", "must be create, update or delete")
    subscription = (headers.get("x-medplum-subscription") or "").strip() or None
    if subscription is not None and not FHIR_ID.match(subscription):
        raise NotificationRejected("X-Medplum-Subscription", "is not a resource id")
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotificationRejected("body", "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise NotificationRejected("body", "must be a JSON object")
    resource: JSONObject = parsed  # pyright: ignore[reportUnknownVariableType]
    trace_id = headers.get("x-trace-id")
    if trace_id is not None and not SAFE_ID.match(trace_id):
        trace_id = None  # it travels into the job and the logs: only a safe token does

    if interaction == "delete":
        deleted = (headers.get("x-medplum-deleted-resource") or "").strip()
        resource_type, _, resource_id = deleted.partition("/")
        if not RESOURCE_TYPE.match(resource_type) or not FHIR_ID.match(resource_id):
            raise NotificationRejected("X-Medplum-Deleted-Resource", "must be Type/id")
        return EventKey(
            handler=handler,
            resource_type=resource_type,
            resource_id=resource_id,
            version_id=DELETED_VERSION,
            interaction=interaction,
            source="notification",
            subscription_id=subscription,
            trace_id=trace_id,
        )

    resource_type = get_str(resource, "resourceType") or ""
    resource_id = get_str(resource, "id") or ""
    meta = resource.get("meta")
    version_id = (get_str(meta, "versionId") if isinstance(meta, dict) else None) or ""
    if not RESOURCE_TYPE.match(resource_type):
        raise NotificationRejected("resourceType", "missing or invalid")
    if not FHIR_ID.match(resource_id):
        raise NotificationRejected("id", "missing or invalid")
    if not FHIR_ID.match(version_id):
        raise NotificationRejected("meta.versionId", "missing or invalid")
    if _own_write(
        resource,
        service_author,
        includes_service_tagged=subscribed.subscription.includes_service_tagged,
    ):
        return Ignored("own_write")
    author = meta.get("author") if isinstance(meta, dict) else None
    author_reference = get_str(author, "reference") if isinstance(author, dict) else None
    return EventKey(
        handler=handler,
        resource_type=resource_type,
        resource_id=resource_id,
        version_id=version_id,
        interaction=interaction,
        source="notification",
        subscription_id=subscription,
        patient_id=patient_of(resource, resource_type, resource_id),
        author=author_reference if author_reference and len(author_reference) <= 140 else None,
        trace_id=trace_id,
    )
