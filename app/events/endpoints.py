"""``POST /v1/medplum/notifications``: the rest-hook receiver.

Order of checks: content type (415), signature (401, or 429 for a client that keeps failing),
then the notification itself (400). A verified notification becomes a PHI-free event key and a
claim-check job in one commit (group-committed with concurrent requests) before the answer:
202 for a new event, 200 for a duplicate or an ignored own write. The body is never stored,
logged or traced.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import RuntimeDep
from app.api.errors import ERROR_RESPONSES, ApiError, ErrorCode
from app.events.dependencies import SignedBody
from app.events.keys import Ignored, NotificationRejected, event_key
from app.events.repository import IntakeUnavailable
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


@router.post(
    "/notifications",
    status_code=202,
    response_model=NotificationAck,
    summary="Receive a Medplum rest-hook notification",
    responses={
        200: {"model": NotificationAck, "description": "Duplicate or ignored own write"},
        **{code: ERROR_RESPONSES[code] for code in (400, 401, 413, 415, 422, 429, 503)},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
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
        raise ApiError(
            400,
            ErrorCode.MALFORMED_BODY,
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
        return _ack(200, NotificationAck(status="duplicate", event_id=result.event_id))
    return _ack(202, NotificationAck(status="accepted", event_id=result.event_id))


def _ack(status_code: int, ack: NotificationAck) -> Response:
    # Serialised here: the route returns a Response, so FastAPI skips re-validating the model.
    return Response(
        content=ack.__pydantic_serializer__.to_json(ack),
        status_code=status_code,
        media_type="application/json",
    )
