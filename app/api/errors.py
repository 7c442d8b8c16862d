"""The JSON error envelope every failure of the API uses, and the stable error codes.

``{"error_code": ..., "message": ..., "correlation_id": ..., "details": {...}?}``

Messages are fixed texts per code, never built from input or exception text, so nothing a
caller sent (and no PHI) is echoed back; ``details`` carries only field locations and types.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.observability.correlation import current_correlation_id, new_correlation_id
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Mapping

log = get_logger("app.api.errors")


class ErrorCode(StrEnum):
    """Stable, documented error codes (docs/backend/SECURITY.md lists them)."""

    VALIDATION_ERROR = "validation_error"
    MALFORMED_BODY = "malformed_body"
    UNKNOWN_HANDLER = "unknown_handler"
    WRONG_RESOURCE_TYPE = "wrong_resource_type"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    URI_TOO_LONG = "uri_too_long"
    RATE_LIMITED = "rate_limited"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    INTERNAL_ERROR = "internal_error"
    HTTP_ERROR = "http_error"


SAFE_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.VALIDATION_ERROR: "The request did not pass validation.",
    ErrorCode.MALFORMED_BODY: "The request body is not well-formed.",
    ErrorCode.UNKNOWN_HANDLER: "The request names no subscribed handler.",
    ErrorCode.WRONG_RESOURCE_TYPE: "The resource type is not the one this handler watches.",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "The request body has an unsupported content type.",
    ErrorCode.NOT_FOUND: "No such resource.",
    ErrorCode.METHOD_NOT_ALLOWED: "This method is not allowed on this resource.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request body is too large.",
    ErrorCode.REQUEST_TIMEOUT: "The request body did not arrive in time.",
    ErrorCode.HEADERS_TOO_LARGE: "The request headers are too large or too many.",
    ErrorCode.URI_TOO_LONG: "The request line is too long.",
    ErrorCode.RATE_LIMITED: "Too many requests; retry later.",
    ErrorCode.SIGNATURE_MISSING: "The request is not signed.",
    ErrorCode.SIGNATURE_INVALID: "The request signature does not match.",
    ErrorCode.UNAUTHENTICATED: "Authentication is required.",
    ErrorCode.FORBIDDEN: "Not allowed.",
    ErrorCode.CONFLICT: "The request conflicts with the current state.",
    ErrorCode.DEPENDENCY_UNAVAILABLE: "A dependency is unavailable; retry later.",
    ErrorCode.INTERNAL_ERROR: "An internal error occurred.",
    ErrorCode.HTTP_ERROR: "The request could not be handled.",
}


class ErrorEnvelope(BaseModel):
    error_code: str = Field(description="Stable machine-readable code.", examples=["not_found"])
    message: str = Field(description="Safe, human-readable explanation.")
    correlation_id: str = Field(description="Request id; also in the X-Request-ID header.")
    details: dict[str, object] | None = Field(
        default=None, description="Optional non-sensitive diagnostics."
    )


class ApiError(Exception):
    """A failure with its status code and stable error code (business errors raise these)."""

    def __init__(
        self,
        status_code: int,
        error_code: ErrorCode,
        *,
        details: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error_code.value)
        self.status_code = status_code
        self.error_code = error_code
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else None


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in (
        (400, "Malformed request"),
        (401, "Unauthenticated or bad signature"),
        (408, "The body did not arrive in time"),
        (413, "Body too large"),
        (415, "Unsupported media type"),
        (422, "Validation error"),
        (429, "Rate limited"),
        (500, "Internal error"),
        (503, "A dependency is unavailable"),
    )
}


def error_response(
    status_code: int,
    code: ErrorCode,
    *,
    details: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    correlation_id = current_correlation_id() or new_correlation_id()
    envelope = ErrorEnvelope(
        error_code=code.value,
        message=SAFE_MESSAGES[code],
        correlation_id=correlation_id,
        details=dict(details) if details else None,
    )
    response_headers = {"X-Request-ID": correlation_id, **(headers or {})}
    return JSONResponse(
        envelope.model_dump(exclude_none=True), status_code=status_code, headers=response_headers
    )


_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.MALFORMED_BODY,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    414: ErrorCode.URI_TOO_LONG,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    431: ErrorCode.HEADERS_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.DEPENDENCY_UNAVAILABLE,
}


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.error_code, details=exc.details, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, ErrorCode.HTTP_ERROR)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Field locations and error types only: the rejected input values are never echoed.
    problems = [
        {"loc": [str(part) for part in error.get("loc", ())], "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    return error_response(422, ErrorCode.VALIDATION_ERROR, details={"errors": problems})


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_exception", exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL_ERROR)


# nginx's code for "the client closed the request": nobody receives the answer; it only marks
# the request line in the log as the client's doing rather than a server failure.
CLIENT_CLOSED_REQUEST = 499


async def _client_disconnect(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientDisconnect)
    log.info("client_disconnected")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
