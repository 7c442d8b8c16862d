"""Rest-hook notifications from Medplum: signature check and the PHI-free event key.

Medplum signs the exact body bytes with HMAC-SHA256 (lowercase hex in ``X-Signature``), with
no timestamp or delivery id (docs/MEDPLUM_CONFIGURATION.md), so the receiver verifies the raw
bytes in constant time and deduplicates by resource version. Nothing from the body survives
this module except references, version ids and the interaction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from app.domain.fhir_json import JSONObject, get_str
from app.domain.proposals import TAG_CODE, TAG_SYSTEM
from app.persistence.events import DELETED_VERSION, EventKey

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

BOT_HEADER = "x-starvit-bot"
REVIEW_HANDLER = "review"  # the clinician-decision handler's name in the channel header
INTERACTIONS = ("create", "update", "delete")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_TRACE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The elements that name the patient a resource is about, in the order they are tried.
_PATIENT_ELEMENTS = ("subject", "for", "patient", "beneficiary")


class NotificationRejected(Exception):
    """The notification cannot be accepted; ``field`` names what is wrong (never a value)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def signature_matches(body: bytes, signature: str, secrets: Iterable[bytes]) -> bool:
    """True when ``signature`` is the HMAC-SHA256 of ``body`` under any active secret.

    Every secret is tried (no early exit), so the time taken does not reveal which one matched.
    """
    candidate = signature.strip().lower()
    if not _HEX.match(candidate):
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected, candidate)
    return matched


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
                return patient_id if _ID.match(patient_id) else None
    return None


def _own_write(resource: JSONObject, resource_type: str, service_author: str) -> bool:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return False
    author = meta.get("author")
    if isinstance(author, dict) and get_str(author, "reference") == service_author:
        return True
    if resource_type == "Task":
        # A review Task carries the service's tag for life; a clinician's change to it is
        # exactly the event the review handler exists for.
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
    known_handlers: frozenset[str],
    service_author: str,
) -> EventKey | Ignored:
    """The event key of a verified notification, or why it is ignored.

    Raises :class:`NotificationRejected` for malformed input.
    """
    bot = (headers.get(BOT_HEADER) or "").strip()
    if not bot:
        raise NotificationRejected("X-Starvit-Bot", "missing (set by the Subscription's channel)")
    if bot not in known_handlers:
        raise NotificationRejected("X-Starvit-Bot", "names no known bot")
    interaction = (headers.get("x-medplum-interaction") or "").strip().lower()
    if interaction not in INTERACTIONS:
        raise NotificationRejected("X-Medplum-Interaction", "must be create, update or delete")
    subscription = (headers.get("x-medplum-subscription") or "").strip() or None
    if subscription is not None and not _ID.match(subscription):
        raise NotificationRejected("X-Medplum-Subscription", "is not a resource id")
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotificationRejected("body", "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise NotificationRejected("body", "must be a JSON object")
    resource: JSONObject = parsed  # pyright: ignore[reportUnknownVariableType]
    trace_id = headers.get("x-trace-id")
    if trace_id is not None and not _TRACE_ID.match(trace_id):
        trace_id = None  # it travels into the job and the logs: only a safe token does

    if interaction == "delete":
        deleted = (headers.get("x-medplum-deleted-resource") or "").strip()
        resource_type, _, resource_id = deleted.partition("/")
        if not _TYPE.match(resource_type) or not _ID.match(resource_id):
            raise NotificationRejected("X-Medplum-Deleted-Resource", "must be Type/id")
        return EventKey(
            bot=bot,
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
    if not _TYPE.match(resource_type):
        raise NotificationRejected("resourceType", "missing or invalid")
    if not _ID.match(resource_id):
        raise NotificationRejected("id", "missing or invalid")
    if not _ID.match(version_id):
        raise NotificationRejected("meta.versionId", "missing or invalid")
    if _own_write(resource, resource_type, service_author):
        return Ignored("own_write")
    author = meta.get("author") if isinstance(meta, dict) else None
    author_reference = get_str(author, "reference") if isinstance(author, dict) else None
    return EventKey(
        bot=bot,
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
