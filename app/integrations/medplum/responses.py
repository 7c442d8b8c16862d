"""Reading Medplum's HTTP answers: status -> typed error, rate-limit reset, ETag -> version."""

from __future__ import annotations

import re
from collections.abc import Mapping

import httpx

from app.domain.fhir_json import (
    get_number,
    get_objects,
    get_str,
    loads_object,
)
from app.integrations.medplum.errors import (
    MedplumBadRequest,
    MedplumConflict,
    MedplumError,
    MedplumForbidden,
    MedplumNotFound,
    MedplumPreconditionFailed,
    MedplumRateLimited,
    MedplumUnavailable,
    OperationOutcomeSummary,
)

# Medplum's core attaches the reset delay to the throttled OperationOutcome as well.
RATE_LIMIT_RESET_EXTENSION = "https://medplum.com/fhir/StructureDefinition/rate-limit-reset"

_RESET = re.compile(r"(?:^|;)\s*(?:t|reset)\s*=\s*\"?(\d+(?:\.\d+)?)")
_REMAINING = re.compile(r"(?:^|;)\s*(?:r|remaining)\s*=\s*\"?(\d+)")
_ETAG = re.compile(r'^(?:W/)?"?([^"]*)"?$')
# Not-implemented and version-not-supported will not get better on a retry.
_PERMANENT_5XX = frozenset({501, 505})


def parse_rate_limit_reset(headers: httpx.Headers) -> float | None:
    """Seconds until the quota resets, from ``RateLimit: "requests";r=0;t=12``.

    Several policies may be listed (``"requests";...,"fhirInteractions";...``): the longest
    reset among the exhausted ones (``r=0``) wins, else the longest reset overall. Medplum sends
    no ``Retry-After``; it is honoured as a fallback for proxies in front of Medplum.
    """
    value = headers.get("ratelimit")
    if value:
        exhausted: list[float] = []
        resets: list[float] = []
        for item in value.split(","):
            reset = _RESET.search(item.strip())
            if reset is None:
                continue
            seconds = float(reset.group(1))
            resets.append(seconds)
            remaining = _REMAINING.search(item.strip())
            if remaining is not None and int(remaining.group(1)) == 0:
                exhausted.append(seconds)
        if exhausted:
            return max(exhausted)
        if resets:
            return max(resets)
    for name in ("ratelimit-reset", "retry-after"):
        legacy = headers.get(name)
        if legacy and legacy.strip().replace(".", "", 1).isdigit():
            return float(legacy.strip())
    return None


def _outcome_reset(outcome: Mapping[str, object] | None) -> float | None:
    if outcome is None:
        return None
    for extension in get_objects(outcome, "extension"):
        if get_str(extension, "url") == RATE_LIMIT_RESET_EXTENSION:
            return get_number(extension, "valueUnsignedInt")
    return None


def version_from_etag(etag: str | None) -> str | None:
    """``W/"3"`` -> ``3``."""
    if not etag:
        return None
    match = _ETAG.match(etag.strip())
    return (match.group(1) or None) if match else None


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300


def error_for_response(
    response: httpx.Response,
    *,
    operation: str,
    resource_type: str | None,
    attempts: int,
    guarded_patch: bool = False,
) -> MedplumError:
    """The typed error for a non-2xx answer. Only the OperationOutcome summary is kept."""
    parsed = loads_object(response.content)
    outcome = OperationOutcomeSummary.from_json(parsed) if parsed is not None else None
    retry_after = parse_rate_limit_reset(response.headers)
    if retry_after is None and response.status_code == 429:
        retry_after = _outcome_reset(parsed)
    return error_for_status(
        response.status_code,
        outcome=outcome,
        operation=operation,
        resource_type=resource_type,
        attempts=attempts,
        retry_after=retry_after,
        guarded_patch=guarded_patch,
    )


def error_for_status(
    status: int,
    *,
    outcome: OperationOutcomeSummary | None,
    operation: str,
    resource_type: str | None,
    attempts: int,
    retry_after: float | None = None,
    guarded_patch: bool = False,
) -> MedplumError:
    """Status code (of a response or of a bundle entry) -> typed error."""

    def build(kind: type[MedplumError], message: str) -> MedplumError:
        return kind(
            message,
            status_code=status,
            operation_outcome=outcome,
            operation=operation,
            resource_type=resource_type,
            attempts=attempts,
            retry_after=retry_after,
        )

    if status == 429:
        return build(MedplumRateLimited, "Medplum rate limit reached")
    if status >= 500 and status not in _PERMANENT_5XX:
        return build(MedplumUnavailable, "Medplum server error")
    if status in (401, 403):
        return build(MedplumForbidden, "Medplum refused the credentials or the access")
    if status in (404, 410):
        return build(MedplumNotFound, "Medplum resource not found")
    if status == 409:
        return build(MedplumConflict, "Medplum reported a conflicting write")
    if status == 412:
        return build(MedplumPreconditionFailed, "Medplum precondition failed")
    if guarded_patch and status in (400, 422) and _failed_patch_test(outcome):
        # A failed JSON Patch ``test`` op is a 400 "Test failed: a != b" in Medplum: for the
        # version guard it means exactly what a 412 means for If-Match.
        return build(MedplumPreconditionFailed, "Medplum version guard failed")
    if 400 <= status < 500:
        return build(MedplumBadRequest, "Medplum rejected the request")
    return build(MedplumError, "unexpected Medplum response")


def _failed_patch_test(outcome: OperationOutcomeSummary | None) -> bool:
    if outcome is None:
        return False
    return any(text.startswith("Test failed") for text in outcome.diagnostics)
