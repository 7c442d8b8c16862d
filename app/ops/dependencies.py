"""The ops dashboard's FastAPI dependencies: its service and sign-in, made once per process from
the runtime (and closed with it), and the ops identity every route requires."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.deps import runtime_of
from app.api.errors import ApiError, ErrorCode
from app.ops.auth import (
    SESSION_COOKIE,
    OpsAuth,
    OpsSession,
    SignInRefused,
    csrf_matches,
    same_origin,
)
from app.ops.service import OpsService


def ops_service(request: Request) -> OpsService:
    state = request.app.state
    service = getattr(state, "ops_service", None)
    if isinstance(service, OpsService):
        return service
    runtime = runtime_of(request)
    if runtime.intake is None or runtime.registry is None:
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE, details={"reason": "no_database"})
    service = OpsService(
        runtime.settings, runtime.intake.pool, runtime.intake.queue, runtime.registry
    )
    runtime.dependencies.append(service)
    state.ops_service = service
    return service


def ops_auth(request: Request) -> OpsAuth:
    state = request.app.state
    auth = getattr(state, "ops_auth", None)
    if isinstance(auth, OpsAuth):
        return auth
    runtime = runtime_of(request)
    secret = runtime.settings.ops_session_secret
    auth = OpsAuth(
        runtime.settings,
        secret.get_secret_value() if secret is not None else None,
        runtime.access_tokens(),
    )
    runtime.dependencies.append(auth)
    state.ops_auth = auth
    return auth


OpsServiceDep = Annotated[OpsService, Depends(ops_service)]
OpsAuthDep = Annotated[OpsAuth, Depends(ops_auth)]


def request_base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def current_session(request: Request, auth: OpsAuth) -> OpsSession | None:
    """The caller's ops identity: a bearer token, or the session cookie. Raises SignInRefused
    for a token that is not an ops user's."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or len(token) > 8192:
            raise SignInRefused("not_signed_in", 401)
        return await auth.bearer(token.strip())
    return auth.load_session(request.cookies.get(SESSION_COOKIE))


async def require_ops(request: Request, auth: OpsAuthDep) -> OpsSession:
    """For the JSON API: 401 without an identity, 403 when it is not an ops user's."""
    try:
        session = await current_session(request, auth)
    except SignInRefused as refused:
        if refused.status_code == 403:
            raise ApiError(403, ErrorCode.FORBIDDEN, details={"reason": "not_ops"}) from None
        if refused.status_code == 503:
            raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from None
        raise ApiError(
            401,
            ErrorCode.UNAUTHENTICATED,
            details={"reason": refused.reason},
            headers={"WWW-Authenticate": "Bearer"},
        ) from None
    if session is None:
        raise ApiError(
            401,
            ErrorCode.UNAUTHENTICATED,
            details={"reason": "not_signed_in"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    return session


OpsSessionDep = Annotated[OpsSession, Depends(require_ops)]


async def require_ops_action(request: Request, session: OpsSessionDep) -> OpsSession:
    """An action through the JSON API: with a session cookie, the CSRF token in
    ``X-CSRF-Token`` and no foreign Origin."""
    if session.via == "cookie" and (
        not same_origin(request.headers.get("origin"), request_base(request))
        or not csrf_matches(session, request.headers.get("x-csrf-token"))
    ):
        raise ApiError(403, ErrorCode.FORBIDDEN, details={"reason": "csrf"})
    return session


OpsActionDep = Annotated[OpsSession, Depends(require_ops_action)]
