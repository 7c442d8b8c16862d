"""Typed views of what Medplum answers, and the typed form of a batch/transaction entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    get_object,
    get_objects,
    get_str,
    version_id_of,
)
from app.integrations.medplum.errors import OperationOutcomeSummary
from app.integrations.medplum.responses import error_for_status, version_from_etag

type HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

# With any conditional entry, Medplum runs a transaction serialisable and refuses more than
# eight entries (fhir-router batch.ts maxSerializableTransactionEntries) - when the project has
# the ``transaction-bundles`` feature; without it the bundle is processed like a batch.
MAX_CONDITIONAL_TRANSACTION_ENTRIES = 8
MAX_TRANSACTION_UPDATES = 50


JsonPatchOperation = TypedDict(
    "JsonPatchOperation",
    {
        "op": Literal["add", "remove", "replace", "move", "copy", "test"],
        "path": str,
        "value": NotRequired[JSONValue],
        "from": NotRequired[str],
    },
)


@dataclass(frozen=True, slots=True)
class ResourceResult:
    """A resource Medplum returned, with its version from ``ETag`` (or ``meta.versionId``)."""

    resource: JSONObject
    status_code: int
    version_id: str | None
    etag: str | None = None
    location: str | None = None
    last_modified: str | None = None

    @property
    def resource_type(self) -> str | None:
        return get_str(self.resource, "resourceType")

    @property
    def id(self) -> str | None:
        return get_str(self.resource, "id")

    @property
    def reference(self) -> str | None:
        """``Type/id``."""
        resource_type, resource_id = self.resource_type, self.id
        return f"{resource_type}/{resource_id}" if resource_type and resource_id else None


@dataclass(frozen=True, slots=True)
class CreateResult(ResourceResult):
    """Result of a (conditional) create: ``created`` is False when ``If-None-Exist`` matched
    exactly one existing resource (200), which is then returned."""

    created: bool = False


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One page of a searchset Bundle."""

    bundle: JSONObject
    entries: tuple[JSONObject, ...]
    total: int | None
    next_url: str | None

    @classmethod
    def from_bundle(cls, bundle: JSONObject) -> SearchResult:
        total = bundle.get("total")
        next_url: str | None = None
        for link in get_objects(bundle, "link"):
            if get_str(link, "relation") == "next":
                next_url = get_str(link, "url")
        return cls(
            bundle=bundle,
            entries=tuple(get_objects(bundle, "entry")),
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
            next_url=next_url,
        )

    @property
    def resources(self) -> list[JSONObject]:
        """Matched resources (``search.mode`` ``match`` or absent), without ``_include``s."""
        return [
            resource
            for entry in self.entries
            if (resource := get_object(entry, "resource")) is not None
            and _search_mode(entry) in (None, "match")
        ]

    @property
    def included(self) -> list[JSONObject]:
        return [
            resource
            for entry in self.entries
            if (resource := get_object(entry, "resource")) is not None
            and _search_mode(entry) == "include"
        ]


def _search_mode(entry: JSONObject) -> str | None:
    search = get_object(entry, "search")
    return get_str(search, "mode") if search is not None else None


@dataclass(frozen=True, slots=True)
class BundleEntryResult:
    """One entry of a batch-response / transaction-response Bundle."""

    index: int
    status: str
    status_code: int
    location: str | None
    etag: str | None
    version_id: str | None
    last_modified: str | None
    resource: JSONObject | None
    outcome: OperationOutcomeSummary | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def created(self) -> bool:
        return self.status_code == 201

    @property
    def reference(self) -> str | None:
        """``Type/id`` from the Location (Medplum sends ``Type/id``; others add ``_history``)."""
        if self.location:
            parts = [part for part in self.location.split("?")[0].split("/") if part]
            if "_history" in parts:
                parts = parts[: parts.index("_history")]
            if len(parts) >= 2:
                return f"{parts[-2]}/{parts[-1]}"
        if self.resource is not None:
            resource_type, resource_id = (
                get_str(self.resource, "resourceType"),
                get_str(self.resource, "id"),
            )
            if resource_type and resource_id:
                return f"{resource_type}/{resource_id}"
        return None

    def search_result(self) -> SearchResult | None:
        """For a search entry of a batch: its searchset Bundle as a page."""
        if self.resource is not None and get_str(self.resource, "resourceType") == "Bundle":
            return SearchResult.from_bundle(self.resource)
        return None


@dataclass(frozen=True, slots=True)
class BundleResponse:
    bundle_type: str | None
    entries: tuple[BundleEntryResult, ...]

    @property
    def failed(self) -> tuple[BundleEntryResult, ...]:
        return tuple(entry for entry in self.entries if not entry.ok)

    def raise_for_failed(self, *, operation: str = "batch") -> None:
        """Raise the typed error of the first failed entry (status and outcome codes only)."""
        for entry in self.entries:
            if not entry.ok:
                raise error_for_status(
                    entry.status_code,
                    outcome=entry.outcome,
                    operation=f"{operation}[{entry.index}]",
                    resource_type=None,
                    attempts=1,
                )


def _status_code(status: str) -> int:
    head = status.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def parse_bundle_response(bundle: JSONObject) -> BundleResponse:
    entries: list[BundleEntryResult] = []
    for index, entry in enumerate(get_objects(bundle, "entry")):
        response = get_object(entry, "response") or {}
        status = get_str(response, "status") or ""
        etag = get_str(response, "etag")
        resource = get_object(entry, "resource")
        outcome_json = get_object(response, "outcome")
        entries.append(
            BundleEntryResult(
                index=index,
                status=status,
                status_code=_status_code(status),
                location=get_str(response, "location"),
                etag=etag,
                version_id=version_from_etag(etag)
                or (version_id_of(resource) if resource is not None else None),
                last_modified=get_str(response, "lastModified"),
                resource=resource,
                outcome=(
                    OperationOutcomeSummary.from_json(outcome_json)
                    if outcome_json is not None
                    else None
                ),
            )
        )
    return BundleResponse(bundle_type=get_str(bundle, "type"), entries=tuple(entries))


@dataclass(frozen=True, slots=True)
class BundleRequest:
    """One batch/transaction entry. Build with the class methods; ``to_entry()`` gives JSON."""

    method: HttpMethod
    url: str
    resource: Mapping[str, object] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict[str, object])

    @classmethod
    def read(cls, resource_type: str, resource_id: str) -> BundleRequest:
        return cls("GET", f"{resource_type}/{resource_id}")

    @classmethod
    def vread(cls, resource_type: str, resource_id: str, version_id: str) -> BundleRequest:
        return cls("GET", f"{resource_type}/{resource_id}/_history/{version_id}")

    @classmethod
    def search(cls, resource_type: str, query: str = "") -> BundleRequest:
        """``query`` is an encoded query string without ``?`` (``subject=Patient/1&_count=5``)."""
        return cls("GET", f"{resource_type}?{query}" if query else resource_type)

    @classmethod
    def create(
        cls,
        resource: Mapping[str, object],
        *,
        if_none_exist: str | None = None,
        full_url: str | None = None,
    ) -> BundleRequest:
        resource_type = _resource_type(resource)
        return cls("POST", resource_type, resource, full_url=full_url, if_none_exist=if_none_exist)

    @classmethod
    def update(
        cls,
        resource: Mapping[str, object],
        *,
        if_match_version: str | None = None,
        full_url: str | None = None,
    ) -> BundleRequest:
        resource_type = _resource_type(resource)
        resource_id = get_str(resource, "id")
        if not resource_id:
            raise ValueError("an update entry needs the resource id")
        return cls(
            "PUT",
            f"{resource_type}/{resource_id}",
            resource,
            full_url=full_url,
            if_match=f'W/"{if_match_version}"' if if_match_version else None,
        )

    @classmethod
    def conditional_update(
        cls, resource: Mapping[str, object], query: str, *, full_url: str | None = None
    ) -> BundleRequest:
        """``PUT Type?query``: update the single match or create (idempotent by criteria)."""
        return cls("PUT", f"{_resource_type(resource)}?{query}", resource, full_url=full_url)

    @classmethod
    def delete(cls, resource_type: str, resource_id: str) -> BundleRequest:
        return cls("DELETE", f"{resource_type}/{resource_id}")

    @property
    def is_conditional(self) -> bool:
        """Makes Medplum run the transaction serialisable (at most 8 entries)."""
        return bool(self.if_none_exist) or (self.method in ("PUT", "DELETE") and "?" in self.url)

    @property
    def is_idempotent(self) -> bool:
        """Replaying this entry cannot duplicate an effect."""
        return _idempotent(self.method, self.url, self.if_none_exist, self.if_match)

    def to_entry(self) -> dict[str, object]:
        request: dict[str, object] = {"method": self.method, "url": self.url}
        if self.if_none_exist:
            request["ifNoneExist"] = self.if_none_exist
        if self.if_match:
            request["ifMatch"] = self.if_match
        entry: dict[str, object] = {**self.extra, "request": request}
        if self.full_url:
            entry["fullUrl"] = self.full_url
        if self.resource is not None:
            entry["resource"] = self.resource
        return entry


def _resource_type(resource: Mapping[str, object]) -> str:
    resource_type = get_str(resource, "resourceType")
    if not resource_type:
        raise ValueError("the resource has no resourceType")
    return resource_type


def _idempotent(method: str, url: str, if_none_exist: str | None, if_match: str | None) -> bool:
    if method in ("GET", "HEAD", "DELETE"):
        return True
    if method == "POST":
        return bool(if_none_exist)
    if method == "PUT":
        return bool(if_match) or "?" in url
    if method == "PATCH":
        return bool(if_match)
    return False


def entry_is_idempotent(entry: BundleRequest | Mapping[str, object]) -> bool:
    if isinstance(entry, BundleRequest):
        return entry.is_idempotent
    request = get_object(entry, "request")
    if request is None:
        return False
    return _idempotent(
        (get_str(request, "method") or "").upper(),
        get_str(request, "url") or "",
        get_str(request, "ifNoneExist"),
        get_str(request, "ifMatch"),
    )


def entries_json(entries: Sequence[BundleRequest | Mapping[str, object]]) -> list[object]:
    return [entry.to_entry() if isinstance(entry, BundleRequest) else entry for entry in entries]
