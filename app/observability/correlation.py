"""The correlation id of the work in progress (an HTTP request or a job).

It is taken from ``X-Request-ID``, else from the W3C ``traceparent`` trace id, else from
Medplum's ``x-trace-id`` (so a notification can be tied to the write that caused it), else
generated. Only a conservative character set is accepted: the id ends up in logs and headers.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

# A correlation or trace id travels into logs, headers and job arguments: only this token does.
SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def correlation_id_from_headers(
    request_id: str | None, traceparent: str | None, medplum_trace_id: str | None
) -> str:
    if request_id and SAFE_ID.match(request_id):
        return request_id
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    if medplum_trace_id and SAFE_ID.match(medplum_trace_id):
        return medplum_trace_id
    return new_correlation_id()


def current_correlation_id() -> str | None:
    return correlation_id_var.get()
