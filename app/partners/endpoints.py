"""``POST /v1/bundles`` and ``GET /v1/bundles/{bundle_id}``: integration partners post FHIR
bundles through the service (see docs/PARTNERS.md).

Order of checks, cheapest first: the bearer token (401; verified locally against Medplum's key
set, audience = a registered partner's client id), the partner registry (403), the content type
(415), the ``Idempotency-Key`` (400), the partner's rate limit (429 with ``Retry-After``) and
concurrency cap (429), the body read up to the partner's size limit (413), then the service
(:mod:`app.partners.service`). Every answer to an authenticated partner carries the IETF
``RateLimit`` and ``RateLimit-Policy`` headers; every request leaves an audit row, and every
authenticated POST an AuditEvent in Medplum.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import authenticate
from app.api.deps import RuntimeDep
from app.api.errors import ApiError, ErrorEnvelope
from app.observability.correlation import current_correlation_id, new_correlation_id
from app.observability.logging import get_logger
from app.partners.registry import PartnerRegistry, RegistryError
from app.partners.schemas import BundleOutcome
from app.partners.service import (
    PartnerRefusal,
    PartnerService,
    RateStatus,
    RequestFacts,
    build_partner_service,
)
from app.runtime import Runtime

router = APIRouter(prefix="/bundles", tags=["partners"])
log = get_logger("app.partners.endpoints")

BEARER = HTTPBearer(
    scheme_name="MedplumAccessToken",
    description="A Medplum access token of the partner's ClientApplication (client credentials "
    "or a private_key_jwt client assertion); its aud must be a registered partner.",
    auto_error=False,
)
_JSON_TYPES = ("application/fhir+json", "application/json")
# RFC 8941 sf-string or a bare token: the key is opaque to the service, kept for 24 hours.
_KEY = re.compile(r'^"?([A-Za-z0-9._:\-]{1,255})"?$')
RATE_POLICY = "partner"

MESSAGES: dict[str, str] = {
    "partner_not_registered": "This client is not a registered partner.",
    "unsupported_media_type": "Post the bundle as application/fhir+json.",
    "idempotency_key_missing": "The Idempotency-Key header is required.",
    "idempotency_key_invalid": "The Idempotency-Key header is not a valid key.",
    "idempotency_key_reused": "This Idempotency-Key was used for a different request.",
    "idempotency_key_in_use": "A request with this Idempotency-Key is still running.",
    "rate_limited": "Too many requests; retry after the time given.",
    "concurrency_limited": "Too many requests in progress; retry shortly.",
    "payload_too_large": "The bundle is larger than this partner's limit.",
    "malformed_body": "The body is not JSON.",
    "not_a_bundle": "The body is not a FHIR Bundle.",
    "bundle_type_unsupported": "Bundle.type must be batch or transaction.",
    "bundle_empty": "The bundle has no entries.",
    "too_many_entries": "The bundle has more entries than this partner may post at once.",
    "transaction_too_large": "A transaction with creates may hold at most 8 entries; post a "
    "batch to have the service split it.",
    "entry_invalid": "Some entries are not valid; see details.entries.",
    "entry_forbidden": "Some entries are not allowed for this partner; see details.entries.",
    "medplum_rejected": "Medplum refused the bundle; see details.issues.",
    "medplum_forbidden": "Medplum's access policy refused the write.",
    "identifier_ambiguous": "Several resources carry an entry's identifier.",
    "medplum_rate_limited": "Medplum's quota for this partner is spent; retry later.",
    "medplum_unexpected_answer": "Medplum answered unexpectedly.",
    "dependency_unavailable": "A dependency is unavailable; retry later.",
    "not_found": "No such bundle for this partner.",
}

_ERRORS = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in (
        (400, "Idempotency-Key missing or invalid; body not JSON"),
        (401, "No token, or a token that does not verify (details.reason)"),
        (403, "Not a registered partner, or entries it may not write (details.entries)"),
        (404, "No such bundle for this partner"),
        (409, "A request with this Idempotency-Key is still running"),
        (413, "Body over the partner's size limit"),
        (415, "Not application/fhir+json"),
        (
            422,
            "Not a batch/transaction bundle, invalid entries (details.entries: index, fullUrl, "
            "path, code), or the Idempotency-Key reused for another body",
        ),
        (429, "Rate or concurrency limit; Retry-After says when"),
        (502, "Medplum answered unexpectedly"),
        (503, "Medplum or the database unavailable; Retry-After when known"),
    )
}

_BUNDLE_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["resourceType", "type", "entry"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]},
        "type": {"type": "string", "enum": ["batch", "transaction"]},
        "entry": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["resource", "request"],
                "properties": {
                    "fullUrl": {"type": "string"},
                    "resource": {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {"resourceType": {"type": "string"}},
                    },
                    "request": {
                        "type": "object",
                        "required": ["method", "url"],
                        "properties": {
                            "method": {"type": "string", "enum": ["POST", "PUT"]},
                            "url": {"type": "string"},
                            "ifNoneExist": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}

_IDEMPOTENCY_HEADER: dict[str, object] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Unique per request (IETF httpapi Idempotency-Key): the same key and body "
    "replays the stored outcome for 24 hours; another body with the key is 422; the key while "
    "its first request runs is 409.",
    "schema": {"type": "string", "pattern": '^"?[A-Za-z0-9._:\\-]{1,255}"?$'},
}

_RATE_HEADERS: dict[str, object] = {
    "RateLimit": {
        "description": 'IETF RateLimit: "partner";r=<remaining>;t=<seconds to reset>',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "description": 'IETF RateLimit-Policy: "partner";q=<requests>;w=60',
        "schema": {"type": "string"},
    },
}

_lock = asyncio.Lock()


def _registry(request: Request, runtime: Runtime) -> PartnerRegistry:
    registry = getattr(request.app.state, "partner_registry", None)
    if isinstance(registry, PartnerRegistry):
        return registry
    try:
        registry = PartnerRegistry.load(runtime.settings.partner_registry)
    except RegistryError as error:
        log.error("partner_registry_invalid", problem=str(error))
        raise PartnerRefusal(503, "dependency_unavailable") from None
    request.app.state.partner_registry = registry
    return registry


async def _service(request: Request, runtime: Runtime, registry: PartnerRegistry) -> PartnerService:
    existing = getattr(request.app.state, "partner_service", None)
    if isinstance(existing, PartnerService):
        return existing
    if runtime.intake is None:
        raise PartnerRefusal(503, "dependency_unavailable")
    async with _lock:
        existing = getattr(request.app.state, "partner_service", None)
        if isinstance(existing, PartnerService):
            return existing
        service = build_partner_service(
            settings=runtime.settings, registry=registry, pool=runtime.intake.pool
        )
        # Closed with the runtime (its Medplum clients).
        runtime.dependencies.append(service)
        request.app.state.partner_service = service
        return service


def _rate_headers(rate: RateStatus) -> dict[str, str]:
    return {
        "RateLimit-Policy": f'"{RATE_POLICY}";q={rate.limit};w=60',
        "RateLimit": f'"{RATE_POLICY}";r={rate.remaining};t={rate.reset_seconds}',
    }


def _refusal_response(refusal: PartnerRefusal, headers: dict[str, str]) -> JSONResponse:
    correlation_id = current_correlation_id() or new_correlation_id()
    envelope = ErrorEnvelope(
        error_code=refusal.error_code,
        message=MESSAGES.get(refusal.error_code, "The request could not be handled."),
        correlation_id=correlation_id,
        details=refusal.details,
    )
    return JSONResponse(
        envelope.model_dump(exclude_none=True),
        status_code=refusal.status_code,
        headers={"X-Request-ID": correlation_id, **headers, **(refusal.headers or {})},
    )


def _idempotency_key(request: Request) -> str:
    raw = request.headers.get("idempotency-key")
    if raw is None or not raw.strip():
        raise PartnerRefusal(400, "idempotency_key_missing")
    match = _KEY.match(raw.strip())
    if match is None:
        raise PartnerRefusal(400, "idempotency_key_invalid")
    return match.group(1)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (413 past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PartnerRefusal(413, "payload_too_large", details={"limit_bytes": limit})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PartnerRefusal(413, "payload_too_large", details={"limit_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)


class _Audit:
    """What the audit of one request needs, filled in as it goes."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.facts = RequestFacts()
        self.client_id: str | None = None
        self.status = 500
        self.error_code: str | None = None


async def _finish(
    audit: _Audit, service: PartnerService | None, method: str, partner_known: bool
) -> None:
    if service is None:
        return
    await service.audit(
        partner=service.registry.get(audit.client_id or "") if partner_known else None,
        client_id=audit.client_id,
        facts=audit.facts,
        method=method,
        status_code=audit.status,
        error_code=audit.error_code,
        correlation_id=current_correlation_id() or "-",
        duration_ms=round((time.perf_counter() - audit.started) * 1000, 2),
    )


async def _audit_service(request: Request, runtime: Runtime) -> PartnerService | None:
    try:
        return await _service(request, runtime, _registry(request, runtime))
    except PartnerRefusal:
        return None


@router.post(
    "",
    response_model=BundleOutcome,
    summary="Post a FHIR batch or transaction bundle as an integration partner",
    responses={
        200: {
            "model": BundleOutcome,
            "description": "Outcome per entry",
            "headers": {
                **_RATE_HEADERS,
                "Idempotent-Replayed": {
                    "description": "true when this is the stored outcome of an earlier request "
                    "with the same Idempotency-Key and body",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **_ERRORS,
    },
    openapi_extra={
        "parameters": [_IDEMPOTENCY_HEADER],
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": _BUNDLE_SCHEMA},
                "application/json": {"schema": _BUNDLE_SCHEMA},
            },
        },
    },
)
async def post_bundle(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    dry_run: Annotated[
        bool,
        Query(description="Check everything and say what each entry would do; write nothing."),
    ] = False,
) -> Response:
    del credentials  # read by authenticate(); declared for the contract
    audit = _Audit()
    headers: dict[str, str] = {}
    service: PartnerService | None = None
    partner_known = False
    try:
        registry = _registry(request, runtime)
        token = await authenticate(request, runtime, audiences=registry.client_ids)
        audit.client_id = token.client_id
        partner = registry.get(token.client_id)
        if partner is None:
            raise PartnerRefusal(403, "partner_not_registered")
        partner_known = True
        media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media_type not in _JSON_TYPES:
            raise PartnerRefusal(415, "unsupported_media_type")
        key = _idempotency_key(request)
        service = await _service(request, runtime, registry)
        rate = await service.count_request(partner)
        headers = _rate_headers(rate)
        if rate.exceeded:
            raise PartnerRefusal(
                429, "rate_limited", headers={"Retry-After": str(rate.reset_seconds)}
            )
        lease = await service.acquire(partner)
        if lease is None:
            raise PartnerRefusal(429, "concurrency_limited", headers={"Retry-After": "1"})
        try:
            body = await _read_body(request, partner.limits.max_body_bytes)
            answer = await service.submit(
                partner=partner,
                token=token.token,
                key=key,
                body=body,
                dry_run=dry_run,
                facts=audit.facts,
            )
        finally:
            await service.release(lease)
        audit.status = answer.status_code
        if answer.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)
    except ApiError as error:
        audit.status = error.status_code
        reason = (error.details or {}).get("reason")
        audit.error_code = reason if isinstance(reason, str) else error.error_code.value
        raise
    except PartnerRefusal as refusal:
        audit.status, audit.error_code = refusal.status_code, refusal.error_code
        return _refusal_response(refusal, headers)
    finally:
        await _finish(
            audit, service or await _audit_service(request, runtime), "POST", partner_known
        )


@router.get(
    "/{bundle_id}",
    response_model=BundleOutcome,
    summary="The outcome of an accepted bundle request (kept 24 hours)",
    responses={
        200: {
            "model": BundleOutcome,
            "description": "The stored outcome",
            "headers": _RATE_HEADERS,
        },
        202: {"model": BundleOutcome, "description": "Still running"},
        **{code: _ERRORS[code] for code in (401, 403, 404, 429, 503)},
        422: {"model": ErrorEnvelope, "description": "The bundle id is not a UUID"},
    },
)
async def get_bundle(
    bundle_id: uuid.UUID,
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Response:
    del credentials
    audit = _Audit()
    headers: dict[str, str] = {}
    service: PartnerService | None = None
    try:
        registry = _registry(request, runtime)
        token = await authenticate(request, runtime, audiences=registry.client_ids)
        audit.client_id = token.client_id
        partner = registry.get(token.client_id)
        if partner is None:
            raise PartnerRefusal(403, "partner_not_registered")
        service = await _service(request, runtime, registry)
        rate = await service.count_request(partner)
        headers = _rate_headers(rate)
        if rate.exceeded:
            raise PartnerRefusal(
                429, "rate_limited", headers={"Retry-After": str(rate.reset_seconds)}
            )
        answer = await service.outcome(partner=partner, bundle_id=bundle_id)
        if answer is None:
            raise PartnerRefusal(404, "not_found")
        audit.facts.bundle_id = bundle_id
        audit.status = answer.status_code if answer.status_code < 300 else 200
        status = 202 if answer.body.get("status") == "running" else 200
        return JSONResponse(answer.body, status_code=status, headers=headers)
    except ApiError as error:
        audit.status = error.status_code
        reason = (error.details or {}).get("reason")
        audit.error_code = reason if isinstance(reason, str) else error.error_code.value
        raise
    except PartnerRefusal as refusal:
        audit.status, audit.error_code = refusal.status_code, refusal.error_code
        return _refusal_response(refusal, headers)
    finally:
        await _finish(audit, service or await _audit_service(request, runtime), "GET", False)
