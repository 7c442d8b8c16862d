"""The partner bundle service: from a partner's verified token and raw body to Medplum writes
and a PHI-free outcome.

Order of work for ``POST /v1/bundles`` (the endpoint has already authenticated the partner,
checked the content type and the ``Idempotency-Key``, counted the request against the partner's
rate limit, taken one of its concurrency slots and read the body within its size limit):

1. the ``Idempotency-Key``: a new key runs; the same key and body replays the stored outcome;
   another body is 422; a request still running with that key is 409;
2. the pure checks (:mod:`app.partners.validation`): bundle type, entry count, per entry the
   type and interaction the registry allows, properties a partner may not set, clinician roles,
   references, FHIR R4 structure, UCUM units against the LOINC code, dates not in the future;
3. with the partner's own token (Medplum's AccessPolicy is the second fence): conditional
   references resolved within the tenant, every referenced existing resource read to check it
   is the tenant's, and Medplum's ``$validate`` on every resource as it will be sent;
4. dry run: what each create would do (create, or match an existing resource); else
5. the writes, as the partner: creates conditional on the partner's identifier (or on one the
   service adds from the entry's ``fullUrl`` when the resource has none), so a request replayed
   after a crash matches what the first attempt wrote instead of writing it twice; a
   transaction in one request, a batch split into requests of ``batch_chunk_entries``;
6. with the service's own credentials, a Provenance naming the partner for what was written.

The AuditEvent in Medplum and the audit row in the database are written for every request by
:meth:`PartnerService.audit`.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import orjson

from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    get_object,
    get_str,
    rewrite_resource,
)
from app.integrations.medplum import (
    BundleEntryResult,
    BundleRequest,
    MedplumBadRequest,
    MedplumClient,
    MedplumConflict,
    MedplumError,
    MedplumForbidden,
    MedplumPreconditionFailed,
    MedplumRateLimited,
    MedplumUnavailable,
    OperationOutcomeSummary,
)
from app.observability.logging import get_logger
from app.partners import repository
from app.partners.audit import (
    OUTCOME_FAILED,
    OUTCOME_REFUSED,
    OUTCOME_SUCCESS,
    balp_audit_event,
    bundle_tag,
    partner_provenance,
)
from app.partners.validation import (
    BundleCheck,
    CheckPolicy,
    EntryProblem,
    ParsedEntry,
    check_bundle,
    first_identifier,
)

if TYPE_CHECKING:
    from app.partners.registry import Partner, PartnerRegistry
    from app.partners.repository import Pool
    from app.settings import Settings

log = get_logger("app.partners")

RATE_WINDOW_SECONDS = 60.0
type Action = Literal[
    "created",
    "matched",
    "updated",
    "failed",
    "would_create",
    "would_match",
    "would_update",
    "ambiguous",
]


class PartnerRefusal(Exception):
    """A request the service refuses or cannot complete, with its status and stable code.
    ``details`` never carries a value from the posted resources."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        *,
        details: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error_code)
        self.status_code = status_code
        self.error_code = error_code
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else None


@dataclass(slots=True)
class RequestFacts:
    """What the audit of one request says (PHI-free), filled in as the request goes."""

    bundle_id: uuid.UUID | None = None
    bundle_type: str | None = None
    counts: dict[str, int] = field(default_factory=dict[str, int])
    entries: int = 0
    dry_run: bool = False
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: JSONObject
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class RateStatus:
    limit: int
    remaining: int
    reset_seconds: int
    exceeded: bool


# --- the partner's own token on the shared client ------------------------------------------

_partner_token: ContextVar[str | None] = ContextVar("partner_token", default=None)


class PartnerTokenSource:
    """A token source that hands the Medplum client the token of the partner whose request is
    being served (so one pooled client serves every partner, each with its own token)."""

    @property
    def token_requests(self) -> int:
        return 0

    async def get_token(self) -> str:
        token = _partner_token.get()
        if token is None:
            raise RuntimeError("no partner token in this context")
        return token

    def invalidate(self, token: str | None = None) -> None:
        del token  # the partner's token cannot be renewed here: a 401 goes back to the partner

    async def aclose(self) -> None:
        return None


@contextmanager
def acting_as(token: str) -> Iterator[None]:
    reset = _partner_token.set(token)
    try:
        yield
    finally:
        _partner_token.reset(reset)


# --- the service ----------------------------------------------------------------------------


@dataclass
class PartnerSettings:
    """What the service takes from :class:`~app.settings.Settings`."""

    service_client_id: str
    clinician_role_codes: frozenset[tuple[str, str]]
    future_tolerance: timedelta = timedelta(minutes=5)
    idempotency_ttl_seconds: float = 24 * 3600.0
    # A request with a key still marked running after this long died with its process: a retry
    # with the same key takes over (its conditional creates match what was written).
    idempotency_stale_seconds: float = 300.0
    lease_seconds: float = 300.0


class PartnerService:
    name = "partners"

    def __init__(
        self,
        *,
        config: PartnerSettings,
        registry: PartnerRegistry,
        pool: Pool,
        partner_medplum: MedplumClient,
        service_medplum: MedplumClient | None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.pool = pool
        self.partner_medplum = partner_medplum
        self.service_medplum = service_medplum
        self.policy = CheckPolicy(
            clinician_role_codes=config.clinician_role_codes,
            future_tolerance=config.future_tolerance,
        )

    # --- Dependency protocol (closed with the runtime) ------------------------------------

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        await self.partner_medplum.aclose()
        if self.service_medplum is not None:
            await self.service_medplum.aclose()

    # --- limits -------------------------------------------------------------------------------

    async def count_request(self, partner: Partner, now: float | None = None) -> RateStatus:
        moment = time.time() if now is None else now
        window_start = math.floor(moment / RATE_WINDOW_SECONDS) * RATE_WINDOW_SECONDS
        try:
            count = await repository.count_request(self.pool, partner.client_id, window_start)
        except Exception as error:
            log.warning("partner_rate_store_unavailable", exception_type=type(error).__name__)
            raise PartnerRefusal(503, "dependency_unavailable") from None
        limit = partner.limits.requests_per_minute
        reset = max(1, math.ceil(window_start + RATE_WINDOW_SECONDS - moment))
        return RateStatus(limit, max(0, limit - count), reset, count > limit)

    async def acquire(self, partner: Partner) -> uuid.UUID | None:
        try:
            return await repository.acquire_lease(
                self.pool,
                partner.client_id,
                partner.limits.max_concurrent,
                self.config.lease_seconds,
            )
        except Exception as error:
            log.warning("partner_lease_store_unavailable", exception_type=type(error).__name__)
            raise PartnerRefusal(503, "dependency_unavailable") from None

    async def release(self, lease: uuid.UUID) -> None:
        try:
            await repository.release_lease(self.pool, lease)
        except Exception as error:  # the lease expires by itself
            log.warning("partner_lease_not_released", exception_type=type(error).__name__)

    # --- POST /v1/bundles ---------------------------------------------------------------------

    async def submit(
        self,
        *,
        partner: Partner,
        token: str,
        key: str,
        body: bytes,
        dry_run: bool,
        facts: RequestFacts,
    ) -> Answer:
        facts.dry_run = dry_run
        fingerprint = request_fingerprint(body, dry_run=dry_run)
        try:
            claim = await repository.claim_key(
                self.pool,
                partner.client_id,
                key,
                fingerprint,
                ttl_seconds=self.config.idempotency_ttl_seconds,
                stale_after_seconds=self.config.idempotency_stale_seconds,
            )
        except Exception as error:
            log.warning("partner_idempotency_unavailable", exception_type=type(error).__name__)
            raise PartnerRefusal(503, "dependency_unavailable") from None
        facts.bundle_id = claim.bundle_id
        if claim.kind == "mismatch":
            raise PartnerRefusal(422, "idempotency_key_reused")
        if claim.kind == "running":
            raise PartnerRefusal(409, "idempotency_key_in_use", headers={"Retry-After": "1"})
        if claim.kind == "replay":
            facts.replayed = True
            outcome = claim.outcome or {}
            _facts_from_outcome(facts, outcome)
            return Answer(claim.status_code or 200, outcome, replayed=True)
        assert claim.bundle_id is not None
        try:
            answer = await self._run(
                partner,
                token,
                str(claim.bundle_id),
                body,
                dry_run=dry_run,
                facts=facts,
                fingerprint=fingerprint,
            )
        except BaseException:
            # Refused, or failed before an outcome worth keeping: the key may be used again
            # (a retry of a failed forward matches what was written, the creates being
            # conditional).
            try:
                await repository.release_key(self.pool, partner.client_id, key)
            except Exception as error:
                log.warning("partner_key_not_released", exception_type=type(error).__name__)
            raise
        if _transient_failures(answer.body):
            # Entries Medplum refused for now (its quota, a conflict, an outage): the outcome is
            # not kept, so the same key and body can be sent again; what was written is matched.
            await repository.release_key(self.pool, partner.client_id, key)
            return answer
        await repository.complete_key(
            self.pool, partner.client_id, key, answer.status_code, answer.body
        )
        return answer

    async def outcome(self, *, partner: Partner, bundle_id: uuid.UUID) -> Answer | None:
        found = await repository.outcome_of(self.pool, partner.client_id, bundle_id)
        if found is None:
            return None
        state, status_code, outcome = found
        if state != "done" or outcome is None:
            return Answer(202, {"id": str(bundle_id), "status": "running", "entries": []})
        return Answer(status_code or 200, outcome, replayed=True)

    async def _run(
        self,
        partner: Partner,
        token: str,
        bundle_id: str,
        body: bytes,
        *,
        dry_run: bool,
        facts: RequestFacts,
        fingerprint: str,
    ) -> Answer:
        try:
            parsed: JSONValue = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PartnerRefusal(400, "malformed_body") from None
        check = check_bundle(parsed, partner, self.policy, now=datetime.now(UTC))
        facts.bundle_type = check.bundle_type
        facts.counts = check.counts
        facts.entries = len(check.entries)
        _raise_problems(check.problems)
        with acting_as(token):
            resolved = await self._resolve_conditional(check)
            entries = [_prepared(entry, partner, resolved, fingerprint) for entry in check.entries]
            await self._check_tenant(check, partner)
            await self._validate(entries)
            if dry_run:
                return await self._dry_run(bundle_id, check, entries)
            results = await self._forward(check, entries, partner)
        outcome_entries = [
            _entry_outcome(entry, result) for entry, result in zip(entries, results, strict=True)
        ]
        await self._provenance(partner, bundle_id, check, entries, results)
        failed = any(item.get("action") == "failed" for item in outcome_entries)
        return Answer(
            200,
            {
                "id": bundle_id,
                "status": "partial" if failed else "completed",
                "bundle_type": check.bundle_type or "batch",
                "dry_run": False,
                "counts": _json_counts(check.counts),
                "entries": list[JSONValue](outcome_entries),
            },
        )

    # --- Medplum, as the partner --------------------------------------------------------------

    async def _resolve_conditional(self, check: BundleCheck) -> dict[str, str]:
        """``Type?search`` references to the one resource of the tenant each matches."""
        references = sorted(check.conditional_references)
        if not references:
            return {}
        requests = [BundleRequest("GET", reference) for reference in references]
        response = await self._medplum(self.partner_medplum.batch(requests))
        resolved: dict[str, str] = {}
        unresolved: set[str] = set()
        for reference, result in zip(references, response.entries, strict=False):
            page = result.search_result() if result.ok else None
            matches = page.resources if page is not None else []
            found = (
                f"{get_str(matches[0], 'resourceType')}/{get_str(matches[0], 'id')}"
                if len(matches) == 1
                else None
            )
            if found is None:
                unresolved.add(reference)
            else:
                resolved[reference] = found
        if unresolved:
            _raise_problems(_entry_problems(check, unresolved, "reference_unresolved", "invalid"))
        return resolved

    async def _check_tenant(self, check: BundleCheck, partner: Partner) -> None:
        """Every existing resource a posted entry refers to must be the partner's tenant's:
        read as the partner (Medplum answers 404 outside its project), with ``meta.project``
        compared too (``X-Medplum: extended``)."""
        # The target of a PUT Type/id too: a partner updates only what its tenant holds.
        targets = {
            entry.url
            for entry in check.entries
            if entry.interaction == "update" and "?" not in entry.url
        }
        references = sorted(check.literal_references | targets)
        if not references:
            return
        requests = [BundleRequest("GET", reference) for reference in references]
        response = await self._medplum(self.partner_medplum.batch(requests, extended=True))
        outside: set[str] = set()
        for reference, result in zip(references, response.entries, strict=False):
            meta = get_object(result.resource, "meta") if result.resource is not None else None
            project = get_str(meta, "project") if meta is not None else None
            if not result.ok or (project is not None and project != partner.project):
                outside.add(reference)
        if len(response.entries) < len(references):
            outside.update(references[len(response.entries) :])
        if outside:
            problems = _entry_problems(check, outside, "reference_outside_tenant", "forbidden")
            problems.extend(
                _problem(
                    entry, f"{entry.resource_type}.id", "update_target_outside_tenant", "forbidden"
                )
                for entry in check.entries
                if entry.interaction == "update" and entry.url in outside
            )
            _raise_problems(problems)

    async def _validate(self, entries: Sequence[_Prepared]) -> None:
        """Medplum's own ``$validate`` on every resource as it will be sent."""
        requests = [
            BundleRequest(
                "POST", f"{entry.parsed.resource_type}/$validate", resource=entry.resource
            )
            for entry in entries
        ]
        response = await self._medplum(self.partner_medplum.batch(requests, idempotent=True))
        problems: list[EntryProblem] = []
        for entry, result in zip(entries, response.entries, strict=False):
            if result.ok:
                continue
            if result.status_code in (400, 422):
                problems.extend(_outcome_problems(entry.parsed, result.outcome, "fhir_invalid"))
            elif result.status_code == 403:
                problems.append(
                    _problem(
                        entry.parsed, entry.parsed.resource_type, "medplum_forbidden", "forbidden"
                    )
                )
            else:
                raise PartnerRefusal(502, "medplum_unexpected_answer")
        _raise_problems(problems)

    async def _dry_run(
        self, bundle_id: str, check: BundleCheck, entries: Sequence[_Prepared]
    ) -> Answer:
        creates = [entry for entry in entries if entry.parsed.interaction == "create"]
        requests = [
            BundleRequest.search(entry.parsed.resource_type, f"{entry.if_none_exist}&_count=2")
            for entry in creates
        ]
        matches: dict[int, int] = {}
        if requests:
            response = await self._medplum(self.partner_medplum.batch(requests))
            for entry, result in zip(creates, response.entries, strict=False):
                page = result.search_result() if result.ok else None
                matches[entry.parsed.index] = len(page.resources) if page is not None else 0
        items: list[JSONValue] = []
        for entry in entries:
            action: Action = "would_update"
            if entry.parsed.interaction == "create":
                found = matches.get(entry.parsed.index, 0)
                action = (
                    "would_create" if found == 0 else "would_match" if found == 1 else "ambiguous"
                )
            items.append(
                {
                    "index": entry.parsed.index,
                    "resource_type": entry.parsed.resource_type,
                    "action": action,
                }
            )
        return Answer(
            200,
            {
                "id": bundle_id,
                "status": "dry_run",
                "bundle_type": check.bundle_type or "batch",
                "dry_run": True,
                "counts": _json_counts(check.counts),
                "entries": items,
            },
        )

    async def _forward(
        self, check: BundleCheck, entries: Sequence[_Prepared], partner: Partner
    ) -> list[BundleEntryResult]:
        if check.bundle_type == "transaction":
            response = await self._medplum(
                self.partner_medplum.transaction(
                    [entry.request({}) for entry in entries], idempotent=True
                )
            )
            if len(response.entries) != len(entries):
                raise PartnerRefusal(502, "medplum_unexpected_answer")
            return list(response.entries)
        # A batch: requests of at most batch_chunk_entries; references to entries of earlier
        # requests rewritten to what Medplum created.
        size = partner.limits.batch_chunk_entries
        created: dict[str, str] = {}
        results: list[BundleEntryResult] = []
        for start in range(0, len(entries), size):
            chunk = entries[start : start + size]
            response = await self._medplum(
                self.partner_medplum.batch(
                    [entry.request(created) for entry in chunk], idempotent=True
                )
            )
            if len(response.entries) != len(chunk):
                raise PartnerRefusal(502, "medplum_unexpected_answer")
            for entry, result in zip(chunk, response.entries, strict=True):
                if result.ok and result.reference and entry.parsed.full_url:
                    created[entry.parsed.full_url] = result.reference
            results.extend(response.entries)
        return results

    async def _medplum[T](self, call: Awaitable[T]) -> T:
        try:
            return await call
        except MedplumRateLimited as error:
            wait = max(1, math.ceil(error.retry_after or 1))
            raise PartnerRefusal(
                503, "medplum_rate_limited", headers={"Retry-After": str(wait)}
            ) from None
        except (MedplumUnavailable, MedplumConflict):
            raise PartnerRefusal(
                503, "dependency_unavailable", headers={"Retry-After": "5"}
            ) from None
        except MedplumForbidden:
            raise PartnerRefusal(403, "medplum_forbidden") from None
        except MedplumPreconditionFailed:
            raise PartnerRefusal(422, "identifier_ambiguous") from None
        except MedplumBadRequest as error:
            issues = _issue_details(error.operation_outcome)
            raise PartnerRefusal(
                422, "medplum_rejected", details={"issues": issues} if issues else None
            ) from None
        except MedplumError:
            raise PartnerRefusal(502, "medplum_unexpected_answer") from None

    # --- the service's own records ------------------------------------------------------------

    async def _provenance(
        self,
        partner: Partner,
        bundle_id: str,
        check: BundleCheck,
        entries: Sequence[_Prepared],
        results: Sequence[BundleEntryResult],
    ) -> None:
        if self.service_medplum is None:
            raise PartnerRefusal(503, "dependency_unavailable")
        now = datetime.now(UTC)
        size = (
            len(entries)
            if check.bundle_type == "transaction"
            else partner.limits.batch_chunk_entries
        )
        requests: list[BundleRequest] = []
        for part, start in enumerate(range(0, len(results), size)):
            # Plain Type/id: what Provenance?target= finds (the version is in the resource's
            # history, and the Provenance's recorded time says when).
            targets = [
                result.reference
                for result in results[start : start + size]
                if result.ok and result.reference
            ]
            if not targets:
                continue
            provenance = partner_provenance(
                partner_client_id=partner.client_id,
                partner_name=partner.name,
                service_client_id=self.config.service_client_id,
                bundle_id=bundle_id,
                part=part,
                targets=targets,
                now=now,
            )
            system, code = bundle_tag(bundle_id, f"provenance-{part}")
            requests.append(BundleRequest.create(provenance, if_none_exist=f"_tag={system}|{code}"))
        if not requests:
            return
        service = self.service_medplum
        response = await self._medplum(service.batch(requests, idempotent=True))
        if any(not result.ok for result in response.entries):
            log.error("partner_provenance_not_written", bundle_id=bundle_id)
            raise PartnerRefusal(502, "medplum_unexpected_answer")

    async def audit(
        self,
        *,
        partner: Partner | None,
        client_id: str | None,
        facts: RequestFacts,
        method: str,
        status_code: int,
        error_code: str | None,
        correlation_id: str,
        duration_ms: float,
    ) -> None:
        """The PHI-free audit row in the database and, for an authenticated partner, the
        BALP AuditEvent in Medplum. Failures are logged; the partner's answer stands."""
        try:
            await repository.record_audit(
                self.pool,
                repository.AuditRow(
                    client_id=client_id,
                    correlation_id=correlation_id,
                    method=method,
                    status_code=status_code,
                    duration_ms=duration_ms,
                    bundle_id=facts.bundle_id,
                    bundle_type=facts.bundle_type,
                    dry_run=facts.dry_run,
                    entries=facts.entries,
                    counts=facts.counts,
                    error_code=error_code,
                    replayed=facts.replayed,
                ),
            )
        except Exception as error:
            log.warning("partner_audit_row_not_written", exception_type=type(error).__name__)
        if partner is None or self.service_medplum is None or method != "POST":
            return
        bundle_id = str(facts.bundle_id or uuid.uuid4())
        outcome = (
            OUTCOME_SUCCESS
            if status_code < 400
            else OUTCOME_REFUSED
            if status_code < 500
            else OUTCOME_FAILED
        )
        event = balp_audit_event(
            partner_client_id=partner.client_id,
            partner_name=partner.name,
            service_client_id=self.config.service_client_id,
            bundle_id=bundle_id,
            bundle_type=facts.bundle_type,
            correlation_id=correlation_id,
            counts=facts.counts,
            outcome=outcome,
            outcome_code=error_code or ("replayed" if facts.replayed else "ok"),
            dry_run=facts.dry_run,
            now=datetime.now(UTC),
        )
        system, code = bundle_tag(bundle_id, "audit")
        if facts.replayed:
            # A replay is its own request: its own AuditEvent.
            code = f"{code}-replay-{correlation_id}"
            event["meta"] = {"tag": [{"system": system, "code": code}]}
        try:
            await self.service_medplum.create(event, if_none_exist=f"_tag={system}|{code}")
        except MedplumError as error:
            log.warning("partner_audit_event_not_written", error_code=error.error_code)


# --- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An entry as it is forwarded: conditional references resolved, and for a create the
    ``If-None-Exist`` that makes it idempotent (with the identifier the service added when the
    resource had none)."""

    parsed: ParsedEntry
    resource: JSONObject
    if_none_exist: str | None

    def request(self, created: Mapping[str, str]) -> BundleRequest:
        resource = rewrite_resource(self.resource, created) if created else self.resource
        if self.parsed.interaction == "create":
            return BundleRequest.create(
                resource, if_none_exist=self.if_none_exist, full_url=self.parsed.full_url
            )
        return BundleRequest(
            "PUT", self.parsed.url, resource=resource, full_url=self.parsed.full_url
        )


def _prepared(
    entry: ParsedEntry, partner: Partner, resolved: Mapping[str, str], fingerprint: str
) -> _Prepared:
    resource = rewrite_resource(entry.resource, resolved) if resolved else entry.resource
    if entry.interaction != "create":
        return _Prepared(entry, resource, None)
    if entry.if_none_exist:
        return _Prepared(entry, resource, entry.if_none_exist)
    identifier = first_identifier(resource)
    if identifier is None:
        # No identifier of the partner's: the service adds one derived from the entry's
        # fullUrl (unique per resource by FHIR's rules), else from the request's fingerprint
        # and the entry's position, so the create can be conditional. Never the urn:uuid
        # itself: Medplum rewrites every string equal to a bundle's urn:uuid fullUrl.
        identifier = (partner.entry_identifier_system, _entry_key(entry, fingerprint))
        existing: list[JSONValue] = list(_identifiers(resource))
        existing.append({"system": identifier[0], "value": identifier[1]})
        resource = dict(resource)
        resource["identifier"] = existing
    system, value = identifier
    return _Prepared(
        entry, resource, f"identifier={quote(system, safe=':/')}|{quote(value, safe=':/-.')}"
    )


def _entry_key(entry: ParsedEntry, fingerprint: str) -> str:
    full_url = entry.full_url
    if full_url:
        for prefix in ("urn:uuid:", "urn:oid:"):
            if full_url.startswith(prefix):
                return full_url[len(prefix) :]
        return hashlib.sha256(full_url.encode()).hexdigest()
    return f"{fingerprint[:32]}-{entry.index}"


def _identifiers(resource: JSONObject) -> list[JSONValue]:
    value = resource.get("identifier")
    return list(value) if isinstance(value, list) else []


def _json_counts(counts: Mapping[str, int]) -> JSONObject:
    result: JSONObject = {}
    for resource_type, count in sorted(counts.items()):
        result[resource_type] = count
    return result


def _entry_outcome(entry: _Prepared, result: BundleEntryResult) -> JSONObject:
    item: JSONObject = {
        "index": entry.parsed.index,
        "resource_type": entry.parsed.resource_type,
        "status": result.status_code,
    }
    if result.ok:
        if entry.parsed.interaction == "update":
            item["action"] = "updated"
        else:
            item["action"] = "created" if result.created else "matched"
        if result.reference:
            item["reference"] = result.reference
    else:
        item["action"] = "failed"
        issue = result.outcome.issues[0] if result.outcome and result.outcome.issues else None
        item["error_code"] = f"medplum_{issue.code}" if issue and issue.code else "medplum_error"
        if issue and issue.expression:
            item["path"] = issue.expression[0]
    return item


def _transient_failures(outcome: Mapping[str, JSONValue]) -> bool:
    entries = outcome.get("entries")
    for item in entries if isinstance(entries, list) else []:
        if isinstance(item, dict) and item.get("action") == "failed":
            status = item.get("status")
            if isinstance(status, int) and (status in (408, 409, 429) or status >= 500):
                return True
    return False


def _facts_from_outcome(facts: RequestFacts, outcome: Mapping[str, JSONValue]) -> None:
    bundle_type = outcome.get("bundle_type")
    facts.bundle_type = bundle_type if isinstance(bundle_type, str) else None
    counts = outcome.get("counts")
    if isinstance(counts, dict):
        facts.counts = {k: v for k, v in counts.items() if isinstance(v, int)}
        facts.entries = sum(facts.counts.values())
    facts.dry_run = outcome.get("dry_run") is True


def request_fingerprint(body: bytes, *, dry_run: bool) -> str:
    digest = hashlib.sha256(b"POST /v1/bundles dry_run=" + (b"1" if dry_run else b"0") + b"\n")
    digest.update(body)
    return digest.hexdigest()


def _problem(
    entry: ParsedEntry, path: str, code: str, severity: Literal["forbidden", "invalid"]
) -> EntryProblem:
    return EntryProblem(entry.index, entry.full_url, path, code, severity)


def _entry_problems(
    check: BundleCheck,
    references: set[str],
    code: str,
    severity: Literal["forbidden", "invalid"],
) -> list[EntryProblem]:
    problems: list[EntryProblem] = []
    for entry in check.entries:
        for path, reference in _reference_paths(entry.resource, entry.resource_type):
            bare = "/".join(reference.split("/")[:2]) if "?" not in reference else reference
            if bare in references or reference in references:
                problems.append(_problem(entry, path, code, severity))
    return problems


def _reference_paths(value: JSONValue, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield f"{path}.reference", item
            elif key != "contained":
                yield from _reference_paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _reference_paths(item, f"{path}[{position}]")


def _outcome_problems(
    entry: ParsedEntry, outcome: OperationOutcomeSummary | None, code: str
) -> list[EntryProblem]:
    issues = [
        issue
        for issue in (outcome.issues if outcome else ())
        if issue.severity in ("error", "fatal", None)
    ]
    if not issues:
        return [_problem(entry, entry.resource_type, code, "invalid")]
    return [
        _problem(
            entry, issue.expression[0] if issue.expression else entry.resource_type, code, "invalid"
        )
        for issue in issues[:10]
    ]


def _issue_details(outcome: OperationOutcomeSummary | None) -> list[dict[str, object]]:
    if outcome is None:
        return []
    return [
        {
            "code": issue.code or "unknown",
            **({"path": issue.expression[0]} if issue.expression else {}),
        }
        for issue in outcome.issues[:10]
    ]


def _raise_problems(problems: Sequence[EntryProblem]) -> None:
    if not problems:
        return
    forbidden = [problem for problem in problems if problem.severity == "forbidden"]
    chosen = forbidden or list(problems)
    status, code = (403, "entry_forbidden") if forbidden else (422, "entry_invalid")
    bundle_level = [problem for problem in chosen if problem.index < 0]
    if bundle_level and not forbidden:
        code = bundle_level[0].code
    counts = Counter(problem.code for problem in chosen)
    raise PartnerRefusal(
        status,
        code,
        details={
            "entries": [problem.as_detail() for problem in chosen[:100]],
            "codes": dict(counts),
        },
    )


def build_partner_service(
    *,
    settings: Settings,
    registry: PartnerRegistry,
    pool: Pool,
) -> PartnerService:
    """The service with its two Medplum clients: one that carries each partner's own token
    (few, quick retries: the partner is waiting), and the service's own for the Provenance and
    the AuditEvent (absent when the service has no client secret configured)."""
    from app.integrations.medplum import MedplumClientConfig  # noqa: PLC0415

    partner_client = MedplumClient(
        MedplumClientConfig(
            base_url=settings.medplum_base_url,
            client_id=settings.medplum_client_id,
            allowed_hosts=tuple(settings.medplum_allowed_hosts),
            connect_timeout=settings.medplum_connect_timeout,
            read_timeout=settings.medplum_read_timeout,
            max_attempts=2,
            max_retry_wait_seconds=2.0,
        ),
        token_source=PartnerTokenSource(),
    )
    service_client: MedplumClient | None = None
    secret = settings.medplum_client_secret
    if secret is not None and secret.get_secret_value():
        service_client = MedplumClient(
            MedplumClientConfig(
                base_url=settings.medplum_base_url,
                client_id=settings.medplum_client_id,
                client_secret=secret.get_secret_value(),
                allowed_hosts=tuple(settings.medplum_allowed_hosts),
                connect_timeout=settings.medplum_connect_timeout,
                read_timeout=settings.medplum_read_timeout,
                max_attempts=3,
                max_retry_wait_seconds=5.0,
            )
        )
    codes = frozenset(
        (system, code)
        for entry in settings.clinician_role_codes
        for system, _, code in [entry.partition("|")]
        if system and code
    )
    return PartnerService(
        config=PartnerSettings(
            service_client_id=settings.medplum_client_id,
            clinician_role_codes=codes,
            future_tolerance=timedelta(minutes=settings.partner_future_tolerance_minutes),
        ),
        registry=registry,
        pool=pool,
        partner_medplum=partner_client,
        service_medplum=service_client,
    )
