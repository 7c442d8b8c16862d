"""Typed failures of Medplum calls.

PHI rule: an exception may travel into logs, job records and error envelopes, so it carries
the HTTP status, the operation, the resource type and an OperationOutcome *summary* (severity,
issue code, sanitised diagnostics, FHIRPath expressions) - never a resource body, a search
query, a URL with its query string, a token or a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from app.fhir.resource_json import (
    get_array,
    get_object,
    get_objects,
    get_str,
)

_MAX_TEXT = 200
# Diagnostics sometimes quote the offending input ('Invalid date "1970-01-01"'); quoted
# literals and date-like tokens are cut out so no patient value survives into the summary.
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`|“[^”]*”")
_DATE_LIKE = re.compile(r"\b\d{4}-\d{2}(-\d{2}([T ][0-9:.+\-Z]*)?)?\b")
_LONG_DIGITS = re.compile(r"\d{6,}")


def sanitise_diagnostics(text: str) -> str:
    """Keep the server's explanation, drop literal values it may quote."""
    cleaned = _QUOTED.sub("[redacted]", text)
    cleaned = _DATE_LIKE.sub("[redacted]", cleaned)
    cleaned = _LONG_DIGITS.sub("[redacted]", cleaned)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= _MAX_TEXT else cleaned[: _MAX_TEXT - 1] + "…"


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str | None
    code: str | None
    diagnostics: str | None
    expression: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OperationOutcomeSummary:
    """What an OperationOutcome says, without anything that could quote a resource."""

    outcome_id: str | None
    issues: tuple[OutcomeIssue, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(issue.code for issue in self.issues if issue.code)

    @property
    def diagnostics(self) -> tuple[str, ...]:
        return tuple(issue.diagnostics for issue in self.issues if issue.diagnostics)

    @classmethod
    def from_json(cls, outcome: Mapping[str, object]) -> OperationOutcomeSummary | None:
        if get_str(outcome, "resourceType") != "OperationOutcome":
            return None
        issues: list[OutcomeIssue] = []
        for issue in get_objects(outcome, "issue")[:10]:
            details = get_object(issue, "details")
            text = get_str(details, "text") if details is not None else None
            diagnostics = get_str(issue, "diagnostics") or text
            expression = tuple(
                item[:_MAX_TEXT]
                for item in get_array(issue, "expression")[:5]
                if isinstance(item, str)
            )
            issues.append(
                OutcomeIssue(
                    severity=get_str(issue, "severity"),
                    code=get_str(issue, "code"),
                    diagnostics=sanitise_diagnostics(diagnostics) if diagnostics else None,
                    expression=expression,
                )
            )
        outcome_id = get_str(outcome, "id")
        return cls(outcome_id=outcome_id[:64] if outcome_id else None, issues=tuple(issues))


class MedplumError(Exception):
    """A Medplum call failed. ``str()`` names the operation, type, status and issue codes only."""

    error_code: ClassVar[str] = "medplum_error"
    # Whether the same request may succeed later (the job queue decides whether to retry).
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        operation_outcome: OperationOutcomeSummary | None = None,
        operation: str | None = None,
        resource_type: str | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
        cause: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.operation_outcome = operation_outcome
        self.operation = operation
        self.resource_type = resource_type
        # A 412 after more than one attempt may be the echo of our own earlier, lost success.
        self.attempts = attempts
        self.retry_after = retry_after
        # The class name of the transport error behind it (``ReadTimeout``), never its text.
        self.cause = cause
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        where = " ".join(part for part in (self.operation, self.resource_type) if part)
        if where:
            parts.append(f"[{where}]")
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.operation_outcome is not None and self.operation_outcome.codes:
            parts.append("issues=" + ",".join(self.operation_outcome.codes))
        if self.cause:
            parts.append(f"cause={self.cause}")
        if self.attempts > 1:
            parts.append(f"attempts={self.attempts}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._render()!r})"


class MedplumUnavailable(MedplumError):
    """Network failure, timeout or 5xx, after the retries allowed for the operation."""

    error_code = "medplum_unavailable"
    retryable = True


class MedplumRateLimited(MedplumError):
    """429 after retries; ``retry_after`` is the ``t=`` of Medplum's ``RateLimit`` header."""

    error_code = "medplum_rate_limited"
    retryable = True


class MedplumConflict(MedplumError):
    """409: a concurrent write (Medplum says: retry)."""

    error_code = "medplum_conflict"
    retryable = True


class MedplumPreconditionFailed(MedplumError):
    """412: ``If-Match`` version mismatch, a failed JSON Patch version test, or a conditional
    create matching several resources."""

    error_code = "medplum_precondition_failed"


class MedplumNotFound(MedplumError):
    """404, or 410 for a deleted resource (``gone``)."""

    error_code = "medplum_not_found"

    @property
    def gone(self) -> bool:
        return self.status_code == 410


class MedplumBadRequest(MedplumError):
    """400/422 (invalid resource or search), and other client errors."""

    error_code = "medplum_bad_request"


class MedplumRequestTooLarge(MedplumBadRequest):
    """The JSON body exceeds Medplum's 1 MB limit; refused before sending."""

    error_code = "medplum_request_too_large"


class MedplumForbidden(MedplumError):
    """401/403: bad client credentials, an expired token that could not be renewed, or an
    AccessPolicy refusal."""

    error_code = "medplum_forbidden"


class MedplumSignInRefused(MedplumForbidden):
    """Medplum refused a user's sign-in: wrong email or password, an unknown user, a profile
    that cannot be chosen, a second factor required, or a refused authorization code or refresh
    token. The message carries Medplum's reason (its fixed texts), never the credentials."""

    error_code = "medplum_sign_in_refused"


class OutboundHostNotAllowed(MedplumError):
    """A request to a host:port outside the allowlist; raised before any connection."""

    error_code = "outbound_host_not_allowed"
