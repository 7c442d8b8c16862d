"""Incremental, resumable extraction from Medplum: paged search by ``_lastUpdated``.

For each resource type the search asks for everything updated at or after the checkpoint,
oldest first (``_sort=_lastUpdated``), a page at a time. After each page is loaded the
checkpoint moves to the page's last ``meta.lastUpdated``, with the ids that share that instant
(so that ``ge`` neither misses a resource updated in the same millisecond nor loads one twice).
An interrupted run resumes from the last page it finished; a rerun fetches only what changed.

Deletions are not seen by a ``_lastUpdated`` search: ``starvit research export --full``
rebuilds the target from scratch (see docs/RESEARCH.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from app.fhir.resource_json import JSONObject, get_object, get_str
from app.integrations.medplum import MedplumClient

PAGE_SIZE = 500
MAX_PAGES = 100_000


@dataclass(frozen=True, slots=True)
class Since:
    last_updated: datetime
    boundary_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Page:
    resource_type: str
    resources: list[JSONObject]
    last_updated: datetime | None  # of the page's last resource
    boundary_ids: tuple[str, ...]  # ids updated at that instant (this page and earlier)


def last_updated(resource: JSONObject) -> datetime | None:
    meta = get_object(resource, "meta")
    text = get_str(meta, "lastUpdated") if meta else None
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _search_params(since: Since | None, page_size: int) -> dict[str, str | int]:
    params: dict[str, str | int] = {"_sort": "_lastUpdated", "_count": page_size}
    if since is not None:
        stamp = since.last_updated.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        params["_lastUpdated"] = f"ge{stamp}"
    return params


async def count_changed(medplum: MedplumClient, resource_type: str, since: Since | None) -> int:
    """How many resources the extraction will fetch (for the progress bar)."""
    params: dict[str, str | int] = {"_count": 0, "_total": "accurate"}
    if since is not None:
        params["_lastUpdated"] = _search_params(since, 0)["_lastUpdated"]
    page = await medplum.search(resource_type, params)
    return page.total or 0


async def changed_pages(
    medplum: MedplumClient,
    resource_type: str,
    since: Since | None,
    *,
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[Page]:
    boundary_at = since.last_updated if since else None
    boundary: set[str] = set(since.boundary_ids) if since else set[str]()
    async for page in medplum.search_pages(
        resource_type, _search_params(since, page_size), max_pages=MAX_PAGES
    ):
        fresh: list[JSONObject] = []
        for resource in page.resources:
            stamp = last_updated(resource)
            rid = get_str(resource, "id")
            if stamp is not None and stamp == boundary_at and rid in boundary:
                continue  # loaded by the previous run (same instant as its checkpoint)
            fresh.append(resource)
            if stamp is not None and rid is not None:
                if stamp != boundary_at:
                    boundary_at, boundary = stamp, set[str]()
                boundary.add(rid)
        yield Page(resource_type, fresh, boundary_at, tuple(sorted(boundary)))
