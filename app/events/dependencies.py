"""The receiver's signature check as a FastAPI dependency: a route that takes a
:data:`SignedBody` runs only for a JSON body signed with one of the active secrets.

Order of checks: content type (415), then the signature (401; 429 for a client that keeps
failing, so a guessing client cannot use the receiver as an HMAC oracle at full speed).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.deps import RuntimeDep
from app.api.errors import ApiError, ErrorCode
from app.api.ratelimit import FailureLimiter
from app.events.signature import signature_matches

_JSON_TYPES = ("application/fhir+json", "application/json")


def _limiter(request: Request, limit_per_minute: int) -> FailureLimiter:
    limiter = getattr(request.app.state, "signature_limiter", None)
    if not isinstance(limiter, FailureLimiter):
        limiter = FailureLimiter(limit_per_minute)
        request.app.state.signature_limiter = limiter
    return limiter


def _signature_failure(request: Request, runtime: RuntimeDep, code: ErrorCode) -> ApiError:
    client = request.client.host if request.client else "unknown"
    limiter = _limiter(request, runtime.settings.bad_signature_limit_per_minute)
    if limiter.record_failure(client):
        return ApiError(
            429, ErrorCode.RATE_LIMITED, headers={"Retry-After": str(limiter.retry_after(client))}
        )
    return ApiError(401, code)


async def signed_body(
    request: Request,
    runtime: RuntimeDep,
    x_signature: Annotated[
        str | None, Header(description="HMAC-SHA256 of the body, lowercase hex")
    ] = None,
) -> bytes:
    """The raw body, once its ``X-Signature`` verifies under an active secret."""
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    body = await request.body()
    if not x_signature:
        raise _signature_failure(request, runtime, ErrorCode.SIGNATURE_MISSING)
    if not signature_matches(body, x_signature, runtime.settings.webhook_secret_values):
        raise _signature_failure(request, runtime, ErrorCode.SIGNATURE_INVALID)
    return body


SignedBody = Annotated[bytes, Depends(signed_body)]
