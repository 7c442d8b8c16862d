"""``/v1/ops/...``: the JSON API behind the ops dashboard (ops role only).

Reads answer from the service's tables and Medplum; actions take ``confirm: false`` to preview
what they would do and ``confirm: true`` to do it, and every action done is audited in
``starvit.ops_actions``. Identity: an ops session cookie (actions then need ``X-CSRF-Token``)
or ``Authorization: Bearer`` with a Medplum access token issued to the ops app.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.errors import ERROR_RESPONSES, ApiError, ErrorCode, ErrorEnvelope
from app.integrations.medplum import MedplumError
from app.ops.auth import OpsSession
from app.ops.dependencies import OpsActionDep, OpsServiceDep, OpsSessionDep
from app.ops.schemas import (
    ActionList,
    ActionResult,
    DeadLetterList,
    GapResponse,
    Overview,
    ReenableRequest,
    ReplayDeadLetterRequest,
    ResendRequest,
    SeriesResponse,
    WhoAmI,
    WindowRequest,
)
from app.ops.service import ActionRefused, Actor

router = APIRouter(prefix="/ops", tags=["ops"])

_READ_ERRORS: dict[int | str, dict[str, object]] = {
    code: ERROR_RESPONSES[code] for code in (400, 401, 422, 503)
}
_FORBIDDEN: dict[str, object] = {"model": ErrorEnvelope, "description": "Not an ops user; CSRF"}
_ACTION_ERRORS: dict[int | str, dict[str, object]] = {
    **_READ_ERRORS,
    403: _FORBIDDEN,
    404: {"model": ErrorEnvelope, "description": "No such event or handler"},
    409: {"model": ErrorEnvelope, "description": "Not possible in this state"},
}
_READS: dict[int | str, dict[str, object]] = {**_READ_ERRORS, 403: _FORBIDDEN}

_CODES = {
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    422: ErrorCode.VALIDATION_ERROR,
}


def actor_of(session: OpsSession) -> Actor:
    return Actor(session.profile, session.login_id, session.access_token)


def refused(error: ActionRefused) -> ApiError:
    code = _CODES.get(error.status_code, ErrorCode.DEPENDENCY_UNAVAILABLE)
    status = error.status_code if error.status_code in _CODES else 503
    return ApiError(status, code, details={"reason": error.code})


@router.get("/me", response_model=WhoAmI, summary="Who is signed in", responses=_READS)
async def whoami(session: OpsSessionDep) -> WhoAmI:
    return WhoAmI(
        profile=session.profile,
        role="ops",
        csrf_token=session.csrf if session.via == "cookie" else None,
    )


@router.get(
    "/overview",
    response_model=Overview,
    summary="Deliveries, processing and clinician acceptance, per handler",
    responses=_READS,
)
async def overview(_session: OpsSessionDep, service: OpsServiceDep) -> Overview:
    return await service.overview()


@router.get(
    "/dead-letters", response_model=DeadLetterList, summary="Failed events", responses=_READS
)
async def dead_letters(
    _session: OpsSessionDep,
    service: OpsServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeadLetterList:
    return DeadLetterList(items=await service.dead_letters(limit))


@router.get(
    "/series",
    response_model=SeriesResponse,
    summary="Per minute: deliveries, failures, latency, backlog",
    responses=_READS,
)
async def series(
    _session: OpsSessionDep,
    service: OpsServiceDep,
    minutes: Annotated[int, Query(ge=5, le=360)] = 60,
) -> SeriesResponse:
    return SeriesResponse(minutes=await service.series(minutes))


@router.get(
    "/gaps",
    response_model=GapResponse,
    summary="What Medplum changed that never reached the inbox",
    responses={**_READS, 404: _ACTION_ERRORS[404]},
)
async def gaps(
    _session: OpsSessionDep,
    service: OpsServiceDep,
    start: datetime | None = None,
    end: datetime | None = None,
    handler: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")] = None,
) -> GapResponse:
    window = WindowRequest.model_validate(
        {
            "start": start or datetime.now(UTC) - timedelta(hours=1),
            "end": end or datetime.now(UTC),
            "handler": handler,
        }
    )
    try:
        found = await service.gaps(window.start, window.end, window.handler)
    except ActionRefused as error:
        raise refused(error) from None
    except MedplumError:
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None
    return GapResponse(gaps=found)


@router.get("/actions", response_model=ActionList, summary="The ops actions done", responses=_READS)
async def actions(
    _session: OpsSessionDep,
    service: OpsServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> ActionList:
    return ActionList(items=await service.actions(limit))


@router.post(
    "/actions/replay-dead-letter",
    response_model=ActionResult,
    summary="Replay one failed event",
    responses=_ACTION_ERRORS,
)
async def replay_dead_letter(
    body: ReplayDeadLetterRequest, session: OpsActionDep, service: OpsServiceDep
) -> ActionResult:
    try:
        return await service.replay_dead_letter(
            actor_of(session), body.event_id, confirm=body.confirm
        )
    except ActionRefused as error:
        raise refused(error) from None


@router.post(
    "/actions/replay-window",
    response_model=ActionResult,
    summary="Replay every failed event received in a window",
    responses=_ACTION_ERRORS,
)
async def replay_window(
    body: WindowRequest, session: OpsActionDep, service: OpsServiceDep
) -> ActionResult:
    try:
        return await service.replay_window(
            actor_of(session), body.start, body.end, body.handler, confirm=body.confirm
        )
    except ActionRefused as error:
        raise refused(error) from None


@router.post(
    "/actions/sweep-window",
    response_model=ActionResult,
    summary="Run the reconciliation sweep over a window",
    responses=_ACTION_ERRORS,
)
async def sweep_window(
    body: WindowRequest, session: OpsActionDep, service: OpsServiceDep
) -> ActionResult:
    try:
        return await service.sweep_window(
            actor_of(session), body.start, body.end, body.handler, confirm=body.confirm
        )
    except ActionRefused as error:
        raise refused(error) from None
    except MedplumError:
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None


@router.post(
    "/actions/reenable-subscription",
    response_model=ActionResult,
    summary="Re-enable a handler's Subscription (as `starvit subscriptions sync`)",
    responses=_ACTION_ERRORS,
)
async def reenable_subscription(
    body: ReenableRequest, session: OpsActionDep, service: OpsServiceDep
) -> ActionResult:
    try:
        return await service.reenable(actor_of(session), body.handler, confirm=body.confirm)
    except ActionRefused as error:
        raise refused(error) from None
    except MedplumError:
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None


@router.post(
    "/actions/resend",
    response_model=ActionResult,
    summary="Ask Medplum to resend one resource to a handler's Subscription ($resend)",
    responses=_ACTION_ERRORS,
)
async def resend(
    body: ResendRequest, session: OpsActionDep, service: OpsServiceDep
) -> ActionResult:
    try:
        return await service.resend(
            actor_of(session), body.handler, body.reference, body.interaction, confirm=body.confirm
        )
    except ActionRefused as error:
        raise refused(error) from None
    except MedplumError:
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None
