"""The only way this service talks to Medplum.

One pooled ``httpx.AsyncClient`` with explicit timeouts, behind the outbound allowlist
(:mod:`.transport`), authenticated by a pluggable token source (:mod:`.auth`: the service's
cached client-credentials token by default, or a signed-in user), retrying only what is safe
to replay (:mod:`.retry`). Responses are parsed with orjson into typed JSON views; no
``fhir.resources`` validation happens here (the hot path stays cheap).

Nothing that could hold PHI - bodies, search values, URLs with their query - goes into an
exception or a log event from this module.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx

from app.fhir.resource_json import (
    FHIR_ID,
    RESOURCE_TYPE,
    JSONObject,
    dumps,
    get_str,
    loads_object,
    version_id_of,
)
from app.integrations.medplum.auth import (
    AUTH_OPERATIONS,
    Clock,
    TokenContext,
    TokenSource,
    TokenSourceFactory,
    client_credentials,
)
from app.integrations.medplum.budget import Pacer
from app.integrations.medplum.config import MedplumClientConfig
from app.integrations.medplum.errors import (
    MedplumError,
    MedplumRequestTooLarge,
    MedplumUnavailable,
)
from app.integrations.medplum.responses import (
    RateLimitStatus,
    error_for_response,
    is_success,
    parse_rate_limit,
    version_from_etag,
)
from app.integrations.medplum.results import (
    BundleEntryResult,
    BundleRequest,
    BundleResponse,
    CreateResult,
    ResourceResult,
    SearchResult,
    entries_json,
    entry_is_idempotent,
    parse_bundle_response,
)
from app.integrations.medplum.retry import RetryPolicy, Sleep, is_retryable
from app.integrations.medplum.transport import AllowlistTransport, OutboundAllowlist
from app.observability.correlation import SAFE_ID, current_correlation_id
from app.observability.logging import get_logger

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
USER_AGENT = "starvit-medplum-client/1"
# Medplum's express.json limit (maxJsonSize "1mb"); larger bodies are a 400 "File too large".
MAX_JSON_BODY_BYTES = 1_048_576
# Medplum's FHIR quota, points per interaction (medplum-facts.md §4 and §7), counted as Medplum
# charges them: a conditional create costs its search on top of the write (120), inside a bundle
# the bundle's own identity search as well (140); every ``_include``d resource returned costs 1.
POINTS = {"read": 1, "history": 10, "search": 20, "write": 100}
CONDITIONAL_CREATE_POINTS = POINTS["write"] + POINTS["search"]
BUNDLE_CONDITIONAL_CREATE_POINTS = POINTS["write"] + 2 * POINTS["search"]

_EXTENDED = {"X-Medplum": "extended"}
_OPERATION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-]{0,63}$")
type SearchParamValue = str | int | float | bool
type SearchParams = (
    Mapping[str, SearchParamValue | Sequence[SearchParamValue]] | Sequence[tuple[str, str]]
)
type BundleEntryInput = BundleRequest | Mapping[str, object]

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Call:
    kind: str
    method: str
    url: str
    resource_type: str | None
    idempotent: bool
    points: int
    content: bytes | None = None
    content_type: str | None = None
    params: tuple[tuple[str, str], ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    accept_statuses: frozenset[int] = frozenset()
    guarded_patch: bool = False


@dataclass(slots=True)
class RequestMeter:
    """What one unit of work (an event) cost Medplum: every HTTP request sent, retries
    included, and the quota points they are charged."""

    requests: int = 0
    points: int = 0


_current_meter: ContextVar[RequestMeter | None] = ContextVar("medplum_meter", default=None)


@contextmanager
def metered() -> Iterator[RequestMeter]:
    """Count the Medplum requests made in this context (an asyncio task and what it awaits;
    concurrent jobs each count their own)."""
    meter = RequestMeter()
    token = _current_meter.set(meter)
    try:
        yield meter
    finally:
        _current_meter.reset(token)


class MedplumClient:
    """Async Medplum FHIR R4 client. Use as ``async with MedplumClient(config) as medplum:``
    or call :meth:`aclose` when done. Safe to share between tasks of one event loop.

    ``token_source`` says whose token goes on each request: ``None`` (the default) is the
    client credentials of ``config``; a factory such as
    :class:`~app.integrations.medplum.auth.PasswordSignIn` is given the client's own
    allowlisted HTTP client to sign in with; a ready :class:`TokenSource` (e.g.
    :class:`~app.integrations.medplum.auth.StaticTokenSource`) is used as it is. The client
    owns its token source and closes it with itself."""

    def __init__(
        self,
        config: MedplumClientConfig,
        *,
        token_source: TokenSource | TokenSourceFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._config = config
        self._allowlist = OutboundAllowlist(config.root_url, config.allowed_hosts)
        inner = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            retries=0,
        )
        self._http = httpx.AsyncClient(
            base_url=config.fhir_base_url,
            transport=AllowlistTransport(self._allowlist, inner),
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.read_timeout,
                # Waiting for a pooled connection is load, not an outage: allow a read's time.
                pool=config.read_timeout,
            ),
            headers={"Accept": FHIR_JSON, "User-Agent": USER_AGENT},
            follow_redirects=False,
            # No proxy or netrc from the environment: a proxy mount would bypass the allowlist.
            trust_env=False,
        )
        self._retry = RetryPolicy(
            max_attempts=config.max_attempts,
            max_wait_seconds=config.max_retry_wait_seconds,
            sleep=sleep,
        )
        context = TokenContext(
            http=self._http, config=config, retry_policy=self._retry, clock=clock
        )
        if token_source is None:
            self._auth: TokenSource = client_credentials(context)
        elif isinstance(token_source, TokenSource):
            self._auth = token_source
        else:
            self._auth = token_source(context)
        self._requests: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._points = 0
        self._clock = clock
        self._last_rate_limit: RateLimitStatus | None = None
        # The shared quota budget (workers): asked before each FHIR request, told each answer.
        self.pacer: Pacer | None = None
        self._throttled = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._auth.aclose()
        finally:
            await self._http.aclose()

    @property
    def config(self) -> MedplumClientConfig:
        return self._config

    @property
    def allowlist(self) -> OutboundAllowlist:
        return self._allowlist

    @property
    def token_source(self) -> TokenSource:
        """Where this client's tokens come from (e.g. to read who signed in)."""
        return self._auth

    # --- counters (benchmarks) -------------------------------------------------------------

    @property
    def request_count(self) -> dict[str, int]:
        """HTTP requests sent, by kind (``read``, ``search``, ``create``, ... and ``token``),
        retries and 401 re-sends included."""
        counts = dict(self._requests)
        if self._auth.token_requests:
            counts["token"] = self._auth.token_requests
        return counts

    @property
    def token_request_count(self) -> int:
        return self._auth.token_requests

    @property
    def retry_count(self) -> dict[str, int]:
        return dict(self._retries)

    @property
    def throttled_count(self) -> int:
        """429 answers received (each one retried after Medplum's reset, or failed)."""
        return self._throttled

    @property
    def estimated_points(self) -> int:
        """Medplum FHIR quota points of the requests sent (read 1, search 20, write 100)."""
        return self._points

    @property
    def last_rate_limit(self) -> RateLimitStatus | None:
        """The ``RateLimit`` policies of the latest FHIR response that carried them (errors
        included), with when it arrived on this client's clock; a policy that answer did not
        list keeps its last known state (see :meth:`RateLimitStatus.updated_by`). None before
        any."""
        return self._last_rate_limit

    # --- reads -----------------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str) -> ResourceResult:
        _check_type(resource_type)
        _check_id(resource_id)
        call = _Call(
            kind="read",
            method="GET",
            url=f"{resource_type}/{resource_id}",
            resource_type=resource_type,
            idempotent=True,
            points=POINTS["read"],
        )
        return self._resource_result(await self._execute(call), call)

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> ResourceResult:
        _check_type(resource_type)
        _check_id(resource_id)
        _check_id(version_id)
        call = _Call(
            kind="vread",
            method="GET",
            url=f"{resource_type}/{resource_id}/_history/{version_id}",
            resource_type=resource_type,
            idempotent=True,
            points=POINTS["read"],
        )
        return self._resource_result(await self._execute(call), call)

    async def search(
        self, resource_type: str, params: SearchParams | None = None, *, extended: bool = False
    ) -> SearchResult:
        """One page of ``GET [base]/{type}?params``; ``next_url`` leads to the next page.
        ``extended`` asks for ``meta.author`` (``X-Medplum: extended``)."""
        _check_type(resource_type)
        call = _Call(
            kind="search",
            method="GET",
            url=resource_type,
            resource_type=resource_type,
            idempotent=True,
            points=POINTS["search"],
            params=_query_pairs(params),
            headers=_EXTENDED if extended else {},
        )
        result = SearchResult.from_bundle(self._bundle_body(await self._execute(call), call))
        self._charge(len(result.included) * POINTS["read"])
        return result

    async def search_pages(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        max_pages: int = 50,
        extended: bool = False,
    ) -> AsyncIterator[SearchResult]:
        """Every page of a search, following the server's ``next`` links (which, like every
        URL, must pass the allowlist), at most ``max_pages``."""
        page = await self.search(resource_type, params, extended=extended)
        yield page
        pages = 1
        while page.next_url and pages < max_pages:
            call = _Call(
                kind="search",
                method="GET",
                url=page.next_url,
                resource_type=resource_type,
                idempotent=True,
                points=POINTS["search"],
                headers=_EXTENDED if extended else {},
            )
            page = SearchResult.from_bundle(self._bundle_body(await self._execute(call), call))
            self._charge(len(page.included) * POINTS["read"])
            pages += 1
            yield page

    async def search_all(
        self, resource_type: str, params: SearchParams | None = None, *, max_pages: int = 50
    ) -> list[JSONObject]:
        """The matched resources of every page (``_include``d ones left out)."""
        resources: list[JSONObject] = []
        async for page in self.search_pages(resource_type, params, max_pages=max_pages):
            resources.extend(page.resources)
        return resources

    # --- writes ----------------------------------------------------------------------------

    async def create(
        self,
        resource: Mapping[str, object],
        *,
        if_none_exist: str | None = None,
        trace_id: str | None = None,
    ) -> CreateResult:
        """``POST [base]/{type}``. With ``if_none_exist`` (``identifier=system|value``): 201
        created, 200 the one existing match (``created=False``), 412 several matches
        (:class:`MedplumPreconditionFailed`). Only conditional creates are retried."""
        resource_type = _type_of(resource)
        headers = self._write_headers(trace_id)
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        call = _Call(
            kind="create",
            method="POST",
            url=resource_type,
            resource_type=resource_type,
            idempotent=bool(if_none_exist),
            points=CONDITIONAL_CREATE_POINTS if if_none_exist else POINTS["write"],
            content=dumps(resource),
            content_type=FHIR_JSON,
            headers=headers,
        )
        response = await self._execute(call)
        result = self._resource_result(response, call)
        if if_none_exist and response.status_code == 200:
            self._charge(-POINTS["write"])  # the match was returned: only the search is charged
        return CreateResult(
            resource=result.resource,
            status_code=result.status_code,
            version_id=result.version_id,
            etag=result.etag,
            location=result.location,
            last_modified=result.last_modified,
            created=response.status_code == 201,
        )

    async def update(
        self,
        resource: Mapping[str, object],
        *,
        if_match_version: str | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
    ) -> ResourceResult:
        """``PUT [base]/{type}/{id}``; with ``if_match_version`` sends ``If-Match: W/"v"``
        (412 -> :class:`MedplumPreconditionFailed`) and is retried. Without it the update is
        retried only if the caller declares ``idempotent=True``."""
        resource_type = _type_of(resource)
        resource_id = get_str(resource, "id")
        if resource_id is None:
            raise ValueError("update needs the resource id")
        _check_id(resource_id)
        headers = self._write_headers(trace_id)
        if if_match_version is not None:
            _check_id(if_match_version)
            headers["If-Match"] = f'W/"{if_match_version}"'
        call = _Call(
            kind="update",
            method="PUT",
            url=f"{resource_type}/{resource_id}",
            resource_type=resource_type,
            idempotent=idempotent if idempotent is not None else if_match_version is not None,
            points=POINTS["write"],
            content=dumps(resource),
            content_type=FHIR_JSON,
            headers=headers,
        )
        return self._resource_result(await self._execute(call), call)

    async def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[Mapping[str, object]],
        *,
        expected_version: str | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
    ) -> ResourceResult:
        """JSON Patch. With ``expected_version`` the patch is guarded: it starts with
        ``{"op": "test", "path": "/meta/versionId", "value": v}`` (the portable guard; Medplum
        answers 400 "Test failed", mapped to :class:`MedplumPreconditionFailed`) and also
        sends ``If-Match`` (honoured from Medplum 5.2). Guarded patches are retried."""
        _check_type(resource_type)
        _check_id(resource_id)
        ops: list[Mapping[str, object]] = list(operations)
        headers = self._write_headers(trace_id)
        if expected_version is not None:
            _check_id(expected_version)
            ops.insert(0, {"op": "test", "path": "/meta/versionId", "value": expected_version})
            headers["If-Match"] = f'W/"{expected_version}"'
        call = _Call(
            kind="patch",
            method="PATCH",
            url=f"{resource_type}/{resource_id}",
            resource_type=resource_type,
            idempotent=idempotent if idempotent is not None else expected_version is not None,
            points=POINTS["write"],
            content=dumps(ops),
            content_type=JSON_PATCH,
            headers=headers,
            guarded_patch=expected_version is not None,
        )
        return self._resource_result(await self._execute(call), call)

    async def delete(
        self,
        resource_type: str,
        resource_id: str,
        *,
        missing_ok: bool = True,
        trace_id: str | None = None,
    ) -> bool:
        """``DELETE``; True if this call deleted it. Deleting is idempotent and retried; with
        ``missing_ok`` an absent or already deleted resource (404/410) returns False."""
        _check_type(resource_type)
        _check_id(resource_id)
        call = _Call(
            kind="delete",
            method="DELETE",
            url=f"{resource_type}/{resource_id}",
            resource_type=resource_type,
            idempotent=True,
            points=POINTS["write"],
            headers=self._write_headers(trace_id),
            accept_statuses=frozenset({404, 410}) if missing_ok else frozenset(),
        )
        response = await self._execute(call)
        return is_success(response.status_code)

    # --- operations ------------------------------------------------------------------------

    async def operation(
        self,
        resource_type: str,
        resource_id: str | None,
        name: str,
        parameters: Mapping[str, object] | None = None,
        *,
        idempotent: bool = False,
        trace_id: str | None = None,
    ) -> JSONObject | None:
        """``POST [base]/{type}[/{id}]/${name}`` with ``parameters`` as the JSON body (a
        ``Parameters`` resource, or the plain object Medplum's own operations take, e.g.
        ``$resend``: ``{"interaction": "update"}``). Returns the JSON answer (None when the
        body is empty). Counted as a write; retried only when the caller says it is
        ``idempotent``."""
        _check_type(resource_type)
        if resource_id is not None:
            _check_id(resource_id)
        if not _OPERATION_NAME.match(name):
            raise ValueError("not a FHIR operation name")
        path = f"{resource_type}/{resource_id}" if resource_id is not None else resource_type
        call = _Call(
            kind="operation",
            method="POST",
            url=f"{path}/${name}",
            resource_type=resource_type,
            idempotent=idempotent,
            points=POINTS["write"],
            content=dumps(parameters or {}),
            content_type=FHIR_JSON,
            headers=self._write_headers(trace_id),
        )
        response = await self._execute(call)
        return loads_object(response.content) if response.content else None

    # --- bundles ---------------------------------------------------------------------------

    async def batch(
        self,
        entries: Sequence[BundleEntryInput],
        *,
        idempotent: bool | None = None,
        trace_id: str | None = None,
        extended: bool = False,
    ) -> BundleResponse:
        """``POST [base]/`` with a ``batch`` Bundle. Entries succeed or fail one by one: check
        ``BundleResponse.failed`` (or call ``raise_for_failed()``). Retried when every entry
        is idempotent (reads, searches, conditional creates, If-Match updates, deletes) or the
        caller says so. ``extended`` sends ``X-Medplum: extended`` so that the resources read
        carry ``meta.author`` (who made each version)."""
        return await self._bundle(
            "batch", entries, idempotent=idempotent, trace_id=trace_id, extended=extended
        )

    async def batch_named(
        self,
        entries: Mapping[str, BundleEntryInput],
        *,
        trace_id: str | None = None,
        extended: bool = False,
    ) -> dict[str, BundleEntryResult]:
        """A read :meth:`batch` whose entries are named: each answer comes back under the name of
        its request. A response with another number of entries is an error, never a shift of
        every answer onto the wrong request."""
        names = list(entries)
        response = await self.batch(
            [entries[name] for name in names], trace_id=trace_id, extended=extended
        )
        if len(response.entries) != len(names):
            raise MedplumError(
                f"batch answered {len(response.entries)} entries for {len(names)} requests",
                status_code=200,
                operation="batch",
                resource_type="Bundle",
            )
        return dict(zip(names, response.entries, strict=True))

    async def transaction(
        self,
        entries: Sequence[BundleEntryInput],
        *,
        idempotent: bool | None = None,
        trace_id: str | None = None,
    ) -> BundleResponse:
        """``POST [base]/`` with a ``transaction`` Bundle. Atomic only when the project has
        the ``transaction-bundles`` feature (else processed like a batch: check ``failed``);
        with any conditional entry at most 8 entries. Retried like :meth:`batch`."""
        return await self._bundle(
            "transaction", entries, idempotent=idempotent, trace_id=trace_id, extended=False
        )

    async def _bundle(
        self,
        bundle_type: str,
        entries: Sequence[BundleEntryInput],
        *,
        idempotent: bool | None,
        trace_id: str | None,
        extended: bool,
    ) -> BundleResponse:
        if not entries:
            return BundleResponse(bundle_type=f"{bundle_type}-response", entries=())
        bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": entries_json(entries)}
        read_only = all(_entry_method(entry) in ("GET", "HEAD") for entry in entries)
        call = _Call(
            kind=bundle_type,
            method="POST",
            url="",
            resource_type="Bundle",
            idempotent=(
                idempotent
                if idempotent is not None
                else all(entry_is_idempotent(entry) for entry in entries)
            ),
            points=sum(_entry_points(entry) for entry in entries),
            content=dumps(bundle),
            content_type=FHIR_JSON,
            headers={
                **({} if read_only else self._write_headers(trace_id)),
                **(_EXTENDED if extended else {}),
            },
        )
        response = parse_bundle_response(self._bundle_body(await self._execute(call), call))
        self._charge(_answer_points(entries, response))
        return response

    # --- machinery -------------------------------------------------------------------------

    def _charge(self, points: int) -> None:
        """Corrects the points of a request by what its answer showed: ``_include``d resources
        (1 each), a conditional create that found its match (no write charged)."""
        if points == 0:
            return
        self._points += points
        meter = _current_meter.get()
        if meter is not None:
            meter.points += points

    def _write_headers(self, trace_id: str | None) -> dict[str, str]:
        if not self._config.trace_id_header:
            return {}
        value = trace_id or current_correlation_id()
        # Medplum echoes it on the notifications the write causes: only a safe token goes.
        if value and SAFE_ID.match(value):
            return {"X-Trace-Id": value}
        return {}

    async def _execute(self, call: _Call) -> httpx.Response:
        if call.content is not None and len(call.content) > MAX_JSON_BODY_BYTES:
            raise MedplumRequestTooLarge(
                "request body exceeds Medplum's 1 MB JSON limit",
                operation=call.kind,
                resource_type=call.resource_type,
            )
        if not call.idempotent:
            # A plain create (or an unguarded write) is never replayed: a lost response
            # would turn into a duplicate.
            return await self._attempt(call, 1)

        def observe(error: MedplumError, attempt: int, wait_seconds: float) -> None:
            self._retries[call.kind] += 1
            _log.warning(
                "medplum_retry",
                operation=call.kind,
                resource_type=call.resource_type,
                status_code=error.status_code,
                error_code=error.error_code,
                attempt=attempt,
                wait_seconds=round(wait_seconds, 3),
            )

        async for attempt in self._retry.retrying(observe, retry_if=_retryable_fhir_error):
            with attempt:
                return await self._attempt(call, attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _attempt(self, call: _Call, attempt_number: int) -> httpx.Response:
        token = await self._auth.get_token()
        response = await self._send(call, token, attempt_number)
        if response.status_code == 401:
            # Expired or revoked token: renew once (a 401 means the request was not applied).
            self._auth.invalidate(token)
            renewed = await self._auth.get_token()
            # A source that cannot renew (a static token) hands back the same token: resending
            # it would only earn a second 401.
            if renewed != token:
                response = await self._send(call, renewed, attempt_number)
        if is_success(response.status_code) or response.status_code in call.accept_statuses:
            return response
        raise error_for_response(
            response,
            operation=call.kind,
            resource_type=call.resource_type,
            attempts=attempt_number,
            guarded_patch=call.guarded_patch,
        )

    async def _send(self, call: _Call, token: str, attempt_number: int) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **call.headers}
        if call.content_type is not None:
            headers["Content-Type"] = call.content_type
        if self.pacer is not None:
            await self.pacer.before(call.points)
        self._requests[call.kind] += 1
        self._points += call.points
        meter = _current_meter.get()
        if meter is not None:
            meter.requests += 1
            meter.points += call.points
        try:
            async with asyncio.timeout(self._config.request_deadline):
                response = await self._http.request(
                    call.method, call.url, content=call.content, params=call.params, headers=headers
                )
        except TimeoutError:
            raise MedplumUnavailable(
                "Medplum did not answer in time",
                operation=call.kind,
                resource_type=call.resource_type,
                attempts=attempt_number,
                cause="deadline_exceeded",
            ) from None
        except httpx.TransportError as error:
            # The type name only: transport errors can quote the URL (and its query).
            raise MedplumUnavailable(
                "Medplum unreachable",
                operation=call.kind,
                resource_type=call.resource_type,
                attempts=attempt_number,
                cause=type(error).__name__,
            ) from None
        rate_limit = parse_rate_limit(response.headers, observed_at=self._clock())
        if rate_limit is not None:
            last = self._last_rate_limit
            self._last_rate_limit = last.updated_by(rate_limit) if last else rate_limit
        if response.status_code == 429:
            self._throttled += 1
        if self.pacer is not None:
            await self.pacer.observe(rate_limit, throttled=response.status_code == 429)
        return response

    def _resource_result(self, response: httpx.Response, call: _Call) -> ResourceResult:
        body = loads_object(response.content)
        if body is None or get_str(body, "resourceType") is None:
            raise MedplumError(
                "Medplum answered without a resource",
                status_code=response.status_code,
                operation=call.kind,
                resource_type=call.resource_type,
            )
        etag = response.headers.get("etag")
        return ResourceResult(
            resource=body,
            status_code=response.status_code,
            version_id=version_from_etag(etag) or version_id_of(body),
            etag=etag,
            location=response.headers.get("location") or response.headers.get("content-location"),
            last_modified=response.headers.get("last-modified"),
        )

    def _bundle_body(self, response: httpx.Response, call: _Call) -> JSONObject:
        body = loads_object(response.content)
        if body is None or get_str(body, "resourceType") != "Bundle":
            raise MedplumError(
                "Medplum answered without a Bundle",
                status_code=response.status_code,
                operation=call.kind,
                resource_type=call.resource_type,
            )
        return body


def _retryable_fhir_error(error: BaseException) -> bool:
    # The token provider has already retried its own failures: retrying them again here
    # would multiply token requests against Medplum's 160/min auth limit.
    return is_retryable(error) and not (
        isinstance(error, MedplumError) and error.operation in AUTH_OPERATIONS
    )


def _check_type(resource_type: str) -> None:
    if not RESOURCE_TYPE.match(resource_type):
        raise ValueError("not a FHIR resource type name")


def _check_id(value: str) -> None:
    # Also keeps "../" and query characters out of the request path.
    if not FHIR_ID.match(value):
        raise ValueError("not a FHIR id")


def _type_of(resource: Mapping[str, object]) -> str:
    resource_type = get_str(resource, "resourceType")
    if resource_type is None:
        raise ValueError("the resource has no resourceType")
    _check_type(resource_type)
    return resource_type


def _query_pairs(params: SearchParams | None) -> tuple[tuple[str, str], ...] | None:
    if params is None:
        return None
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, value in params.items():
            if isinstance(value, str | int | float | bool):
                pairs.append((key, _param_text(value)))
            else:
                pairs.extend((key, _param_text(item)) for item in value)
        return tuple(pairs)
    return tuple((key, value) for key, value in params)


def _param_text(value: SearchParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _entry_request(entry: BundleEntryInput) -> tuple[str, str]:
    if isinstance(entry, BundleRequest):
        return entry.method, entry.url
    request = entry.get("request")
    if isinstance(request, Mapping):
        typed: Mapping[str, object] = request  # pyright: ignore[reportUnknownVariableType]
        return (get_str(typed, "method") or "").upper(), get_str(typed, "url") or ""
    return "", ""


def _entry_method(entry: BundleEntryInput) -> str:
    return _entry_request(entry)[0]


def _entry_points(entry: BundleEntryInput) -> int:
    """What Medplum charges for one bundle entry before its answer is known (the
    ``_include``d resources of a search are added from the answer)."""
    method, url = _entry_request(entry)
    if method in ("GET", "HEAD"):
        path = url.split("?", 1)[0].strip("/")
        parts = path.split("/")
        if len(parts) in (2, 3) and parts[-1] == "_history":
            return POINTS["history"]
        if len(parts) == 2 or (len(parts) == 4 and parts[2] == "_history"):
            return POINTS["read"]  # read, vread
        return POINTS["search"]
    if method == "POST" and _entry_if_none_exist(entry):
        return BUNDLE_CONDITIONAL_CREATE_POINTS
    return POINTS["write"]


def _answer_points(entries: Sequence[BundleEntryInput], response: BundleResponse) -> int:
    """The points an answer adds to (or takes from) the estimate made before sending."""
    points = 0
    for entry, answer in zip(entries, response.entries, strict=False):
        page = answer.search_result() if answer.ok else None
        if page is not None:
            points += len(page.included) * POINTS["read"]
        elif (
            answer.status_code == 200
            and _entry_method(entry) == "POST"
            and _entry_if_none_exist(entry)
        ):
            points -= POINTS["write"]  # nothing was written
    return points


def _entry_if_none_exist(entry: BundleEntryInput) -> str | None:
    if isinstance(entry, BundleRequest):
        return entry.if_none_exist
    request = entry.get("request")
    if isinstance(request, Mapping):
        typed: Mapping[str, object] = request  # pyright: ignore[reportUnknownVariableType]
        return get_str(typed, "ifNoneExist")
    return None
