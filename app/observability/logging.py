"""Structured JSON logging (structlog), one event per line, with PHI kept out.

PHI must never reach a log line. Two guards:

* keys that carry PHI or whole payloads are redacted wherever they appear in an event,
  nested or not (``name``, ``birthDate``, ``address``, ``text``, ``note`` ...);
* request and response bodies are refused outright: an event carrying ``body``, ``payload``,
  ``resource`` or similar keys is logged with those keys replaced, and a ``phi_guard`` marker
  so the offending call site is easy to find.

The standard library's loggers (uvicorn, gunicorn, procrastinate, httpx) are routed through the
same processors.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from app.observability.correlation import correlation_id_var

REDACTED = "[REDACTED]"

# Keys that carry identifying data in FHIR resources or in free text (lower-cased).
PHI_KEYS = frozenset(
    {
        "name",
        "given",
        "family",
        "birthdate",
        "birth_date",
        "dob",
        "address",
        "line",
        "city",
        "postalcode",
        "postal_code",
        "telecom",
        "phone",
        "email",
        "text",
        "note",
        "notes",
        "comment",
        "description",
        "narrative",
        "div",
        "ssn",
        "mrn",
        "identifier",
        "value",
        "patient_name",
        "authorization",
        "client_secret",
        "secret",
        "password",
        "token",
        "access_token",
    }
)
# Keys that would carry whole request/response bodies: never logged.
BODY_KEYS = frozenset(
    {"body", "payload", "resource", "content", "request_body", "response_body", "raw", "data"}
)
_MAX_DEPTH = 6


def _scrub(value: object, depth: int) -> object:
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        mapping = cast("Mapping[object, object]", value)
        return {
            str(k): (
                REDACTED
                if str(k).lower() in PHI_KEYS or str(k).lower() in BODY_KEYS
                else _scrub(v, depth + 1)
            )
            for k, v in mapping.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = cast("Iterable[object]", value)
        return [_scrub(item, depth + 1) for item in items]
    if isinstance(value, bytes | bytearray | memoryview):
        return REDACTED
    return value


def scrub_phi(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact PHI-bearing keys and refuse bodies."""
    refused = False
    for key in list(event_dict.keys()):
        lowered = key.lower()
        if lowered in ("event", "level", "timestamp", "logger", "correlation_id"):
            continue
        if lowered in BODY_KEYS:
            event_dict[key] = REDACTED
            refused = True
        elif lowered in PHI_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key], 1)
    if refused:
        event_dict["phi_guard"] = "body_refused"
    return event_dict


def add_correlation_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    correlation_id = correlation_id_var.get()
    if correlation_id is not None:
        event_dict.setdefault("correlation_id", correlation_id)
    return event_dict


def _drop_exception_text(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # Exception messages may quote input (a database error citing a value, an HTTP error with
    # a response excerpt): keep the exception type and where it happened, not its message.
    exc_info: object = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        exception: object = None
        if isinstance(exc_info, BaseException):
            exception = exc_info
        elif isinstance(exc_info, tuple) and len(exc_info) == 3:  # pyright: ignore[reportUnknownArgumentType]
            exception = exc_info[1]  # pyright: ignore[reportUnknownVariableType]
        tb: TracebackType | None = None
        if isinstance(exception, BaseException):
            event_dict["exception_type"] = type(exception).__name__
            tb = exception.__traceback__
        frames: list[str] = []
        while tb is not None:
            code = tb.tb_frame.f_code
            frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}")
            tb = tb.tb_next
        if frames:
            event_dict["exception_at"] = frames[-3:]
    return event_dict


def _render_json(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        add_correlation_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _drop_exception_text,
        scrub_phi,
    ]


class _ForeignLogFilter(logging.Filter):
    """Library loggers log their own messages; drop argument values they interpolate (a
    library could format an SQL parameter or URL query into its message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = str(record.msg)
            record.args = None
        return True


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library to write JSON lines to ``stream``."""
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _render_json],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_ForeignLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would print URLs with query strings; the service logs its own request event.
    for name in ("uvicorn.access", "gunicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = False
        logging.getLogger(name).disabled = True
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error", "procrastinate"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in ("httpx", "httpcore", "psycopg", "asyncio"):
        logging.getLogger(name).setLevel(
            max(logging.WARNING, logging.getLevelNamesMapping().get(level, logging.INFO))
        )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
