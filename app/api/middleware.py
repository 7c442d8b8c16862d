"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the receiver's hot path).

* :class:`RequestContextMiddleware` sets the correlation id, returns it as ``X-Request-ID``,
  adds the security headers to every response, puts the id on the current span, logs one
  PHI-free ``request`` event per request (route template, status, duration; never the query
  string or body) and turns an exception escaping the app into the 500 envelope.
* :class:`BodySizeLimitMiddleware` refuses bodies over the limit with 413, by declared
  ``Content-Length`` before reading and by counting while streaming, and a body that has not
  fully arrived within the read deadline with 408 (a body trickled a byte at a time would
  otherwise hold the connection and its task for as long as the sender likes).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from opentelemetry import trace

from app.api.errors import ErrorCode, error_response
from app.observability.correlation import correlation_id_from_headers, correlation_id_var
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = get_logger("app.api.request")


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def security_headers(*, production: bool) -> tuple[tuple[bytes, bytes], ...]:
    """Headers on every response. Every answer is JSON for a machine, so nothing may be
    sniffed, cached, framed, scripted or followed by a referrer; HSTS only in production (a
    development server is plain http)."""
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if production:
        headers.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
    return tuple(headers)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.app = app
        self.extra_headers = extra_headers
        self._extra_names = frozenset(name for name, _ in extra_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = correlation_id_from_headers(
            _header(scope, b"x-request-id"),
            _header(scope, b"traceparent"),
            _header(scope, b"x-trace-id"),
        )
        token = correlation_id_var.set(correlation_id)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("correlation_id", correlation_id)
        started = time.perf_counter()
        status_holder = [500]
        response_started = [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                if b"x-request-id" not in present:
                    headers.append((b"x-request-id", correlation_id.encode()))
                headers.extend(
                    (name, value) for name, value in self.extra_headers if name not in present
                )
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Starlette re-raises after its 500 handler has answered; swallow it here so the
            # server does not print a traceback (which could quote input).
            if not response_started[0]:
                log.error("unhandled_exception", exc_info=exc)
                response = error_response(500, ErrorCode.INTERNAL_ERROR)
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            log.info(
                "request",
                method=scope.get("method"),
                route=getattr(route, "path", None) or "unmatched",
                status=status_holder[0],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            correlation_id_var.reset(token)


class BodyTooLarge(Exception):
    pass


class BodyReadTimeout(Exception):
    pass


class BodySizeLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, read_timeout_seconds: float = 10.0
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_body_bytes
            except ValueError:
                await error_response(400, ErrorCode.MALFORMED_BODY)(scope, receive, send)
                return
            if too_large:
                await error_response(413, ErrorCode.PAYLOAD_TOO_LARGE)(scope, receive, send)
                return
        received = 0
        response_started = False
        body_complete = False
        deadline = asyncio.get_running_loop().time() + self.read_timeout

        async def counted_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:
                # Only http.disconnect is left to wait for (streaming responses listen for
                # it): no deadline on that.
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyReadTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await error_response(413, ErrorCode.PAYLOAD_TOO_LARGE)(scope, receive, send)
        except BodyReadTimeout:
            log.info("body_read_timeout", received_bytes=received)
            if not response_started:
                # The rest of the body may still trickle in: the connection is not reused.
                response = error_response(
                    408, ErrorCode.REQUEST_TIMEOUT, headers={"Connection": "close"}
                )
                await response(scope, receive, send)
