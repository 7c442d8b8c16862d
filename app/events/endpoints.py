"""``POST /v1/medplum/notifications``: the rest-hook receiver.

Order of checks: content type (415), the failed-signature limit (429), the handler (400
``unknown_handler``), the signature under that handler's secrets (401), then the notification
itself (400 ``malformed_body`` or ``wrong_resource_type``). A verified notification becomes a
PHI-free event key and a claim-check job in one commit (group-committed with concurrent
requests) before the answer: 202 for a new event, 200 for a duplicate or an ignored own write.
The body is never stored, logged or traced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import RuntimeDep
from app.api.errors import ERROR_RESPONSES, ApiError, ErrorCode
from app.events.dependencies import SignedBody, count_rejection
from app.events.keys import Ignored, NotificationRejected, RejectionReason, event_key
from app.events.repository import IntakeRefused, IntakeUnavailable
from app.observability.logging import get_logger

router = APIRouter(prefix="/medplum", tags=["medplum"])
log = get_logger("app.api.notifications")


class NotificationAck(BaseModel):
    status: Literal["accepted", "duplicate", "ignored"] = Field(
        description="accepted: queued for processing; duplicate: this resource version was "
        "already received; ignored: the service's own write."
    )
    event_id: int | None = Field(default=None, description="The service's event key id.")
    reason: str | None = Field(default=None, description="Why the notification was ignored.")


_FHIR_ID = "^[A-Za-z0-9.-]{1,64}$"
_RESOURCE_TYPE = "^[A-Z][A-Za-z]{0,63}$"

# What the receiver accepts, as the contract states it: a resource with its type, id and
# version (create, update), or the empty object Medplum sends for a delete. The resource type
# must also be the one the handler's Subscription watches (400 wrong_resource_type).
NOTIFICATION_BODY: dict[str, object] = {
    "oneOf": [
        {
            "title": "NotifiedResource",
            "description": "The created or updated resource (create and update).",
            "type": "object",
            "required": ["resourceType", "id", "meta"],
            "properties": {
                "resourceType": {"type": "string", "pattern": _RESOURCE_TYPE},
                "id": {"type": "string", "pattern": _FHIR_ID},
                "meta": {
                    "type": "object",
                    "required": ["versionId"],
                    "properties": {
                        "versionId": {"type": "string", "pattern": _FHIR_ID},
                        "author": {
                            "type": "object",
                            "properties": {
                                "reference": {
                                    "type": "string",
                                    "maxLength": 140,
                                    "pattern": "^[\\x20-\\x7E]*$",
                                }
                            },
                        },
                    },
                },
            },
        },
        {
            "title": "DeleteNotification",
            "description": "A delete: the empty object; the resource is named in "
            "X-Medplum-Deleted-Resource.",
            "type": "object",
            "maxProperties": 0,
        },
    ]
}


def _header(
    name: str, description: str, schema: dict[str, object], *, required: bool
) -> dict[str, object]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


# Declared in the contract only: the route reads them itself, in the order of its checks (a
# FastAPI Header parameter would answer 422 before the signature was even looked at).
NOTIFICATION_HEADERS = [
    _header(
        "X-Signature",
        "HMAC-SHA256 of the body, lowercase hex (see the MedplumSignature security scheme).",
        {"pattern": "^[0-9a-f]{64}$"},
        required=True,
    ),
    _header(
        "X-Starvit-Bot",
        "The handler the Subscription belongs to (its channel header); it selects the secret "
        "the signature is checked with.",
        {"pattern": "^[a-z0-9][a-z0-9-]{0,63}$"},
        required=True,
    ),
    _header(
        "X-Medplum-Interaction",
        "What happened to the resource; must be one the handler's Subscription delivers.",
        {"enum": ["create", "update", "delete"]},
        required=True,
    ),
    _header(
        "X-Medplum-Subscription", "The Subscription's id.", {"pattern": _FHIR_ID}, required=True
    ),
    _header(
        "X-Medplum-Deleted-Resource",
        "Type/id of the deleted resource: required when X-Medplum-Interaction is delete.",
        {"pattern": "^[A-Z][A-Za-z]{0,63}/[A-Za-z0-9.-]{1,64}$"},
        required=False,
    ),
    _header(
        "X-Trace-Id",
        "Medplum's trace id, carried into the job as its correlation id when it is a safe token.",
        {"maxLength": 128},
        required=False,
    ),
]


def document_handlers(names: Iterable[str]) -> None:
    """Name the subscribed handlers in the contract's ``X-Starvit-Bot`` (the composition root
    knows them; this module does not)."""
    for parameter in NOTIFICATION_HEADERS:
        if parameter["name"] == "X-Starvit-Bot":
            schema = parameter["schema"]
            assert isinstance(schema, dict)
            schema["enum"] = sorted(names)


_ERROR_CODES: dict[RejectionReason, ErrorCode] = {
    "malformed": ErrorCode.MALFORMED_BODY,
    "unknown_handler": ErrorCode.UNKNOWN_HANDLER,
    "wrong_resource_type": ErrorCode.WRONG_RESOURCE_TYPE,
}


@router.post(
    "/notifications",
    status_code=202,
    response_model=NotificationAck,
    summary="Receive a Medplum rest-hook notification",
    responses={
        200: {"model": NotificationAck, "description": "Duplicate or ignored own write"},
        **{code: ERROR_RESPONSES[code] for code in (400, 401, 408, 413, 415, 429, 503)},
    },
    openapi_extra={
        "parameters": NOTIFICATION_HEADERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": NOTIFICATION_BODY},
                "application/json": {"schema": NOTIFICATION_BODY},
            },
        },
    },
)
async def receive_notification(request: Request, body: SignedBody, runtime: RuntimeDep) -> Response:
    settings = runtime.settings
    try:
        key = event_key(
            body,
            request.headers,
            registry=runtime.require_registry(),
            service_author=settings.service_author,
        )
    except NotificationRejected as rejected:
        count_rejection(request, rejected.reason, request.headers.get("x-starvit-bot"))
        raise ApiError(
            400,
            _ERROR_CODES[rejected.reason],
            details={"field": rejected.field, "problem": rejected.problem},
        ) from None
    if isinstance(key, Ignored):
        log.info("notification_ignored", reason=key.reason)
        return _ack(200, NotificationAck(status="ignored", reason=key.reason))
    try:
        result = await runtime.require_intake().submit(key)
    except IntakeUnavailable:
        # Not durable, so not acknowledged: Medplum retries the delivery.
        log.error("notification_not_recorded", handler=key.handler, target=key.reference)
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None
    except IntakeRefused:
        # The database refused this key's data (the edge checks should have): this request
        # alone fails, and retrying it would fail again.
        log.error("notification_refused_by_store", handler=key.handler)
        count_rejection(request, "malformed", key.handler)
        raise ApiError(400, ErrorCode.MALFORMED_BODY, details={"field": "body"}) from None
    # The request line (status, duration, correlation id) is logged at INFO by the middleware;
    # the event's own line is DEBUG: the hot path pays for one log line, not two.
    log.debug(
        "notification_received",
        handler=key.handler,
        target=key.reference,
        version=key.version_id,
        interaction=key.interaction,
        event_id=result.event_id,
        duplicate=result.duplicate,
    )
    if result.duplicate:
        count_rejection(request, "duplicate", key.handler)
        return _ack(200, NotificationAck(status="duplicate", event_id=result.event_id))
    return _ack(202, NotificationAck(status="accepted", event_id=result.event_id))


def _ack(status_code: int, ack: NotificationAck) -> Response:
    # Serialised here: the route returns a Response, so FastAPI skips re-validating the model.
    return Response(
        content=ack.__pydantic_serializer__.to_json(ack),
        status_code=status_code,
        media_type="application/json",
    )
