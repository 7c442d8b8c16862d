"""Load Synthea R4 bundles into Medplum the way an integration partner would.

The data (``../shared/data/synthea`` or ``$STARVIT_SYNTHEA_DIR``) is unmodified Synthea 2.7
output: two ``batch`` bundles of practitioners and hospitals (every entry a conditional create on
its identifier) and one ``transaction`` bundle per patient (``urn:uuid`` full URLs, plus
conditional references such as ``Practitioner?identifier=...`` to the support bundles).

Medplum refuses JSON bodies over 1 MB and transactions with a conditional entry and more than
eight entries (``medplum-facts.md`` §4), so each bundle is split into chunks (default at most
900 KB, at most 8 entries once a transaction chunk holds a conditional entry, at most 50
updates) that are posted one after the other:

* entries are ordered so that a referenced entry is never posted after its referrer (stable:
  Synthea's own order is kept when it already is; reference cycles stay in one chunk);
* after each chunk the ``urn:uuid`` full URL of every entry is mapped to the ``Type/id`` Medplum
  created (``response.location``) and later chunks' references are rewritten with that map;
* conditional references are resolved here, one search per distinct reference (cached), because
  the Medplum stand-in stores them verbatim (the router only rewrites ``urn:uuid`` references).

Nothing in a progress line or an exception quotes resource contents (the bundles are synthetic,
but the loader treats them as PHI): only file names, counts, resource types, ids, statuses and
OperationOutcome issue codes.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from app.fhir.resource_json import (
    JSONObject,
    dumps,
    get_object,
    get_objects,
    get_str,
    iter_references,
    loads,
    rewrite_resource,
)
from app.integrations.medplum import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    MAX_JSON_BODY_BYTES,
    BundleEntryResult,
    MedplumClient,
    MedplumClientConfig,
    MedplumError,
    MedplumRateLimited,
    OperationOutcomeSummary,
)
from app.integrations.medplum.results import MAX_TRANSACTION_UPDATES
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "STARVIT_SYNTHEA_DIR"
DEFAULT_DIR = PROJECT_ROOT.parent / "shared" / "data" / "synthea"
# File-name stems of Synthea's support bundles, loaded first in this order (organizations and
# locations, then practitioners and their roles).
SUPPORT_BUNDLE_PREFIXES = ("hospitalInformation", "practitionerInformation")
# A safe margin below Medplum's 1 MB (1,048,576 bytes) JSON body limit.
DEFAULT_MAX_CHUNK_BYTES = 900_000
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


# --- splitting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Entries to post in one Bundle of the original's type. ``entries`` have the references
    known before splitting already rewritten; references to ``urn:uuid`` entries of earlier
    chunks are rewritten when the chunk is posted. ``positions`` are the entries' indexes in
    the original bundle; ``estimated_bytes`` bounds the posted body from above."""

    index: int
    bundle_type: str
    entries: tuple[JSONObject, ...]
    positions: tuple[int, ...]
    estimated_bytes: int
    conditional: bool

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
    max_conditional_entries: int = MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    max_updates: int = MAX_TRANSACTION_UPDATES,
) -> list[Chunk]:
    """Split a transaction or batch Bundle into chunks Medplum accepts.

    Every chunk's posted JSON stays under ``max_bytes`` (estimated with every ``urn:uuid``
    reference grown to ``Type/`` + a 64-character id); a ``transaction`` chunk holds at most
    ``max_conditional_entries`` entries once any of them is conditional, and at most
    ``max_updates`` PUTs. ``resolved`` maps references known before splitting (``urn:uuid``
    full URLs of earlier bundles, conditional references) to ``Type/id``; they are rewritten in
    the returned entries. A ``urn:uuid`` reference that is neither an entry of this bundle nor
    in ``resolved`` is an error, as is an entry (or reference cycle) that cannot fit a chunk.
    """
    bundle_type = bundle.get("type")
    if bundle_type not in ("transaction", "batch"):
        raise BundleSplitError("only transaction and batch Bundles can be split")
    transaction = bundle_type == "transaction"
    known = resolved or {}
    raw = bundle.get("entry")
    entries: list[JSONObject] = (
        [rewrite_resource(e, known) for e in raw if isinstance(e, dict)]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        if isinstance(raw, list)
        else []
    )
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
                    f"entry {position} ({_resource_type(entry)}) refers to a urn:uuid that is "
                    "not a fullUrl of this bundle nor created before"
                )
        deps.append(entry_deps)
        sizes.append(len(dumps(entry)) + growth)

    overhead = _bundle_overhead(str(bundle_type))
    chunks: list[Chunk] = []
    current: list[int] = []
    current_bytes = overhead
    current_conditional = False
    current_updates = 0

    def flush() -> None:
        nonlocal current, current_bytes, current_conditional, current_updates
        if current:
            chunks.append(
                Chunk(
                    index=len(chunks),
                    bundle_type=str(bundle_type),
                    entries=tuple(entries[p] for p in current),
                    positions=tuple(current),
                    estimated_bytes=current_bytes,
                    conditional=current_conditional,
                )
            )
        current, current_bytes, current_conditional, current_updates = [], overhead, False, 0

    def fits(count: int, size: int, conditional: bool, updates: int) -> bool:
        if size >= max_bytes:
            return False
        if transaction and conditional and count > max_conditional_entries:
            return False
        return not (transaction and updates > max_updates)

    for group in _dependency_order(deps):
        group_bytes = sum(sizes[p] for p in group) + len(group)  # entries plus commas
        group_conditional = any(is_conditional_entry(entries[p]) for p in group)
        group_updates = sum(1 for p in group if _is_update(entries[p]))
        if not fits(len(group), overhead + group_bytes, group_conditional, group_updates):
            what = f"entry {group[0]} ({_resource_type(entries[group[0]])})"
            if len(group) > 1:
                what = f"a reference cycle of {len(group)} entries starting at {what}"
            raise BundleSplitError(f"{what} does not fit in one chunk within Medplum's limits")
        if current and not fits(
            len(current) + len(group),
            current_bytes + group_bytes,
            current_conditional or group_conditional,
            current_updates + group_updates,
        ):
            flush()
        current.extend(group)
        current_bytes += group_bytes
        current_conditional = current_conditional or group_conditional
        current_updates += group_updates
    flush()
    return chunks


# --- loading -----------------------------------------------------------------------------------


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


@dataclass(slots=True)
class LoadSummary:
    """What :func:`load` did: resources created by type (201s), conditional creates that found
    their resource already there (200s), the Patient ids created, per-bundle reports."""

    bundles: list[BundleReport] = field(default_factory=list[BundleReport])
    created_by_type: Counter[str] = field(default_factory=Counter[str])
    existing: int = 0
    patient_ids: list[str] = field(default_factory=list[str])
    chunks: int = 0
    elapsed_seconds: float = 0.0

    @property
    def created(self) -> int:
        return sum(self.created_by_type.values())


def partner_config(base_url: str) -> MedplumClientConfig:
    """Client settings for the stand-in's integration partner (``partner-acme``, dev secret)."""
    return MedplumClientConfig(
        base_url=base_url, client_id=PARTNER_CLIENT_ID, client_secret=PARTNER_CLIENT_SECRET
    )


def _counts_text(counts: Mapping[str, int]) -> str:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count}" for name, count in ordered) or "none"


def _outcome_text(outcome: OperationOutcomeSummary | None) -> str:
    """Where and why, from the OperationOutcome: FHIRPath expressions and the server's
    diagnostics with quoted values already cut out (:func:`sanitise_diagnostics`)."""
    if outcome is None:
        return ""
    parts: list[str] = []
    for issue in outcome.issues[:3]:
        where = f"at {','.join(issue.expression)}" if issue.expression else ""
        text = ": ".join(p for p in (where, issue.diagnostics or "") if p)
        if text:
            parts.append(text)
    return f" ({'; '.join(parts)})" if parts else ""


def _error_text(error: MedplumError) -> str:
    # MedplumError's text names operation, type, status and issue codes only (no bodies).
    return str(error) + _outcome_text(error.operation_outcome)


def _entry_failure(result: BundleEntryResult) -> str:
    codes = ",".join(result.outcome.codes) if result.outcome is not None else ""
    issues = f" issues={codes}" if codes else ""
    return f"HTTP {result.status_code}{issues}{_outcome_text(result.outcome)}"


class _Pacer:
    """Spreads writes evenly so that at most ``per_minute`` are sent a minute (Medplum's FHIR
    quota is about 500 writes a minute per membership); ``None`` means no pacing."""

    def __init__(self, per_minute: int | None, sleep: Sleep) -> None:
        if per_minute is not None and per_minute < 1:
            raise ValueError("max_writes_per_minute must be at least 1")
        self._per_minute = per_minute
        self._sleep = sleep
        self._next_at = 0.0

    async def before(self, writes: int) -> float:
        if self._per_minute is None:
            return 0.0
        now = time.monotonic()
        wait = max(0.0, self._next_at - now)
        if wait > 0:
            await self._sleep(wait)
        self._next_at = max(now, self._next_at) + writes * 60.0 / self._per_minute
        return wait


@dataclass(slots=True)
class _Loader:
    medplum: MedplumClient
    progress: Progress
    sleep: Sleep
    pacer: _Pacer
    max_chunk_bytes: int
    rate_limit_retries: int
    default_rate_limit_wait: float
    # urn:uuid full URLs and conditional references -> Type/id, across all bundles.
    resolved: dict[str, str] = field(default_factory=dict[str, str])

    async def resolve_conditional(self, bundle: JSONObject, name: str) -> None:
        references = {
            ref
            for ref in iter_references(bundle)
            if ref not in self.resolved and is_conditional_reference(ref)
        }
        for reference in sorted(references):
            resource_type, _, query = reference.partition("?")
            params = [*parse_qsl(query, keep_blank_values=True), ("_count", "2")]
            try:
                page = await self.medplum.search(resource_type, params)
            except MedplumError as error:
                raise SyntheaLoadError(
                    f"{name}: resolving a conditional {resource_type} reference failed: "
                    f"{_error_text(error)}",
                    bundle=name,
                ) from None
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

    async def post_chunk(self, chunk: Chunk, name: str, label: str) -> list[BundleEntryResult]:
        """Post ``chunk``; entries throttled (429) inside a batch-like response are re-sent
        after a wait, the whole chunk is re-sent after a 429 for the request (not applied)."""
        results: dict[int, BundleEntryResult] = {}
        pending = list(range(len(chunk.entries)))
        attempts = 0
        while pending:
            entries = [rewrite_resource(chunk.entries[i], self.resolved) for i in pending]
            await self.pacer.before(len(entries))
            wait: float | None = None
            throttled: list[int] = []
            try:
                if chunk.bundle_type == "transaction":
                    response = await self.medplum.transaction(entries)
                else:
                    response = await self.medplum.batch(entries)
            except MedplumRateLimited as error:
                wait = error.retry_after
                throttled = pending
            except MedplumError as error:
                raise SyntheaLoadError(
                    f"{name}: {label} failed: {_error_text(error)}", bundle=name, chunk=chunk.index
                ) from None
            else:
                if len(response.entries) != len(pending):
                    raise SyntheaLoadError(
                        f"{name}: {label}: Medplum answered {len(response.entries)} entries for "
                        f"{len(pending)}",
                        bundle=name,
                        chunk=chunk.index,
                    )
                for i, result in zip(pending, response.entries, strict=True):
                    if result.ok:
                        results[i] = result
                        full_url = get_str(chunk.entries[i], "fullUrl")
                        if full_url and result.reference:
                            self.resolved[full_url] = result.reference
                    elif result.status_code == 429:
                        throttled.append(i)
                    else:
                        position = chunk.positions[i]
                        raise SyntheaLoadError(
                            f"{name}: {label} failed at entry {position} "
                            f"({_resource_type(chunk.entries[i])}): {_entry_failure(result)}",
                            bundle=name,
                            chunk=chunk.index,
                        )
            if not throttled:
                break
            attempts += 1
            if attempts > self.rate_limit_retries:
                raise SyntheaLoadError(
                    f"{name}: {label} still rate limited after {attempts} attempts",
                    bundle=name,
                    chunk=chunk.index,
                )
            seconds = wait if wait is not None else self.default_rate_limit_wait
            self.progress(
                f"  {label}: rate limited ({len(throttled)} entries), waiting {seconds:g} s"
            )
            await self.sleep(seconds)
            pending = throttled
        return [results[i] for i in range(len(chunk.entries))]

    async def load_bundle(self, path: Path, position: str) -> BundleReport:
        started = time.monotonic()
        name = path.name
        bundle = read_bundle(path)
        bundle_type = get_str(bundle, "type") or "?"
        report = BundleReport(
            name=name, bundle_type=bundle_type, entries=len(get_objects(bundle, "entry"))
        )
        await self.resolve_conditional(bundle, name)
        try:
            chunks = split_bundle(bundle, resolved=self.resolved, max_bytes=self.max_chunk_bytes)
        except BundleSplitError as error:
            raise SyntheaLoadError(f"{name}: {error}", bundle=name) from None
        report.chunks = len(chunks)
        self.progress(
            f"{position} {name}: {report.entries} entries ({bundle_type}) "
            f"in {len(chunks)} chunk{'s' if len(chunks) != 1 else ''}"
        )
        for chunk in chunks:
            label = f"chunk {chunk.index + 1}/{len(chunks)}"
            chunk_started = time.monotonic()
            results = await self.post_chunk(chunk, name, label)
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
                f"  {label}: {len(chunk)} entries, {chunk.estimated_bytes // 1024} KB max -> "
                f"{created} created, {len(chunk) - created} existing "
                f"({time.monotonic() - chunk_started:.2f} s)"
            )
        report.elapsed_seconds = time.monotonic() - started
        patient = f"; Patient/{report.patient_id}" if report.patient_id else ""
        self.progress(
            f"  done: {sum(report.created.values())} created ({_counts_text(report.created)}), "
            f"{report.existing} existing in {report.elapsed_seconds:.2f} s{patient}"
        )
        return report


async def load(
    medplum: MedplumClient,
    *,
    patients: int | None = None,
    only: Sequence[str] | None = None,
    directory: Path | None = None,
    include_support: bool = True,
    progress: Progress | None = None,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    max_writes_per_minute: int | None = None,
    rate_limit_retries: int = 5,
    default_rate_limit_wait: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> LoadSummary:
    """Post the practitioner and hospital bundles, then the patient bundles (all, the first
    ``patients``, or those named in ``only``), chunk by chunk, in sequence.

    ``medplum`` should authenticate as an integration partner (see :func:`partner_config`).
    ``progress`` receives readable lines. ``max_writes_per_minute`` paces the writes (e.g. 450
    under Medplum's default quota of 50,000 points a minute); a 429 is waited out (Medplum's
    ``RateLimit`` reset, else ``default_rate_limit_wait``) and retried ``rate_limit_retries``
    times. A failed chunk raises :class:`SyntheaLoadError`.
    """
    if max_chunk_bytes >= MAX_JSON_BODY_BYTES:
        raise ValueError("max_chunk_bytes must stay below Medplum's 1 MB JSON limit")
    say: Progress = progress or (lambda _line: None)
    started = time.monotonic()
    directory = directory or synthea_dir()
    files = bundle_files(directory, patients=patients, only=only, include_support=include_support)
    n_patients = sum(1 for f in files if not is_support_bundle(f))
    say(
        f"Synthea data: {directory} ({len(files) - n_patients} support bundles, "
        f"{n_patients} patient bundles)"
    )
    loader = _Loader(
        medplum=medplum,
        progress=say,
        sleep=sleep,
        pacer=_Pacer(max_writes_per_minute, sleep),
        max_chunk_bytes=max_chunk_bytes,
        rate_limit_retries=rate_limit_retries,
        default_rate_limit_wait=default_rate_limit_wait,
    )
    summary = LoadSummary()
    for number, path in enumerate(files, start=1):
        report = await loader.load_bundle(path, f"[{number}/{len(files)}]")
        summary.bundles.append(report)
        summary.created_by_type.update(report.created)
        summary.existing += report.existing
        summary.chunks += report.chunks
        if report.patient_id:
            summary.patient_ids.append(report.patient_id)
    summary.elapsed_seconds = time.monotonic() - started
    say(
        f"Loaded {len(files)} bundles in {summary.chunks} chunks: {summary.created} resources "
        f"created, {summary.existing} existing, {len(summary.patient_ids)} patients, "
        f"{summary.created_by_type.get('Observation', 0)} Observations "
        f"in {summary.elapsed_seconds:.1f} s"
    )
    return summary
