"""The receiver's signature check as a FastAPI dependency: a route that takes a
:data:`SignedBody` runs only for a JSON body signed by the Subscription of the handler that
``X-Starvit-Bot`` names.

Order of checks, cheapest first, so that a client that keeps failing costs next to nothing:

1. content type (415);
2. the failed-signature limit (429), from this process's copy of the shared counter, before
   the body is read or an HMAC computed (app/api/ratelimit.py);
3. the handler named in ``X-Starvit-Bot`` (400 ``unknown_handler``): its name selects the
   secrets the signature is checked with;
4. the signature (401), under that handler's derived secrets (app/events/signature.py), over
   the raw body read within the body deadline.

Failures at 3 and 4 are counted against the client (429 once over the limit) and, PHI-free, in
the refused-delivery counts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.api.deps import RuntimeDep
from app.api.errors import ApiError, ErrorCode
from app.api.ratelimit import FailureLimiter, Network, client_address
from app.events.keys import NotificationRejected, subscribed_handler
from app.events.rejections import Reason, RejectionCounter
from app.events.signature import handler_signature_matches

_JSON_TYPES = ("application/fhir+json", "application/json")

SIGNATURE_SCHEME = APIKeyHeader(
    name="X-Signature",
    scheme_name="MedplumSignature",
    description=(
        "HMAC-SHA256 of the exact request body, lowercase hex, under the signing secret of the "
        "Subscription of the handler named in X-Starvit-Bot (Medplum's rest-hook signature)."
    ),
    auto_error=False,
)


def limiter_of(request: Request) -> FailureLimiter:
    limiter = getattr(request.app.state, "signature_limiter", None)
    if not isinstance(limiter, FailureLimiter):
        raise RuntimeError("the application has no failed-signature limiter")
    return limiter


def rejections_of(request: Request) -> RejectionCounter:
    counter = getattr(request.app.state, "rejections", None)
    if not isinstance(counter, RejectionCounter):
        raise RuntimeError("the application has no refused-delivery counter")
    return counter


def client_of(request: Request) -> str:
    trusted: tuple[Network, ...] = getattr(request.app.state, "trusted_proxies", ())
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.get("x-forwarded-for"), trusted)


def count_rejection(request: Request, reason: Reason, handler: str | None = None) -> None:
    rejections_of(request).count(reason, handler)


async def _failure(
    request: Request,
    client: str,
    error: ApiError,
    reason: Reason,
    handler: str | None,
) -> ApiError:
    wait = await limiter_of(request).record_failure(client)
    if wait is not None:
        count_rejection(request, "rate_limited", handler)
        return ApiError(429, ErrorCode.RATE_LIMITED, headers={"Retry-After": str(wait)})
    count_rejection(request, reason, handler)
    return error


async def signed_body(
    request: Request,
    runtime: RuntimeDep,
    x_signature: Annotated[str | None, Security(SIGNATURE_SCHEME)] = None,
) -> bytes:
    """The raw body, once its ``X-Signature`` verifies under the named handler's secrets."""
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    client = client_of(request)
    wait = limiter_of(request).blocked(client)
    if wait is not None:
        count_rejection(request, "rate_limited")
        raise ApiError(429, ErrorCode.RATE_LIMITED, headers={"Retry-After": str(wait)})
    try:
        handler = subscribed_handler(request.headers, runtime.require_registry()).name
    except NotificationRejected as rejected:
        raise await _failure(
            request,
            client,
            ApiError(
                400,
                ErrorCode.UNKNOWN_HANDLER,
                details={"field": rejected.field, "problem": rejected.problem},
            ),
            "unknown_handler",
            None,
        ) from None
    if not x_signature:
        raise await _failure(
            request, client, ApiError(401, ErrorCode.SIGNATURE_MISSING), "bad_signature", handler
        )
    body = await request.body()
    if not handler_signature_matches(
        body, x_signature, runtime.settings.webhook_secret_values, handler
    ):
        raise await _failure(
            request, client, ApiError(401, ErrorCode.SIGNATURE_INVALID), "bad_signature", handler
        )
    return body


SignedBody = Annotated[bytes, Depends(signed_body)]
