"""Posting bundles through the service's partner API (``POST /v1/bundles``) instead of straight to
Medplum: what ``make demo`` does, so the Synthea patients enter Medplum the way every partner's
data must (authenticated, authorised, validated, limited, audited).

:class:`PartnerApiWriter` offers the two calls the Synthea loader writes with (``transaction``
and ``batch``), answering Medplum's shapes: a :class:`BundleResponse` per request, and Medplum's
error types for refusals (so the loader's handling of a refused entry, such as dropping a
declared profile an entry does not satisfy, works the same). Each request's ``Idempotency-Key``
is the SHA-256 of its body: a load that is run again after a crash replays what the service
already did instead of writing twice. A 429 or a 503 is waited out as ``Retry-After`` says.

The HTTP goes through the standard library (in a worker thread): the development tools leave
``httpx`` to the Medplum client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from app.fhir.resource_json import JSONObject, dumps
from app.integrations.medplum import (
    BundleEntryResult,
    MedplumBadRequest,
    MedplumClient,
    MedplumError,
    MedplumForbidden,
    MedplumUnavailable,
    OperationOutcomeSummary,
    OutcomeIssue,
)
from app.integrations.medplum.results import BundleResponse

type Progress = Callable[[str], None]
type Sleep = Callable[[float], Awaitable[None]]

DEFAULT_RETRIES = 8


@dataclass
class PartnerApiWriter:
    """Writes as the partner whose Medplum client is ``partner`` (its token is presented to the
    service) through the service at ``service_url``."""

    service_url: str
    partner: MedplumClient
    progress: Progress
    sleep: Sleep = asyncio.sleep
    retries: int = DEFAULT_RETRIES
    requests: int = 0
    waits: int = 0

    async def transaction(self, entries: Sequence[Mapping[str, object]]) -> BundleResponse:
        return await self._post("transaction", entries)

    async def batch(self, entries: Sequence[Mapping[str, object]]) -> BundleResponse:
        return await self._post("batch", entries)

    async def _post(
        self, bundle_type: str, entries: Sequence[Mapping[str, object]]
    ) -> BundleResponse:
        body = dumps({"resourceType": "Bundle", "type": bundle_type, "entry": list(entries)})
        key = hashlib.sha256(body).hexdigest()
        attempt = 0
        while True:
            attempt += 1
            token = await self.partner.token_source.get_token()
            self.requests += 1
            status, headers, answer = await asyncio.to_thread(self._send, body, key, token)
            if status == 200:
                return _response(bundle_type, answer)
            wait = _retry_after(headers)
            if status in (409, 429, 503) and attempt <= self.retries:
                self.waits += 1
                code = answer.get("error_code", status)
                self.progress(
                    f"  the partner API answered {status} ({code}): retrying in {wait:.0f} s"
                )
                await self.sleep(wait)
                continue
            raise _error(status, answer)

    def _send(self, body: bytes, key: str, token: str) -> tuple[int, dict[str, str], JSONObject]:
        request = urllib.request.Request(  # noqa: S310 - the service's own URL
            self.service_url.rstrip("/") + "/v1/bundles",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/fhir+json",
                "Idempotency-Key": key,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:  # noqa: S310
                return answer.status, dict(answer.headers), _json(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), _json(error.read())
        except OSError:
            return 503, {"Retry-After": "5"}, {"error_code": "service_unreachable"}


def _json(data: bytes) -> JSONObject:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return cast("JSONObject", value) if isinstance(value, dict) else {}


def _retry_after(headers: Mapping[str, str]) -> float:
    for name, value in headers.items():
        if name.lower() == "retry-after" and value.strip().isdigit():
            return float(value.strip()) + 0.5
    return 5.0


def _response(bundle_type: str, answer: JSONObject) -> BundleResponse:
    results: list[BundleEntryResult] = []
    raw = answer.get("entries")
    for position, item in enumerate(raw if isinstance(raw, list) else []):
        entry = cast("JSONObject", item) if isinstance(item, dict) else {}
        status = entry.get("status")
        code = status if isinstance(status, int) else 500
        reference = entry.get("reference")
        issue_code = entry.get("error_code")
        path = entry.get("path")
        outcome = (
            OperationOutcomeSummary(
                None,
                (
                    OutcomeIssue(
                        "error",
                        str(issue_code).removeprefix("medplum_"),
                        None,
                        (str(path),) if isinstance(path, str) else (),
                    ),
                ),
            )
            if isinstance(issue_code, str)
            else None
        )
        results.append(
            BundleEntryResult(
                index=position,
                status=str(code),
                status_code=code,
                location=reference if isinstance(reference, str) else None,
                etag=None,
                version_id=None,
                last_modified=None,
                resource=None,
                outcome=outcome,
            )
        )
    return BundleResponse(bundle_type=f"{bundle_type}-response", entries=tuple(results))


def _error(status: int, answer: JSONObject) -> MedplumError:
    """The service's refusal as the Medplum error the loader knows how to handle: the entries'
    paths become the OperationOutcome's expressions."""
    code = str(answer.get("error_code", "error"))
    details = answer.get("details")
    issues: list[OutcomeIssue] = []
    if isinstance(details, dict):
        listed = details.get("entries")
        for item in listed if isinstance(listed, list) else []:
            if isinstance(item, dict):
                path = item.get("path")
                issues.append(
                    OutcomeIssue(
                        "error",
                        str(item.get("code", "invalid")),
                        f"entry {item.get('index')}",
                        (str(path),) if isinstance(path, str) else (),
                    )
                )
    outcome = OperationOutcomeSummary(None, tuple(issues))
    message = f"the partner API answered {status} {code}"
    if status in (400, 413, 415, 422):
        return MedplumBadRequest(
            message, status_code=status, operation_outcome=outcome, operation="bundle"
        )
    if status in (401, 403):
        return MedplumForbidden(
            message, status_code=status, operation_outcome=outcome, operation="bundle"
        )
    if status in (429, 502, 503):
        return MedplumUnavailable(message, status_code=status, operation="bundle")
    return MedplumError(message, status_code=status, operation_outcome=outcome, operation="bundle")
