"""The HTTP server's own limits: what reaches the app at all.

Gunicorn's ``--limit-request-line``, ``--limit-request-fields`` and
``--limit-request-field_size`` apply to Gunicorn's own HTTP parser, which the Uvicorn worker
does not use; Uvicorn's httptools parser has no such limits and no deadline for a request head.
:class:`StarvitUvicornWorker` (the ``--worker-class`` in ``GUNICORN_FLAGS``) therefore reads
those Gunicorn settings and enforces them in :class:`GuardedHttpToolsProtocol`:

* the request line (414), the number of header fields and the size of each (431), and the
  whole head's size as it arrives (431: a single header of 50 MB is refused once the head
  passes its cap, not after it has been buffered);
* a deadline for the request head (408, then the connection closes): a connection that
  sends nothing, or a head a byte at a time, is not held open;
* ``--worker-connections`` as Uvicorn's ``limit_concurrency`` (503 beyond it);
* no ``server`` banner.

The body's deadline is the app's (app/api/middleware.py); the idle time between requests on a
kept-alive connection is ``--keep-alive`` (Uvicorn's ``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker  # pyright: ignore[reportMissingTypeStubs]

from app.api.errors import SAFE_MESSAGES, ErrorCode

# Gunicorn's defaults, used when a limit is 0 (Gunicorn's "unlimited" is not offered here).
DEFAULT_REQUEST_LINE = 4094
DEFAULT_FIELDS = 100
DEFAULT_FIELD_SIZE = 8190
# A request head (request line and headers) must be complete this long after the connection
# opens or the previous response ends. Medplum sends its head in one write.
HEAD_TIMEOUT_SECONDS = 10.0

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}
_CODES = {
    408: ErrorCode.REQUEST_TIMEOUT,
    414: ErrorCode.URI_TOO_LONG,
    431: ErrorCode.HEADERS_TOO_LARGE,
}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    request_line: int = DEFAULT_REQUEST_LINE
    fields: int = DEFAULT_FIELDS
    field_size: int = DEFAULT_FIELD_SIZE
    head_timeout: float = HEAD_TIMEOUT_SECONDS

    @property
    def head_bytes(self) -> int:
        """The most a head may take: the request line and every field at its largest."""
        return self.request_line + self.fields * (self.field_size + 4) + 4


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def refusal(status: int) -> bytes:
    """A complete HTTP/1.1 response with the error envelope, closing the connection."""
    code = _CODES[status]
    body = orjson.dumps(
        {
            "error_code": code.value,
            "message": SAFE_MESSAGES[code],
            "correlation_id": uuid.uuid4().hex,
        }
    )
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-content-type-options: nosniff\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
            body,
        )
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with the head limits and deadline of :class:`HeadLimits`."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0

    # --- the head deadline -----------------------------------------------------------------

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408)

    def _refuse(self, status: int) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(refusal(status))
            self.transport.close()

    # --- protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # pyright: ignore[reportIncompatibleMethodOverride]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Uvicorn's own data_received, except that a limit refused in a callback answers with
        # its own status: httptools wraps the callback's exception in HttpParserCallbackError
        # (the original as its __context__), which Uvicorn would answer with a bare 400.
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        parser = self.parser
        if parser is None:  # the connection was lost meanwhile
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            refused = error.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head and self._head_bytes > self.limits.head_bytes:
            self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._fields = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.request_line:
            raise _Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if (
            self._fields > self.limits.fields
            or len(name) > self.limits.field_size
            or len(value) > self.limits.field_size
        ):
            raise _Refused(431)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever arrives next on this connection is the next request's head.
        self._in_head = True


def protocol_with(limits: HeadLimits) -> type[GuardedHttpToolsProtocol]:
    return type("LimitedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def server_config(limits: HeadLimits, worker_connections: int | None = None) -> dict[str, Any]:
    """The Uvicorn ``Config`` keyword arguments of the production server."""
    config: dict[str, Any] = {
        "http": protocol_with(limits),
        "server_header": False,  # no "server: uvicorn" banner
        "date_header": True,
    }
    if worker_connections:
        config["limit_concurrency"] = worker_connections
    return config


def _limit(value: int | None, default: int) -> int:
    return value if value and value > 0 else default


class StarvitUvicornWorker(UvicornWorker):
    """The Uvicorn worker with Gunicorn's request limits enforced and no ``server`` banner."""

    CONFIG_KWARGS = {"loop": "auto", "http": "httptools"}  # noqa: RUF012 - as the base class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = HeadLimits(
            request_line=_limit(self.cfg.limit_request_line, DEFAULT_REQUEST_LINE),
            fields=_limit(self.cfg.limit_request_fields, DEFAULT_FIELDS),
            field_size=_limit(self.cfg.limit_request_field_size, DEFAULT_FIELD_SIZE),
        )
        for name, value in server_config(limits, self.cfg.worker_connections).items():
            setattr(self.config, name, value)
