"""Load Synthea R4 bundles into Medplum the way a careful integration partner would.

The data (``../shared/data/synthea`` or ``$STARVIT_SYNTHEA_DIR``) is unmodified Synthea 2.7
output: two ``batch`` bundles of practitioners and hospitals (every entry a conditional create on
its identifier) and one ``transaction`` bundle per patient (``urn:uuid`` full URLs, plus
conditional references such as ``Practitioner?identifier=...`` to the support bundles).

**Chunks.** Medplum refuses JSON bodies over 1 MB and transactions with a conditional entry and
more than eight entries (``medplum-facts.md`` §4), and charges every bundle entry against the
membership's FHIR quota (50,000 points a minute by default: a create or update 100, a
conditional create inside a bundle 140, a search 20; §7). A 445-entry transaction costs more
than a whole minute's budget and is refused with 429 however long one waits. So each bundle is
split into chunks (default at most 900 KB, at most 10,000 quota points, at most 8 entries once a
transaction chunk holds a conditional entry, at most 50 updates) posted one after the other:

* entries are ordered so that a referenced entry is never posted after its referrer (stable:
  Synthea's own order is kept when it already is; reference cycles stay in one chunk);
* after each chunk the ``urn:uuid`` full URL of every entry is mapped to the ``Type/id`` Medplum
  created (``response.location``) and later chunks' references are rewritten with that map;
* conditional references are resolved here, one search per distinct reference (cached), because
  the Medplum stand-in stores them verbatim (the router only rewrites ``urn:uuid`` references).

**Pacing.** Medplum sends ``RateLimit`` on every FHIR response (``"fhirInteractions";r=<left>;
t=<seconds to the window's reset>``). Before each request the loader compares its cost with
what the last response said is left and, when it does not fit, waits for the window to reset
(and says so). A 429 is waited out as long as Medplum says; the loader gives up only when the
same request is refused ``rate_limit_retries`` times in a row, i.e. when waiting does not help.

**Resuming.** With a checkpoint file (``--checkpoint``; JSON lines, appended after every
answer) the entries Medplum committed are recorded by bundle file (name and SHA-256 of its
content) and entry position, with the ``Type/id`` created. A rerun skips them, maps their
``urn:uuid`` to those ids, and posts only the rest. This matters beyond saving quota: Synthea's
patient entries are plain creates, so posting a chunk again would duplicate it (only the
support bundles' conditional creates are safe to repeat). A chunk sent without an answer
recorded (the run was killed mid-request) is named when resuming, since Medplum may have
committed it.

**Refused entries.** A transaction Medplum refuses (400) names no entry: the OperationOutcome's
``expression`` is a path in the resource (``Observation.component``). The loader asks Medplum's
own validator (``$validate``, which the stand-in does not charge) about the chunk's entries of
the type the issue names, and reports the refused one by position, resource type, ``fullUrl``,
issue code and expression.

**Declared profiles.** Synthea's blood-pressure Observations declare the core ``bp`` profile,
and Medplum (5.0 and later validate declared profiles; the stand-in does the same) finds they do
not satisfy it, refusing the whole transaction. With ``drop_unsatisfied_profiles``
(``--drop-unsatisfied-profiles``, off by default) such a declaration is removed, entry by entry:
when ``$validate`` says an entry fails as declared, passes without profiles, and fails with one
of its declared profiles alone, that profile (only) is removed from the entry and the chunk is
sent again; each removal is reported, and counted per profile in the summary. A profile once
found unsatisfied is checked before later chunks are sent, so the refusal is met once per run,
not once per chunk. The demo passes the option: it wants the patients' data in Medplum, and a
profile declaration Medplum's validator rejects says nothing about the clinical content.
Without the option the load stops at the first such entry and names it.

Nothing in a progress line or an exception quotes resource contents (the bundles are synthetic,
but the loader treats them as PHI): only file names, counts, resource types, ids, ``fullUrl``
(the bundle's own ``urn:uuid``), profile URLs, statuses and OperationOutcome issue codes and
expressions.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import heapq
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Self
from urllib.parse import parse_qsl

from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    dumps,
    get_array,
    get_object,
    get_objects,
    get_str,
    iter_references,
    loads,
    loads_object,
    rewrite_resource,
)
from app.integrations.medplum import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    MAX_JSON_BODY_BYTES,
    BundleEntryResult,
    MedplumBadRequest,
    MedplumClient,
    MedplumClientConfig,
    MedplumError,
    MedplumNotFound,
    MedplumRateLimited,
    MedplumUnavailable,
    OperationOutcomeSummary,
    OutcomeIssue,
)
from app.integrations.medplum.responses import RateLimitStatus
from app.integrations.medplum.results import MAX_TRANSACTION_UPDATES
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET
from devtools.partner_api import PartnerApiWriter

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "STARVIT_SYNTHEA_DIR"
DEFAULT_DIR = PROJECT_ROOT.parent / "shared" / "data" / "synthea"
# File-name stems of Synthea's support bundles, loaded first in this order (organizations and
# locations, then practitioners and their roles).
SUPPORT_BUNDLE_PREFIXES = ("hospitalInformation", "practitionerInformation")
# A safe margin below Medplum's 1 MB (1,048,576 bytes) JSON body limit.
DEFAULT_MAX_CHUNK_BYTES = 900_000
# A fifth of Medplum's default FHIR quota (50,000 points a minute per membership): a chunk always
# fits a fresh window, and five chunks a minute go through without a 429.
DEFAULT_MAX_CHUNK_POINTS = 10_000
# Medplum's FHIR quota charges (medplum-facts.md §7): every bundle entry on its own; a
# conditional entry pays the bundle's identity search and its own search on top of the write.
READ_POINTS = 1
SEARCH_POINTS = 20
WRITE_POINTS = 100
CONDITIONAL_WRITE_POINTS = 140
# The RateLimit policies Medplum reports: quota points per membership, requests per IP.
FHIR_QUOTA_POLICY = "fhirInteractions"
REQUESTS_POLICY = "requests"
# Medplum rounds the reset up to whole seconds; a little more keeps clock skew from landing the
# next request just before the window turns.
RESET_MARGIN_SECONDS = 0.5
# FHIR ids are at most 64 characters: the size estimate assumes every urn:uuid reference grows
# to ``Type/`` plus that many (Medplum's own ids are 36-character UUIDs).
_MAX_ID_LENGTH = 64
_URN_UUID = "urn:uuid:"
_CONDITIONAL_REFERENCE = re.compile(r"^[A-Z][A-Za-z]{0,63}\?.+")

type Progress = Callable[[str], None]
type Sleep = Callable[[float], Awaitable[None]]


class SyntheaError(RuntimeError):
    """The Synthea data cannot be found or read, or a bundle cannot be split or loaded."""


class BundleFileError(SyntheaError, ValueError):
    """A file is not a readable FHIR Bundle (not JSON, not a Bundle, not of the expected type).
    The message names the file, never its contents."""


class BundleSplitError(SyntheaError):
    """A bundle cannot be split within Medplum's limits (or has an unresolvable reference)."""


class SyntheaLoadError(SyntheaError):
    """Posting a chunk failed. The message names the bundle, the chunk and, when known, the
    entry, its resource type, the HTTP status and the OperationOutcome issue codes; never
    resource contents. Earlier chunks of the bundle stay in Medplum (each chunk is atomic when
    the project has ``transaction-bundles``)."""

    def __init__(self, message: str, *, bundle: str, chunk: int | None = None) -> None:
        super().__init__(message)
        self.bundle = bundle
        self.chunk = chunk


# --- files -------------------------------------------------------------------------------------


def synthea_dir() -> Path:
    """``$STARVIT_SYNTHEA_DIR``, else ``<project root>/../shared/data/synthea``."""
    configured = os.environ.get(ENV_DIR)
    directory = Path(configured).expanduser() if configured else DEFAULT_DIR
    if not directory.is_dir():
        source = f"${ENV_DIR}" if configured else "the default location"
        raise SyntheaError(
            f"Synthea data directory not found: {directory} (from {source}); set {ENV_DIR} to "
            "the folder holding the Synthea R4 bundles (*.json)"
        )
    return directory


def is_support_bundle(path: Path) -> bool:
    """Synthea's practitioner and hospital bundles (``*hospitalInformation*.json``, ...)."""
    return any(prefix in path.name for prefix in SUPPORT_BUNDLE_PREFIXES)


def support_bundles(directory: Path) -> list[Path]:
    """The hospital bundle(s), then the practitioner bundle(s)."""
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    return [path for prefix in SUPPORT_BUNDLE_PREFIXES for path in files if prefix in path.name]


def patient_bundles(directory: Path) -> list[Path]:
    """Every other ``*.json`` bundle, sorted by file name."""
    return sorted(p for p in directory.glob("*.json") if p.is_file() and not is_support_bundle(p))


def bundle_files(
    directory: Path | None = None,
    *,
    patients: int | None = None,
    only: Sequence[str] | None = None,
    include_support: bool = True,
) -> list[Path]:
    """The bundles to load, in load order: support bundles first, then patient bundles (sorted
    by name; the first ``patients`` of them, or those whose file name starts with one of
    ``only``, e.g. ``["8dd4ed1f"]``)."""
    directory = directory or synthea_dir()
    chosen = patient_bundles(directory)
    if only is not None:
        wanted = [name.removesuffix(".json") for name in only]
        chosen = [p for p in chosen if any(p.name.startswith(w) for w in wanted)]
        missing = [w for w in wanted if not any(p.name.startswith(w) for p in chosen)]
        if missing:
            raise SyntheaError(
                f"no patient bundle in {directory} starts with: {', '.join(missing)}"
            )
    if patients is not None:
        if patients < 0:
            raise ValueError("patients must not be negative")
        chosen = chosen[:patients]
    support = support_bundles(directory) if include_support else []
    if include_support and not support:
        raise SyntheaError(f"no practitioner/hospital bundles in {directory}")
    return [*support, *chosen]


def read_bundle(path: Path, *, loadable: bool = True) -> JSONObject:
    """Read and parse one bundle file: the one way the tools read Synthea data (the loader, the
    backtest, the bot tests). :class:`BundleFileError` when the file is not JSON, not a FHIR
    Bundle or, with ``loadable``, neither a ``transaction`` nor a ``batch`` Bundle; ``OSError``
    when it cannot be read."""
    try:
        document = loads(path.read_bytes())
    except ValueError as exc:
        raise BundleFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or get_str(document, "resourceType") != "Bundle":
        raise BundleFileError(f"{path}: not a FHIR Bundle")
    if loadable and get_str(document, "type") not in ("transaction", "batch"):
        raise BundleFileError(f"{path}: neither a transaction nor a batch Bundle")
    return document


def bundle_resources(bundle: Mapping[str, object]) -> list[JSONObject]:
    """The resources of a Bundle's entries, in order (entries without one left out)."""
    return [
        resource
        for entry in get_objects(bundle, "entry")
        if (resource := get_object(entry, "resource")) is not None
    ]


# --- moving a history to the present ---------------------------------------------------------

# A FHIR date (``2011-04-02``) or dateTime/instant (``2011-04-02T10:00:00-05:00``); years alone and
# year-months are left as they are (too coarse to matter, and codes can look like years).
_FHIR_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$")
_NOT_DATES = frozenset({"id", "fullUrl", "url", "system", "reference", "versionId"})
# Their dates run past the record's last clinical event (Synthea's claims are billed, and its
# Provenance recorded, up to a year later): the newest clinical date anchors the move.
_NOT_CLINICAL = frozenset({"Claim", "ExplanationOfBenefit", "Provenance"})


def _dates(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_DATES:
                yield from _dates(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dates(item)
    elif isinstance(value, str) and _FHIR_DATE.match(value):
        yield value


def _parse_date(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _shifted(value: JSONValue, days: int) -> JSONValue:
    if isinstance(value, dict):
        return {k: v if k in _NOT_DATES else _shifted(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_shifted(item, days) for item in value]
    if isinstance(value, str) and _FHIR_DATE.match(value):
        if "T" not in value:
            return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
        moved = datetime.fromisoformat(value.replace("Z", "+00:00")) + timedelta(days=days)
        text = moved.isoformat()
        return text.replace("+00:00", "Z") if value.endswith("Z") else text
    return value


def shift_to_present(bundle: JSONObject, *, latest: datetime) -> tuple[JSONObject, int]:
    """The bundle with every full date and dateTime moved by the same whole number of days, so
    that its newest clinical one (billing and provenance apart) falls on ``latest``'s day or
    before (intervals, ages and the order of
    events are kept), and the number of days. For a demonstration on recent evidence: a
    recorded history ended years ago, and evidence older than a protocol's window opens
    nothing."""
    clinical = [
        resource
        for resource in bundle_resources(bundle)
        if get_str(resource, "resourceType") not in _NOT_CLINICAL
    ]
    found = [_parse_date(text) for text in _dates(clinical)]
    if not found:
        return bundle, 0
    days = (latest - max(found)).days
    if days <= 0:
        return bundle, 0
    moved = _shifted(bundle, days)
    assert isinstance(moved, dict)
    return moved, days


# --- references --------------------------------------------------------------------------------


def is_conditional_reference(reference: str) -> bool:
    """``Practitioner?identifier=system|value`` and the like."""
    return bool(_CONDITIONAL_REFERENCE.match(reference))


def is_conditional_entry(entry: Mapping[str, object]) -> bool:
    """A conditional create/update/delete/patch: makes Medplum run a transaction serialisable
    (then at most 8 entries)."""
    request = get_object(entry, "request")
    if request is None:
        return False
    method = (get_str(request, "method") or "").upper()
    if method == "POST":
        return bool(get_str(request, "ifNoneExist"))
    return method in ("PUT", "DELETE", "PATCH") and "?" in (get_str(request, "url") or "")


def _is_update(entry: JSONObject) -> bool:
    request = get_object(entry, "request")
    return request is not None and (get_str(request, "method") or "").upper() == "PUT"


def _resource_type(entry: JSONObject) -> str:
    resource = get_object(entry, "resource")
    return (get_str(resource, "resourceType") if resource else None) or "?"


def entry_points(entry: Mapping[str, object]) -> int:
    """What Medplum charges a batch/transaction entry against the FHIR quota: a read 1, a
    search 20, a create/update/patch/delete 100, a conditional one 140."""
    request = get_object(entry, "request")
    method = (get_str(request, "method") or "").upper() if request is not None else "POST"
    if method in ("GET", "HEAD"):
        url = (get_str(request, "url") or "") if request is not None else ""
        path = url.split("?", 1)[0].strip("/")
        return READ_POINTS if "?" not in url and path.count("/") in (1, 3) else SEARCH_POINTS
    return CONDITIONAL_WRITE_POINTS if is_conditional_entry(entry) else WRITE_POINTS


# --- splitting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Entries to post in one Bundle of the original's type. ``entries`` have the references
    known before splitting already rewritten; references to ``urn:uuid`` entries of earlier
    chunks are rewritten when the chunk is posted. ``positions`` are the entries' indexes in
    the original bundle; ``estimated_bytes`` bounds the posted body from above; ``points`` is
    what Medplum charges the chunk against the FHIR quota."""

    index: int
    bundle_type: str
    entries: tuple[JSONObject, ...]
    positions: tuple[int, ...]
    estimated_bytes: int
    conditional: bool
    points: int = 0

    def __len__(self) -> int:
        return len(self.entries)


def _bundle_overhead(bundle_type: str) -> int:
    return len(dumps({"resourceType": "Bundle", "type": bundle_type, "entry": []}))


def _strongly_connected(deps: list[set[int]]) -> list[list[int]]:
    """Tarjan's algorithm (iterative): the groups of entries that reference each other in a
    cycle; every other entry is a group of its own."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    groups: list[list[int]] = []
    counter = 0
    for root in range(len(deps)):
        if root in index_of:
            continue
        work: list[tuple[int, Iterator[int]]] = [(root, iter(sorted(deps[root])))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index_of:
                    index_of[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(deps[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                group: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def _dependency_order(deps: list[set[int]]) -> list[list[int]]:
    """Groups (cycles together) so that every entry comes after the entries it references,
    keeping the original order wherever the dependencies allow (Kahn, smallest index first)."""
    groups = _strongly_connected(deps)
    group_of = {member: g for g, group in enumerate(groups) for member in group}
    waiting_on: list[set[int]] = [set() for _ in groups]
    dependants: list[set[int]] = [set() for _ in groups]
    for g, group in enumerate(groups):
        for member in group:
            for dep in deps[member]:
                other = group_of[dep]
                if other != g:
                    waiting_on[g].add(other)
                    dependants[other].add(g)
    ready = [(group[0], g) for g, group in enumerate(groups) if not waiting_on[g]]
    heapq.heapify(ready)
    ordered: list[list[int]] = []
    while ready:
        _, g = heapq.heappop(ready)
        ordered.append(groups[g])
        for later in dependants[g]:
            waiting_on[later].discard(g)
            if not waiting_on[later]:
                heapq.heappush(ready, (groups[later][0], later))
    return ordered


def split_bundle(
    bundle: Mapping[str, object],
    *,
    resolved: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    max_points: int | None = DEFAULT_MAX_CHUNK_POINTS,
    max_conditional_entries: int = MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    max_updates: int = MAX_TRANSACTION_UPDATES,
    exclude: Collection[int] = (),
    all_conditional: bool = False,
) -> list[Chunk]:
    """Split a transaction or batch Bundle into chunks Medplum accepts.

    Every chunk's posted JSON stays under ``max_bytes`` (estimated with every ``urn:uuid``
    reference grown to ``Type/`` + a 64-character id) and costs at most ``max_points`` of the
    FHIR quota (:func:`entry_points`; ``None``: no bound); a ``transaction`` chunk holds at
    most ``max_conditional_entries`` entries once any of them is conditional, and at most
    ``max_updates`` PUTs. ``resolved`` maps references known before splitting (``urn:uuid``
    full URLs of earlier bundles or of entries committed earlier, conditional references) to
    ``Type/id``; they are rewritten in the returned entries. Entries whose positions are in
    ``exclude`` (committed by an earlier run) are left out; positions keep counting the
    original bundle's entries. A ``urn:uuid`` reference that is neither an entry of this
    bundle nor in ``resolved`` is an error, as is an entry (or reference cycle) that cannot fit
    a chunk. ``all_conditional``: every entry counts as conditional (the service's partner API
    forwards every create conditional).
    """
    bundle_type = bundle.get("type")
    if bundle_type not in ("transaction", "batch"):
        raise BundleSplitError("only transaction and batch Bundles can be split")
    transaction = bundle_type == "transaction"
    known = resolved or {}
    raw = bundle.get("entry")
    every: list[JSONObject] = (
        [e for e in raw if isinstance(e, dict)]  # pyright: ignore[reportUnknownVariableType]
        if isinstance(raw, list)
        else []
    )
    skipped = set(exclude)
    # ``origin[i]``: the position in the original bundle of the i-th entry split here.
    origin = [p for p in range(len(every)) if p not in skipped]
    entries = [rewrite_resource(every[p], known) for p in origin]
    if not entries:
        return []

    by_full_url: dict[str, int] = {}
    for position, entry in enumerate(entries):
        full_url = get_str(entry, "fullUrl")
        if full_url and full_url.startswith(_URN_UUID):
            by_full_url[full_url] = position

    deps: list[set[int]] = []
    sizes: list[int] = []
    for position, entry in enumerate(entries):
        entry_deps: set[int] = set()
        growth = 0
        for reference in iter_references(get_object(entry, "resource") or {}):
            target = by_full_url.get(reference)
            if target is not None:
                if target != position:
                    entry_deps.add(target)
                final_length = len(_resource_type(entries[target])) + 1 + _MAX_ID_LENGTH
                growth += max(0, final_length - len(reference))
            elif reference.startswith(_URN_UUID):
                raise BundleSplitError(
                    f"entry {origin[position]} ({_resource_type(entry)}) refers to a urn:uuid "
                    "that is not a fullUrl of this bundle nor created before"
                )
        deps.append(entry_deps)
        sizes.append(len(dumps(entry)) + growth)
    points = [entry_points(entry) for entry in entries]

    overhead = _bundle_overhead(str(bundle_type))
    chunks: list[Chunk] = []
    current: list[int] = []
    current_bytes = overhead
    current_conditional = False
    current_updates = 0
    current_points = 0

    def flush() -> None:
        nonlocal current, current_bytes, current_conditional, current_updates, current_points
        if current:
            chunks.append(
                Chunk(
                    index=len(chunks),
                    bundle_type=str(bundle_type),
                    entries=tuple(entries[p] for p in current),
                    positions=tuple(origin[p] for p in current),
                    estimated_bytes=current_bytes,
                    conditional=current_conditional,
                    points=current_points,
                )
            )
        current, current_bytes, current_conditional = [], overhead, False
        current_updates = current_points = 0

    def fits(count: int, size: int, conditional: bool, updates: int, cost: int) -> bool:
        if size >= max_bytes:
            return False
        if max_points is not None and cost > max_points:
            return False
        if transaction and conditional and count > max_conditional_entries:
            return False
        return not (transaction and updates > max_updates)

    for group in _dependency_order(deps):
        group_bytes = sum(sizes[p] for p in group) + len(group)  # entries plus commas
        group_conditional = all_conditional or any(is_conditional_entry(entries[p]) for p in group)
        group_updates = sum(1 for p in group if _is_update(entries[p]))
        group_points = sum(points[p] for p in group)
        if not fits(
            len(group), overhead + group_bytes, group_conditional, group_updates, group_points
        ):
            what = f"entry {origin[group[0]]} ({_resource_type(entries[group[0]])})"
            if len(group) > 1:
                what = f"a reference cycle of {len(group)} entries starting at {what}"
            raise BundleSplitError(f"{what} does not fit in one chunk within Medplum's limits")
        if current and not fits(
            len(current) + len(group),
            current_bytes + group_bytes,
            current_conditional or group_conditional,
            current_updates + group_updates,
            current_points + group_points,
        ):
            flush()
        current.extend(group)
        current_bytes += group_bytes
        current_conditional = current_conditional or group_conditional
        current_updates += group_updates
        current_points += group_points
    flush()
    return chunks


# --- pacing by Medplum's RateLimit ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaWait:
    """Why and how long to wait before a request: ``policy`` had ``remaining`` left when its
    last answer came, the request needs ``needed``, and the window resets in ``seconds``."""

    seconds: float
    policy: str
    remaining: int
    needed: int


def quota_wait(
    status: RateLimitStatus | None,
    cost: int,
    *,
    now: float,
    margin: float = RESET_MARGIN_SECONDS,
) -> QuotaWait | None:
    """Whether a request costing ``cost`` quota points (and one request) fits what Medplum's
    last ``RateLimit`` said is left, and if not how long until the window resets.

    ``t`` in the header counts from when that answer arrived (``status.observed_at``, same
    clock as ``now``): once it has passed, the window has turned and the request may go
    whatever ``r`` said. A policy at 0 makes even a free request wait (Medplum refuses every
    request of a spent membership). No status, or no such policy: no wait."""
    if status is None:
        return None
    elapsed = max(0.0, now - status.observed_at)
    waits: list[QuotaWait] = []
    for name, needed in ((FHIR_QUOTA_POLICY, cost), (REQUESTS_POLICY, 1)):
        policy = status.policy(name)
        if policy is None:
            continue
        left = policy.reset_seconds - elapsed
        if left <= 0:
            continue
        if policy.remaining >= needed and policy.remaining > 0:
            continue
        waits.append(QuotaWait(left + margin, name, policy.remaining, needed))
    return max(waits, key=lambda wait: wait.seconds, default=None)


# --- checkpoint ----------------------------------------------------------------------------------

_CHECKPOINT_FORMAT = "starvit-synthea-checkpoint"
_CHECKPOINT_VERSION = 1


def file_digest(path: Path) -> str:
    """SHA-256 of a bundle file: a checkpoint entry only counts for the same content."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Checkpoint:
    """What earlier runs committed, as JSON lines appended to one file, so that a rerun after
    an interruption posts only what is missing.

    The first line names the server (its base URL); then, for every chunk, a ``sent`` line
    before it is posted and an ``answered`` line with the positions Medplum committed and the
    ``Type/id`` of each, keyed by bundle file name and the SHA-256 of its content. Keys are
    entry positions, not chunk numbers: a rerun with other chunk limits still skips exactly the
    committed entries. A ``sent`` line without its ``answered`` line is a chunk whose outcome
    is unknown (the run stopped mid-request). Appending (and fsync) after each answer keeps the
    file valid whenever the run stops; an incomplete last line is ignored."""

    def __init__(self, path: Path, server: str, stream: IO[bytes]) -> None:
        self.path = path
        self.server = server
        self._stream = stream
        self._committed: dict[tuple[str, str], dict[int, str]] = {}
        self._in_flight: dict[tuple[str, str], tuple[int, ...]] = {}

    @classmethod
    def open(cls, path: Path, server: str, *, restart: bool = False) -> Self:
        """Read ``path`` (if it exists and ``restart`` is not asked) and append to it.
        :class:`SyntheaError` when it was written for another server or is not a checkpoint."""
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("ab")
        try:
            # Two loads appending to one checkpoint would each skip the other's entries.
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.close()
            raise SyntheaError(f"checkpoint {path} is in use by another load") from None
        raw = b"" if restart else path.read_bytes()
        records = [r for line in raw.splitlines() if (r := loads_object(line)) is not None]
        if records or raw.strip():
            header = records[0] if records else {}
            problem = None
            if get_str(header, "format") != _CHECKPOINT_FORMAT:
                problem = f"{path} is not a Synthea load checkpoint (left as it is)"
            elif (written_for := get_str(header, "server")) != server:
                problem = (
                    f"checkpoint {path} records a load into {written_for}, not {server}: pass "
                    "another checkpoint file, or restart it"
                )
            if problem is not None:
                stream.close()
                raise SyntheaError(problem)
            if not raw.endswith(b"\n"):
                # A line torn by the stopped run: what is appended starts on a line of its own.
                stream.write(b"\n")
        else:
            stream.truncate(0)
        checkpoint = cls(path, server, stream)
        if not records:
            checkpoint._append(
                {"format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "server": server}
            )
        for record in records[1:]:
            checkpoint._replay(record)
        return checkpoint

    def _replay(self, record: JSONObject) -> None:
        bundle, digest = get_str(record, "bundle"), get_str(record, "sha256")
        if not bundle or not digest:
            return
        key = (bundle, digest)
        sent = get_array(record, "sent")
        if sent:
            self._in_flight[key] = tuple(p for p in sent if isinstance(p, int))
            return
        answered = get_object(record, "answered")
        if answered is not None:
            self._in_flight.pop(key, None)
            committed = self._committed.setdefault(key, {})
            for position, reference in answered.items():
                if position.isdigit() and isinstance(reference, str):
                    committed[int(position)] = reference

    def _append(self, record: Mapping[str, object]) -> None:
        self._stream.write(dumps(record) + b"\n")
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def committed(self, bundle: str, digest: str) -> dict[int, str]:
        """Positions of ``bundle`` (with this content) committed earlier, with ``Type/id``."""
        return dict(self._committed.get((bundle, digest), {}))

    def in_flight(self, bundle: str, digest: str) -> tuple[int, ...]:
        """Positions sent by an earlier run without an answer recorded."""
        return self._in_flight.get((bundle, digest), ())

    def any_reference(self) -> str | None:
        """One ``Type/id`` recorded as committed (the latest), to check the server has it."""
        for committed in reversed(list(self._committed.values())):
            if committed:
                return next(reversed(committed.values()))
        return None

    def sent(self, bundle: str, digest: str, positions: Sequence[int]) -> None:
        self._in_flight[(bundle, digest)] = tuple(positions)
        self._append({"bundle": bundle, "sha256": digest, "sent": list(positions)})

    def answered(self, bundle: str, digest: str, committed: Mapping[int, str]) -> None:
        """Medplum answered the last chunk sent: these positions are committed (possibly
        none, when it refused the chunk)."""
        key = (bundle, digest)
        self._in_flight.pop(key, None)
        self._committed.setdefault(key, {}).update(committed)
        self._append(
            {
                "bundle": bundle,
                "sha256": digest,
                "answered": {str(p): ref for p, ref in sorted(committed.items())},
            }
        )

    def close(self) -> None:
        self._stream.close()


# --- profiles ------------------------------------------------------------------------------------


def declared_profiles(resource: Mapping[str, object]) -> tuple[str, ...]:
    meta = get_object(resource, "meta")
    if meta is None:
        return ()
    return tuple(p for p in get_array(meta, "profile") if isinstance(p, str))


def with_profiles(resource: JSONObject, profiles: Sequence[str]) -> JSONObject:
    """A copy of ``resource`` declaring exactly ``profiles`` (``meta.profile`` removed, and an
    emptied ``meta`` with it, when there are none)."""
    meta: JSONObject = dict(get_object(resource, "meta") or {})
    if profiles:
        meta["profile"] = list[JSONValue](profiles)
    else:
        meta.pop("profile", None)
    copy: JSONObject = dict(resource)
    if meta:
        copy["meta"] = meta
    else:
        copy.pop("meta", None)
    return copy


def drop_profiles(entry: JSONObject, unsatisfied: Collection[str]) -> JSONObject:
    """A copy of the bundle entry whose resource no longer declares ``unsatisfied``."""
    resource = get_object(entry, "resource")
    if resource is None:
        return entry
    kept = [p for p in declared_profiles(resource) if p not in unsatisfied]
    return {**entry, "resource": with_profiles(resource, kept)}


def issue_resource_types(outcome: OperationOutcomeSummary | None) -> set[str]:
    """The resource types an OperationOutcome's expressions start with (``Observation`` for
    ``Observation.component``), leaving out ``Bundle`` paths."""
    types: set[str] = set()
    if outcome is None:
        return types
    for issue in outcome.issues:
        for expression in issue.expression:
            head = expression.split(".", 1)[0].split("[", 1)[0]
            if head and head[0].isupper() and head != "Bundle":
                types.add(head)
    return types


def _error_issues(outcome: OperationOutcomeSummary | None) -> tuple[OutcomeIssue, ...]:
    if outcome is None:
        return ()
    errors = tuple(i for i in outcome.issues if i.severity in ("error", "fatal"))
    return errors or outcome.issues


# --- loading -------------------------------------------------------------------------------------


@dataclass(slots=True)
class BundleReport:
    name: str
    bundle_type: str
    entries: int
    chunks: int = 0
    created: Counter[str] = field(default_factory=Counter[str])
    existing: int = 0
    patient_id: str | None = None
    elapsed_seconds: float = 0.0
    # Entries committed by an earlier run (from the checkpoint), not posted again.
    resumed: int = 0
    # Declared profiles removed because the entry did not satisfy them, per profile URL.
    dropped_profiles: Counter[str] = field(default_factory=Counter[str])


@dataclass(slots=True)
class LoadSummary:
    """What :func:`load` did: resources created by type (201s), conditional creates that found
    their resource already there (200s), the Patient ids created (or, when resumed, created by
    the earlier run), per-bundle reports, profile declarations dropped, waits for the quota."""

    bundles: list[BundleReport] = field(default_factory=list[BundleReport])
    created_by_type: Counter[str] = field(default_factory=Counter[str])
    existing: int = 0
    patient_ids: list[str] = field(default_factory=list[str])
    chunks: int = 0
    elapsed_seconds: float = 0.0
    resumed: int = 0
    dropped_profiles: Counter[str] = field(default_factory=Counter[str])
    quota_waits: int = 0
    quota_wait_seconds: float = 0.0
    throttled: int = 0

    @property
    def created(self) -> int:
        return sum(self.created_by_type.values())


def partner_config(
    base_url: str, *, client_id: str = PARTNER_CLIENT_ID, client_secret: str = PARTNER_CLIENT_SECRET
) -> MedplumClientConfig:
    """Client settings for the integration partner (the stand-in's ``partner-acme``, dev
    secret, unless told otherwise)."""
    return MedplumClientConfig(base_url=base_url, client_id=client_id, client_secret=client_secret)


def _counts_text(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count}" for name, count in ordered) or "none"


def _issue_text(issue: OutcomeIssue) -> str:
    """Issue code, where, and the server's diagnostics with quoted values already cut out
    (:func:`sanitise_diagnostics`)."""
    parts = [issue.code or "?"]
    if issue.expression:
        parts.append(f"at {','.join(issue.expression)}")
    text = " ".join(parts)
    return f"{text}: {issue.diagnostics}" if issue.diagnostics else text


def _outcome_text(outcome: OperationOutcomeSummary | None) -> str:
    issues = _error_issues(outcome)[:3]
    return f" ({'; '.join(_issue_text(i) for i in issues)})" if issues else ""


def _error_text(error: MedplumError) -> str:
    # MedplumError's text names operation, type, status and issue codes only (no bodies).
    return str(error) + _outcome_text(error.operation_outcome)


def _entry_failure(result: BundleEntryResult) -> str:
    return f"HTTP {result.status_code}{_outcome_text(result.outcome)}"


class _ValidateUnavailable(SyntheaLoadError):
    """Medplum's ``$validate`` could not be used (not offered, not allowed, failing)."""

    def __init__(self, bundle: str, detail: str) -> None:
        super().__init__(
            f"{bundle}: Medplum's $validate could not be used: {detail}", bundle=bundle
        )
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An entry Medplum's validator refuses: its issues, and which of its declared profiles
    alone it fails (``None``: it fails without any profile too, so not for a profile)."""

    index: int
    outcome: OperationOutcomeSummary | None
    unsatisfied: tuple[str, ...] | None


@dataclass(slots=True)
class _Posting:
    """One chunk being posted: where it comes from, and its entries as they will be sent
    (declarations of unsatisfied profiles dropped)."""

    chunk: Chunk
    name: str
    digest: str
    label: str
    report: BundleReport
    entries: list[JSONObject]

    def entry_name(self, i: int) -> str:
        """``entry 37 (Observation urn:uuid:...)``: position in the bundle file, type, URL."""
        full_url = get_str(self.entries[i], "fullUrl")
        where = f" {full_url}" if full_url else ""
        return f"entry {self.chunk.positions[i]} ({_resource_type(self.entries[i])}{where})"

    def error(self, message: str) -> SyntheaLoadError:
        return SyntheaLoadError(
            f"{self.name}: {self.label} {message}", bundle=self.name, chunk=self.chunk.index
        )


@dataclass(slots=True)
class _Loader:
    medplum: MedplumClient
    progress: Progress
    sleep: Sleep
    clock: Callable[[], float]
    max_chunk_bytes: int
    max_chunk_points: int | None
    rate_limit_retries: int
    default_rate_limit_wait: float
    drop_unsatisfied_profiles: bool
    checkpoint: Checkpoint | None
    summary: LoadSummary
    # Writes through the service's partner API instead of straight to Medplum (make demo).
    writer: PartnerApiWriter | None = None
    # Patient histories moved so that their newest date falls on this day (see shift_to_present).
    shift_to: datetime | None = None
    # urn:uuid full URLs and conditional references -> Type/id, across all bundles.
    resolved: dict[str, str] = field(default_factory=dict[str, str])
    # Profiles some entry was found not to satisfy: checked before later chunks are sent.
    unsatisfied_seen: set[str] = field(default_factory=set[str])

    # --- quota ---------------------------------------------------------------------------

    async def pace(self, cost: int, what: str) -> None:
        """Wait for the quota window to reset when ``what`` (``cost`` points) does not fit
        what Medplum's last answer said is left."""
        wait = quota_wait(self.medplum.last_rate_limit, cost, now=self.clock())
        if wait is None:
            return
        needs = f"{wait.needed:,} point{'s' if wait.needed != 1 else ''}"
        if wait.policy == REQUESTS_POLICY:
            needs = "a request"
        self.progress(
            f"  waiting {wait.seconds:.1f} s for Medplum's '{wait.policy}' window to reset: "
            f"{what} needs {needs}, {wait.remaining:,} left"
        )
        self.summary.quota_waits += 1
        self.summary.quota_wait_seconds += wait.seconds
        await self.sleep(wait.seconds)

    def throttle_wait(self, error: MedplumRateLimited | None) -> float:
        """How long a 429 says to wait: its reset, else the reset in the last RateLimit (a
        batch answers 200 with 429 entries), else a default."""
        if error is not None and error.retry_after is not None and error.retry_after > 0:
            return error.retry_after + RESET_MARGIN_SECONDS
        status = self.medplum.last_rate_limit
        policy = status.policy(FHIR_QUOTA_POLICY) if status is not None else None
        if status is not None and policy is not None:
            left = policy.reset_seconds - (self.clock() - status.observed_at)
            if left > 0:
                return left + RESET_MARGIN_SECONDS
        return self.default_rate_limit_wait

    async def throttled(self, attempts: int, what: str, wait: float, name: str) -> None:
        """A 429: wait as Medplum says, unless ``what`` was refused too often in a row."""
        self.summary.throttled += 1
        if attempts > self.rate_limit_retries:
            raise SyntheaLoadError(
                f"{name}: {what} still rate limited after {attempts} attempts in a row, each "
                "after waiting for Medplum's quota window to reset: the quota does not refill "
                "for this membership (another client using it, or a quota per minute below "
                f"the chunk's cost: lower --max-chunk-points below {self.max_chunk_points})",
                bundle=name,
            )
        self.progress(
            f"  {what}: Medplum answered 429 (quota spent), waiting {wait:.1f} s for the reset "
            f"it announced (attempt {attempts})"
        )
        await self.sleep(wait)

    # --- validation ----------------------------------------------------------------------

    async def validate(self, resource: JSONObject, name: str) -> OperationOutcomeSummary | None:
        """Medplum's ``$validate`` verdict: None when valid, else the OperationOutcome.
        :class:`_ValidateUnavailable` when the server cannot validate (no ``$validate``, no
        access, a server error); :class:`SyntheaLoadError` when it keeps throttling."""
        resource_type = get_str(resource, "resourceType") or "?"
        attempts = 0
        while True:
            await self.pace(1, f"$validate ({resource_type})")
            try:
                await self.medplum.operation(
                    resource_type, None, "validate", resource, idempotent=True
                )
            except MedplumBadRequest as error:
                return error.operation_outcome or OperationOutcomeSummary(None, ())
            except MedplumRateLimited as error:
                attempts += 1
                await self.throttled(attempts, "$validate", self.throttle_wait(error), name)
            except MedplumError as error:
                raise _ValidateUnavailable(name, _error_text(error)) from None
            else:
                return None

    async def refusal(self, posting: _Posting, i: int) -> _Refusal | None:
        """Whether Medplum refuses entry ``i`` as it would be sent, and if so whether for a
        declared profile: valid without any profile, invalid with one of them alone."""
        resource = get_object(posting.entries[i], "resource")
        if resource is None:
            return None
        resource = rewrite_resource(resource, self.resolved)
        outcome = await self.validate(resource, posting.name)
        if outcome is None:
            return None
        profiles = declared_profiles(resource)
        if not profiles or (
            await self.validate(with_profiles(resource, ()), posting.name) is not None
        ):
            return _Refusal(i, outcome, None)
        unsatisfied = [
            profile
            for profile in profiles
            if await self.validate(with_profiles(resource, (profile,)), posting.name) is not None
        ]
        return _Refusal(i, outcome, tuple(unsatisfied or profiles))

    def drop(self, posting: _Posting, refusals: Sequence[_Refusal]) -> None:
        """Remove from each refused entry the declarations it does not satisfy, and say so."""
        for refusal in refusals:
            unsatisfied = refusal.unsatisfied or ()
            posting.entries[refusal.index] = drop_profiles(
                posting.entries[refusal.index], unsatisfied
            )
            self.unsatisfied_seen.update(unsatisfied)
            for profile in unsatisfied:
                posting.report.dropped_profiles[profile] += 1
                self.summary.dropped_profiles[profile] += 1
            self.progress(
                f"  {posting.label}: {posting.entry_name(refusal.index)} does not satisfy "
                f"{', '.join(unsatisfied)}: declaration dropped"
            )

    async def check_known_profiles(self, posting: _Posting) -> None:
        """Before sending: ask about the entries that declare a profile found unsatisfied
        earlier in this run, and drop the declarations they do not satisfy. This spends a
        few uncharged ``$validate`` calls instead of a refused transaction, which Medplum
        charges."""
        refusals: list[_Refusal] = []
        for i, entry in enumerate(posting.entries):
            resource = get_object(entry, "resource")
            if resource is None or not self.unsatisfied_seen.intersection(
                declared_profiles(resource)
            ):
                continue
            found = await self.refusal(posting, i)
            if found is not None and found.unsatisfied:
                refusals.append(found)
        self.drop(posting, refusals)

    async def refused_entries(
        self, posting: _Posting, error: MedplumError, pending: Sequence[int]
    ) -> list[_Refusal]:
        """The entries of a refused transaction that Medplum's validator refuses, among those
        of the resource type(s) the OperationOutcome's expressions name (all, if none)."""
        types = issue_resource_types(error.operation_outcome)
        refusals: list[_Refusal] = []
        for i in pending:
            if types and _resource_type(posting.entries[i]) not in types:
                continue
            found = await self.refusal(posting, i)
            if found is not None:
                refusals.append(found)
        return refusals

    def refused_error(
        self, posting: _Posting, refusals: Sequence[_Refusal], status: int | None
    ) -> SyntheaLoadError:
        first = refusals[0]
        others = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
        hint = ""
        if first.unsatisfied:
            hint = (
                f"; it does not satisfy its declared {', '.join(first.unsatisfied)}: "
                "--drop-unsatisfied-profiles removes such declarations"
            )
        return posting.error(
            f"refused (HTTP {status}) at {posting.entry_name(first.index)}"
            f"{_outcome_text(first.outcome)}{others}{hint}"
        )

    # --- posting -------------------------------------------------------------------------

    async def resolve_conditional(self, entries: Sequence[JSONObject], name: str) -> None:
        references = {
            ref
            for entry in entries
            for ref in iter_references(entry)
            if ref not in self.resolved and is_conditional_reference(ref)
        }
        for reference in sorted(references):
            resource_type, _, query = reference.partition("?")
            params = [*parse_qsl(query, keep_blank_values=True), ("_count", "2")]
            attempts = 0
            while True:
                await self.pace(SEARCH_POINTS, f"resolving a conditional {resource_type} reference")
                try:
                    page = await self.medplum.search(resource_type, params)
                except MedplumRateLimited as error:
                    attempts += 1
                    await self.throttled(attempts, "a search", self.throttle_wait(error), name)
                    continue
                except MedplumError as error:
                    raise SyntheaLoadError(
                        f"{name}: resolving a conditional {resource_type} reference failed: "
                        f"{_error_text(error)}",
                        bundle=name,
                    ) from None
                break
            matches = page.resources
            if len(matches) != 1:
                raise SyntheaLoadError(
                    f"{name}: a conditional {resource_type} reference matched {len(matches)} "
                    "resources, expected exactly one (are the practitioner and hospital bundles "
                    "loaded?)",
                    bundle=name,
                )
            found_id = get_str(matches[0], "id")
            if not found_id:
                raise SyntheaLoadError(f"{name}: search result without an id", bundle=name)
            self.resolved[reference] = f"{resource_type}/{found_id}"

    def record(self, posting: _Posting, committed: Mapping[int, str]) -> None:
        if self.checkpoint is not None:
            positions = posting.chunk.positions
            self.checkpoint.answered(
                posting.name, posting.digest, {positions[i]: ref for i, ref in committed.items()}
            )

    async def post_chunk(self, posting: _Posting) -> list[BundleEntryResult]:
        """Post a chunk, paced by the quota. Entries throttled (429) inside a batch-like
        answer are sent again after the reset, the whole chunk after a 429 for the request
        (not applied). With ``drop_unsatisfied_profiles``, entries refused for a declared
        profile they do not satisfy lose that declaration and are sent again."""
        chunk = posting.chunk
        results: dict[int, BundleEntryResult] = {}
        pending = list(range(len(posting.entries)))
        if self.drop_unsatisfied_profiles and self.unsatisfied_seen:
            await self.check_known_profiles(posting)
        throttled_attempts = 0
        while pending:
            body = [rewrite_resource(posting.entries[i], self.resolved) for i in pending]
            cost = sum(entry_points(entry) for entry in body)
            await self.pace(cost, f"{posting.label} ({len(body)} entries)")
            if self.checkpoint is not None:
                self.checkpoint.sent(
                    posting.name, posting.digest, [chunk.positions[i] for i in pending]
                )
            throttle: MedplumRateLimited | None = None
            throttled: list[int] = []
            retry: list[int] = []
            try:
                writer = self.writer or self.medplum
                if chunk.bundle_type == "transaction":
                    response = await writer.transaction(body)
                else:
                    response = await writer.batch(body)
            except MedplumRateLimited as error:
                self.record(posting, {})
                throttle, throttled = error, pending
            except MedplumUnavailable as error:
                # No answer, or a server error: whether Medplum committed the chunk is not
                # known, so the checkpoint keeps it marked as sent.
                raise posting.error(f"failed: {_error_text(error)}") from None
            except MedplumBadRequest as error:
                self.record(posting, {})
                try:
                    refusals = await self.refused_entries(posting, error, pending)
                except _ValidateUnavailable as unavailable:
                    raise posting.error(
                        f"failed: {_error_text(error)}; which entry is not known (Medplum's "
                        f"$validate could not be used: {unavailable.detail})"
                    ) from None
                if not refusals:
                    raise posting.error(
                        f"failed: {_error_text(error)}; Medplum's $validate accepts every entry "
                        "of the chunk, so the cause is not one entry's content"
                    ) from None
                if not (self.drop_unsatisfied_profiles and all(r.unsatisfied for r in refusals)):
                    raise self.refused_error(posting, refusals, error.status_code) from None
                self.drop(posting, refusals)
                continue
            except MedplumError as error:
                self.record(posting, {})
                raise posting.error(f"failed: {_error_text(error)}") from None
            else:
                if len(response.entries) != len(pending):
                    raise posting.error(
                        f"got {len(response.entries)} entries from Medplum for {len(pending)}"
                    )
                committed: dict[int, str] = {}
                failed: list[tuple[int, BundleEntryResult]] = []
                for i, result in zip(pending, response.entries, strict=True):
                    if result.ok:
                        results[i] = result
                        full_url = get_str(posting.entries[i], "fullUrl")
                        if result.reference:
                            committed[i] = result.reference
                            if full_url:
                                self.resolved[full_url] = result.reference
                    elif result.status_code == 429:
                        throttled.append(i)
                    else:
                        failed.append((i, result))
                self.record(posting, committed)
                retry = await self.entry_failures(posting, failed)
            if not throttled and not retry:
                break
            if throttled:
                throttled_attempts += 1
                await self.throttled(
                    throttled_attempts,
                    f"{posting.label} ({len(throttled)} entries)",
                    self.throttle_wait(throttle),
                    posting.name,
                )
            else:
                throttled_attempts = 0
            pending = sorted({*throttled, *retry})
        return [results[i] for i in range(len(posting.entries))]

    async def entry_failures(
        self, posting: _Posting, failed: Sequence[tuple[int, BundleEntryResult]]
    ) -> list[int]:
        """Entries a batch-like answer refused: with ``drop_unsatisfied_profiles``, those
        refused for a declared profile lose it and are returned to be sent again; any other
        failure is raised, naming the entry."""
        retry: list[_Refusal] = []
        for i, result in failed:
            if self.drop_unsatisfied_profiles and result.status_code in (400, 422):
                resource = get_object(posting.entries[i], "resource")
                if resource is not None and declared_profiles(resource):
                    found = await self.refusal(posting, i)
                    if found is not None and found.unsatisfied:
                        retry.append(found)
                        continue
            raise posting.error(f"failed at {posting.entry_name(i)}: {_entry_failure(result)}")
        self.drop(posting, retry)
        return [r.index for r in retry]

    async def load_bundle(self, path: Path, position: str) -> BundleReport:
        started = time.monotonic()
        name = path.name
        bundle = read_bundle(path)
        if self.shift_to is not None and not is_support_bundle(path):
            bundle, days = shift_to_present(bundle, latest=self.shift_to)
            if days:
                self.progress(f"{position} {name}: history moved {days:,} days forward")
        digest = file_digest(path)
        bundle_type = get_str(bundle, "type") or "?"
        all_entries = get_objects(bundle, "entry")
        report = BundleReport(name=name, bundle_type=bundle_type, entries=len(all_entries))
        done: dict[int, str] = {}
        if self.checkpoint is not None:
            done = self.checkpoint.committed(name, digest)
            unknown = [p for p in self.checkpoint.in_flight(name, digest) if p not in done]
            if unknown:
                self.progress(
                    f"{position} {name}: {len(unknown)} entries (from entry {min(unknown)}) were "
                    "sent by an earlier run that stopped before Medplum's answer: if Medplum "
                    "committed them, the plain creates among them now exist twice"
                )
        for index, reference in done.items():
            if index < len(all_entries):
                full_url = get_str(all_entries[index], "fullUrl")
                if full_url:
                    self.resolved[full_url] = reference
                if _resource_type(all_entries[index]) == "Patient" and not report.patient_id:
                    report.patient_id = reference.split("/", 1)[1]
        report.resumed = len(done)
        remaining = [e for i, e in enumerate(all_entries) if i not in done]
        if not remaining:
            self.progress(
                f"{position} {name}: all {report.entries} entries committed by an earlier run "
                "(checkpoint): skipped"
            )
            report.elapsed_seconds = time.monotonic() - started
            return report
        await self.resolve_conditional(remaining, name)
        # The partner API refuses a partner's Provenance (the service records its own, naming
        # the partner): through it, Synthea's are left out.
        own_provenance = (
            {i for i, e in enumerate(all_entries) if _resource_type(e) == "Provenance"}
            if self.writer is not None
            else set[int]()
        )
        if own_provenance:
            self.progress(
                f"{position} {name}: {len(own_provenance)} Provenance left out (the partner API "
                "records its own)"
            )
        try:
            chunks = split_bundle(
                bundle,
                resolved=self.resolved,
                max_bytes=self.max_chunk_bytes,
                max_points=self.max_chunk_points,
                exclude={*done.keys(), *own_provenance},
                all_conditional=self.writer is not None,
            )
        except BundleSplitError as error:
            raise SyntheaLoadError(f"{name}: {error}", bundle=name) from None
        report.chunks = len(chunks)
        resumed = f", {len(done)} committed earlier" if done else ""
        self.progress(
            f"{position} {name}: {report.entries} entries ({bundle_type}{resumed}) "
            f"in {len(chunks)} chunk{'s' if len(chunks) != 1 else ''}"
        )
        for chunk in chunks:
            label = f"chunk {chunk.index + 1}/{len(chunks)}"
            chunk_started = time.monotonic()
            posting = _Posting(chunk, name, digest, label, report, list(chunk.entries))
            results = await self.post_chunk(posting)
            created = 0
            for entry, result in zip(chunk.entries, results, strict=True):
                resource_type = _resource_type(entry)
                if result.created:
                    created += 1
                    report.created[resource_type] += 1
                    if resource_type == "Patient" and result.reference and not report.patient_id:
                        report.patient_id = result.reference.split("/", 1)[1]
                else:
                    report.existing += 1
            self.progress(
                f"  {label}: {len(chunk)} entries, {chunk.points:,} points, "
                f"{chunk.estimated_bytes // 1024} KB max -> {created} created, "
                f"{len(chunk) - created} existing ({time.monotonic() - chunk_started:.2f} s)"
            )
        report.elapsed_seconds = time.monotonic() - started
        patient = f"; Patient/{report.patient_id}" if report.patient_id else ""
        dropped = (
            f"; profiles dropped: {_counts_text(report.dropped_profiles)}"
            if report.dropped_profiles
            else ""
        )
        self.progress(
            f"  done: {sum(report.created.values())} created ({_counts_text(report.created)}), "
            f"{report.existing} existing in {report.elapsed_seconds:.2f} s{patient}{dropped}"
        )
        return report


async def _check_checkpoint(medplum: MedplumClient, checkpoint: Checkpoint) -> None:
    """A checkpoint of a server that lost its data (a restarted stand-in) would make the rerun
    skip entries that are not there: read one recorded resource first."""
    reference = checkpoint.any_reference()
    if reference is None:
        return
    resource_type, _, resource_id = reference.partition("/")
    try:
        await medplum.read(resource_type, resource_id)
    except MedplumNotFound:
        raise SyntheaError(
            f"checkpoint {checkpoint.path} records {reference}, which {checkpoint.server} does "
            "not have (a reset or different server?): restart the checkpoint"
        ) from None


async def load(
    medplum: MedplumClient,
    *,
    patients: int | None = None,
    only: Sequence[str] | None = None,
    directory: Path | None = None,
    include_support: bool = True,
    progress: Progress | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    max_chunk_points: int | None = DEFAULT_MAX_CHUNK_POINTS,
    drop_unsatisfied_profiles: bool = False,
    checkpoint: Path | None = None,
    restart_checkpoint: bool = False,
    rate_limit_retries: int = 8,
    default_rate_limit_wait: float = 60.0,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    service_url: str | None = None,
    shift_to: datetime | None = None,
) -> LoadSummary:
    """Post the practitioner and hospital bundles, then the patient bundles (all, the first
    ``patients``, or those named in ``only``), chunk by chunk, in sequence.

    ``medplum`` should authenticate as an integration partner (see :func:`partner_config`).
    ``progress`` receives readable lines (including every wait and why). Chunks cost at most
    ``max_chunk_points`` of the FHIR quota; each request waits for the quota window's reset
    when Medplum's last ``RateLimit`` says it does not fit; a 429 is waited out (Medplum's
    reset, else ``default_rate_limit_wait``) and the loader gives up only after
    ``rate_limit_retries`` refusals in a row of the same request. ``checkpoint`` is a file
    recording what was committed (a rerun skips it; ``restart_checkpoint`` starts it afresh).
    ``drop_unsatisfied_profiles``: see the module docs. ``clock`` must be the client's clock
    (``time.monotonic`` unless the client was given another). A failed chunk raises
    :class:`SyntheaLoadError`. With ``service_url`` the chunks are posted through the
    service's partner API (``POST /v1/bundles``) with the partner's token, not to Medplum.
    ``shift_to``: each patient's history is moved forward so its newest date falls on that day
    (:func:`shift_to_present`).
    """
    if max_chunk_bytes >= MAX_JSON_BODY_BYTES:
        raise ValueError("max_chunk_bytes must stay below Medplum's 1 MB JSON limit")
    if max_chunk_points is not None and max_chunk_points < CONDITIONAL_WRITE_POINTS:
        raise ValueError(f"max_chunk_points must be at least {CONDITIONAL_WRITE_POINTS}")
    say: Progress = progress or (lambda _line: None)
    started = time.monotonic()
    directory = directory or synthea_dir()
    files = bundle_files(directory, patients=patients, only=only, include_support=include_support)
    n_patients = sum(1 for f in files if not is_support_bundle(f))
    say(
        f"Synthea data: {directory} ({len(files) - n_patients} support bundles, "
        f"{n_patients} patient bundles)"
    )
    summary = LoadSummary()
    opened = (
        Checkpoint.open(checkpoint, medplum.config.root_url, restart=restart_checkpoint)
        if checkpoint is not None
        else None
    )
    try:
        if opened is not None:
            await _check_checkpoint(medplum, opened)
            say(f"checkpoint: {opened.path}")
        loader = _Loader(
            medplum=medplum,
            progress=say,
            sleep=sleep,
            clock=clock,
            max_chunk_bytes=max_chunk_bytes,
            max_chunk_points=max_chunk_points,
            rate_limit_retries=rate_limit_retries,
            default_rate_limit_wait=default_rate_limit_wait,
            drop_unsatisfied_profiles=drop_unsatisfied_profiles,
            checkpoint=opened,
            summary=summary,
            writer=(
                PartnerApiWriter(service_url, medplum, say, sleep=sleep)
                if service_url is not None
                else None
            ),
            shift_to=shift_to,
        )
        for number, path in enumerate(files, start=1):
            report = await loader.load_bundle(path, f"[{number}/{len(files)}]")
            summary.bundles.append(report)
            summary.created_by_type.update(report.created)
            summary.existing += report.existing
            summary.chunks += report.chunks
            summary.resumed += report.resumed
            if report.patient_id:
                summary.patient_ids.append(report.patient_id)
    finally:
        if opened is not None:
            opened.close()
    summary.elapsed_seconds = time.monotonic() - started
    resumed = f", {summary.resumed} committed by an earlier run" if summary.resumed else ""
    say(
        f"Loaded {len(files)} bundles in {summary.chunks} chunks: {summary.created} resources "
        f"created, {summary.existing} existing{resumed}, {len(summary.patient_ids)} patients, "
        f"{summary.created_by_type.get('Observation', 0)} Observations "
        f"in {summary.elapsed_seconds:.1f} s"
    )
    if summary.quota_waits or summary.throttled:
        say(
            f"FHIR quota: waited {summary.quota_waits} times for the window to reset "
            f"({summary.quota_wait_seconds:.0f} s), {summary.throttled} answers 429"
        )
    if summary.dropped_profiles:
        say(
            "profile declarations dropped (not satisfied, per profile): "
            + _counts_text(summary.dropped_profiles)
        )
    return summary
