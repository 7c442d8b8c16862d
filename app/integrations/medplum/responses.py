"""Reading Medplum's HTTP answers: status -> typed error, rate-limit reset, ETag -> version."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx

from app.fhir.resource_json import (
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

_POLICY = re.compile(r'^\s*"([^"]+)"')
_RESET = re.compile(r"(?:^|;)\s*(?:t|reset)\s*=\s*\"?(\d+(?:\.\d+)?)")
_REMAINING = re.compile(r"(?:^|;)\s*(?:r|remaining)\s*=\s*\"?(\d+)")
_ETAG = re.compile(r'^(?:W/)?"?([^"]*)"?$')
# Not-implemented and version-not-supported will not get better on a retry.
_PERMANENT_5XX = frozenset({501, 505})


def parse_rate_limit_reset(headers: httpx.Headers, *, throttled: bool = False) -> float | None:
    """Seconds to wait before the next request, from Medplum's ``RateLimit`` header, or None.

    Medplum sends ``RateLimit`` on every FHIR response, one item per policy
    (``"requests";r=59290;t=25, "fhirInteractions";r=4766444;t=25``): ``r`` is what is left
    and ``t`` the seconds until the policy's window resets, which is *not* a wait. Only an
    exhausted policy (``r=0``) means wait, until its reset (the longest, if several are
    exhausted). On a 429 (``throttled``) with no exhausted policy listed, the longest reset is
    the wait. Medplum sends no ``Retry-After``; it is honoured as a fallback for proxies.
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
        if not exhausted and ";" not in value:
            # The older draft's form, one policy spread over items: "limit=100, remaining=0,
            # reset=4".
            remaining = _REMAINING.search(value.replace(",", ";"))
            if remaining is not None and int(remaining.group(1)) == 0 and resets:
                exhausted = resets
        if exhausted:
            return max(exhausted)
        if throttled and resets:
            return max(resets)
    if not throttled:
        return None
    for name in ("ratelimit-reset", "retry-after"):
        legacy = headers.get(name)
        if legacy and legacy.strip().replace(".", "", 1).isdigit():
            return float(legacy.strip())
    return None


class RateLimitPolicy(NamedTuple):
    """One policy of a ``RateLimit`` header: what is left, and seconds until its window resets
    (at the time of the response)."""

    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """The ``RateLimit`` policies of one response (``"requests"``, ``"fhirInteractions"``),
    and when it arrived (``observed_at``, on the client's monotonic clock), so that a caller
    can tell how much of ``reset_seconds`` has passed since."""

    policies: Mapping[str, RateLimitPolicy] = field(default_factory=dict[str, RateLimitPolicy])
    observed_at: float = 0.0

    def policy(self, name: str) -> RateLimitPolicy | None:
        return self.policies.get(name)

    def updated_by(self, newer: RateLimitStatus) -> RateLimitStatus:
        """``newer``, plus the policies it does not list as known here, their resets counted
        down to ``newer``'s time (dropped once reset). Medplum lists ``"fhirInteractions"``
        only on answers that used points: a free request must not erase what is left."""
        elapsed = newer.observed_at - self.observed_at
        kept = {
            name: RateLimitPolicy(policy.remaining, policy.reset_seconds - elapsed)
            for name, policy in self.policies.items()
            if name not in newer.policies and policy.reset_seconds - elapsed > 0
        }
        return RateLimitStatus(policies={**kept, **newer.policies}, observed_at=newer.observed_at)


def parse_rate_limit(headers: httpx.Headers, *, observed_at: float) -> RateLimitStatus | None:
    """The named policies of Medplum's ``RateLimit`` header (``"fhirInteractions";r=4766;t=25``,
    one item or header line per policy), or None when the response has none."""
    value = headers.get("ratelimit")
    if not value:
        return None
    policies: dict[str, RateLimitPolicy] = {}
    for item in value.split(","):
        name = _POLICY.match(item)
        remaining = _REMAINING.search(item.strip())
        reset = _RESET.search(item.strip())
        if name is None or remaining is None or reset is None:
            continue
        policies[name.group(1)] = RateLimitPolicy(int(remaining.group(1)), float(reset.group(1)))
    if not policies:
        return None
    return RateLimitStatus(policies=policies, observed_at=observed_at)


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
    throttled = response.status_code == 429
    retry_after = parse_rate_limit_reset(response.headers, throttled=throttled)
    if retry_after is None and throttled:
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
