"""The research export and the researchers' aggregates.

An export: Medplum (paged ``_lastUpdated`` search, from the checkpoint) → de-identification →
NDJSON export files + the view tables (DuckDB or BigQuery) → the graph (LadybugDB or
TigerGraph, rebuilt from the tables) → the re-identification risk report → the export's row in
the service's database (key version, configuration hash, counts, risk). A change of key
version or configuration hash, or ``full=True``, starts the target afresh."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from app.fhir.resource_json import get_str
from app.observability.logging import get_logger
from app.research.deid import AllowListDeidentifier, Deidentified, load_policy
from app.research.extract import PAGE_SIZE, Since, changed_pages, count_changed
from app.research.graph import (
    CodeNode,
    GraphData,
    GraphResult,
    GraphStore,
    HasCondition,
    Measured,
    PatientNode,
    query_text,
)
from app.research.keys import secret_store
from app.research.repository import Checkpoint, ResearchRepository
from app.research.risk import EQUIVALENCE_CLASSES_SQL, RiskReport, risk_report
from app.research.stores import AnalyticsStore, StoreState
from app.research.suppression import MIN_CELL, Cell, SuppressedTable, prevalence, two_way
from app.research.views.runner import ViewDefinition, load_views

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.integrations.medplum import MedplumClient
    from app.research.repository import ExportRecord
    from app.runtime import Runtime
    from app.settings import Settings

RESOURCE_TYPES = ("Patient", "Condition", "Observation")
log = get_logger("app.research")


class ExportProgress(Protocol):
    def begin(self, resource_type: str, total: int) -> None: ...

    def advance(self, resource_type: str, count: int) -> None: ...

    def finish(self, resource_type: str) -> None: ...


class NoProgress:
    def begin(self, resource_type: str, total: int) -> None:
        del resource_type, total

    def advance(self, resource_type: str, count: int) -> None:
        del resource_type, count

    def finish(self, resource_type: str) -> None:
        del resource_type


@dataclass
class ResearchZone:
    store: AnalyticsStore
    graph: GraphStore
    views: tuple[ViewDefinition, ...]
    export_root: Path
    k: int = MIN_CELL

    def close(self) -> None:
        self.store.close()
        self.graph.close()


def open_zone(settings: Settings, *, read_only: bool = False) -> ResearchZone:
    """The configured stores: BigQuery when a dataset is set, else DuckDB; TigerGraph when a
    host is set, else LadybugDB."""
    root = settings.research_dir
    store: AnalyticsStore
    if settings.research_bigquery_dataset:
        from app.integrations.bigquery.store import BigQueryStore, bigquery_client  # noqa: PLC0415

        project = settings.research_bigquery_dataset.split(".", 1)[0]
        client = bigquery_client(
            project,
            api_endpoint=settings.research_bigquery_endpoint,
            anonymous=settings.research_bigquery_endpoint is not None,
        )
        store = BigQueryStore(
            client, settings.research_bigquery_dataset, location=settings.research_bigquery_location
        )
    else:
        from app.research.stores.duckdb import DuckDBStore  # noqa: PLC0415

        store = DuckDBStore(root / "research.duckdb", read_only=read_only)
    graph: GraphStore
    if settings.research_tigergraph_host:
        from app.integrations.tigergraph.graph import (  # noqa: PLC0415
            TigerGraphConfig,
            TigerGraphStore,
        )

        password = settings.research_tigergraph_password
        graph = TigerGraphStore(
            TigerGraphConfig(
                host=settings.research_tigergraph_host,
                graph=settings.research_tigergraph_graph,
                username=settings.research_tigergraph_username,
                password=password.get_secret_value() if password else "",
                restpp_port=settings.research_tigergraph_restpp_port,
                gs_port=settings.research_tigergraph_gs_port,
            )
        )
    else:
        from app.research.graph.ladybug import LadybugGraph  # noqa: PLC0415

        graph = LadybugGraph(root / "graph.lbdb", read_only=read_only)
    return ResearchZone(store, graph, load_views(), root / "exports", settings.research_k)


class ZoneUnavailable(RuntimeError):
    """The analytics store or the database cannot answer now (no export yet, an export holding
    the embedded store, a cloud store unreachable); ``reason`` is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_zone[T](settings: Settings, work: Callable[[ResearchZone], T]) -> T:
    """Open the configured stores for reading, run ``work``, close them (blocking: run it in
    a worker thread)."""
    if (
        not settings.research_bigquery_dataset
        and not (settings.research_dir / "research.duckdb").exists()
    ):
        raise ZoneUnavailable("no_export_yet")
    try:
        zone = open_zone(settings, read_only=True)
    except Exception as error:  # the embedded file is locked by a running export
        raise ZoneUnavailable("store_busy") from error
    try:
        return work(zone)
    finally:
        zone.close()


async def recent_exports(runtime: Runtime, *, limit: int) -> list[ExportRecord]:
    from app.persistence.database import Database  # noqa: PLC0415

    database = next((d for d in runtime.dependencies if isinstance(d, Database)), None)
    if database is None:
        raise ZoneUnavailable("no_database")
    return await ResearchRepository(database.pool).exports(limit=limit)


def deidentifier_for(settings: Settings) -> AllowListDeidentifier:
    return AllowListDeidentifier(
        load_policy(), secret_store(settings.research_key_file).current_key()
    )


@dataclass
class ExportSummary:
    export_id: int
    target: str
    full_refresh: bool
    key_version: str
    config_hash: str
    export_dir: Path
    fetched: Counter[str] = field(default_factory=Counter[str])
    loaded: Counter[str] = field(default_factory=Counter[str])
    dropped: Counter[str] = field(default_factory=Counter[str])
    risk: RiskReport | None = None

    def manifest(self, deidentifier: AllowListDeidentifier) -> dict[str, object]:
        return {
            "export_id": self.export_id,
            "target": self.target,
            "full_refresh": self.full_refresh,
            "key_version": self.key_version,
            "config_hash": self.config_hash,
            "policy_version": deidentifier.policy.version,
            "zip3_version": deidentifier.policy.zip3_version,
            "fetched": dict(self.fetched),
            "loaded": dict(self.loaded),
            "dropped": dict(self.dropped),
            "risk": self.risk.to_json() if self.risk else None,
        }


async def run_export(
    *,
    medplum: MedplumClient,
    repository: ResearchRepository,
    zone: ResearchZone,
    deidentifier: AllowListDeidentifier,
    progress: ExportProgress | None = None,
    full: bool = False,
    page_size: int = PAGE_SIZE,
) -> ExportSummary:
    progress = progress or NoProgress()
    store = zone.store
    state = StoreState(deidentifier.key_version, deidentifier.config_hash)
    checkpoints = await repository.checkpoints(store.target)
    stale = any(
        (c.key_version, c.config_hash) != (state.key_version, state.config_hash)
        for c in checkpoints.values()
    )
    full_refresh = full or stale or store.state() != state
    if full_refresh:
        store.reset(zone.views, state)
        await repository.clear_checkpoints(store.target)
        checkpoints = {}
    export_id = await repository.start_export(
        started_at=datetime.now(UTC),
        target=store.target,
        full_refresh=full_refresh,
        key_version=state.key_version,
        config_hash=state.config_hash,
        policy_version=deidentifier.policy.version,
        zip3_version=deidentifier.policy.zip3_version,
    )
    export_dir = zone.export_root / f"{export_id:06d}"
    export_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(
        export_id, store.target, full_refresh, state.key_version, state.config_hash, export_dir
    )
    try:
        for resource_type in RESOURCE_TYPES:
            await _export_type(
                resource_type,
                medplum=medplum,
                repository=repository,
                zone=zone,
                deidentifier=deidentifier,
                checkpoint=checkpoints.get(resource_type),
                summary=summary,
                progress=progress,
                page_size=page_size,
            )
        zone.graph.rebuild(graph_data(store))
        sizes = [int(str(row[0])) for row in store.query(EQUIVALENCE_CLASSES_SQL)]
        summary.risk = risk_report(sizes, k=zone.k)
    except BaseException as error:
        await repository.finish_export(
            export_id,
            finished_at=datetime.now(UTC),
            status="failed",
            fetched=summary.fetched,
            loaded=summary.loaded,
            dropped=summary.dropped,
            risk=None,
            error_code=type(error).__name__,
        )
        raise
    log.info(
        "research_export_finished",
        export_id=export_id,
        full_refresh=full_refresh,
        loaded=dict(summary.loaded),
        dropped=dict(summary.dropped),
        smallest_class=summary.risk.smallest_class if summary.risk else None,
    )
    (export_dir / "manifest.json").write_text(
        json.dumps(summary.manifest(deidentifier), indent=2, sort_keys=True), encoding="utf-8"
    )
    await repository.finish_export(
        export_id,
        finished_at=datetime.now(UTC),
        status="succeeded",
        fetched=summary.fetched,
        loaded=summary.loaded,
        dropped=summary.dropped,
        risk=summary.risk.to_json() if summary.risk else None,
    )
    return summary


async def _export_type(
    resource_type: str,
    *,
    medplum: MedplumClient,
    repository: ResearchRepository,
    zone: ResearchZone,
    deidentifier: AllowListDeidentifier,
    checkpoint: Checkpoint | None,
    summary: ExportSummary,
    progress: ExportProgress,
    page_size: int,
) -> None:
    since = (
        Since(checkpoint.last_updated, frozenset(checkpoint.boundary_ids)) if checkpoint else None
    )
    # the count includes the boundary resources the previous export already loaded
    changed = await count_changed(medplum, resource_type, since)
    progress.begin(resource_type, max(0, changed - (len(since.boundary_ids) if since else 0)))
    views = [v for v in zone.views if v.resource == resource_type]
    names = deidentifier.pseudonyms
    ndjson = summary.export_dir / f"{resource_type}.ndjson"
    async for page in changed_pages(medplum, resource_type, since, page_size=page_size):
        kept: list[Deidentified] = []
        for resource in page.resources:
            outcome = deidentifier.deidentify(resource)
            if isinstance(outcome, Deidentified):
                kept.append(outcome)
            else:
                summary.dropped[f"{outcome.resource_type}: {outcome.reason}"] += 1
        ids = [
            names.pseudonym(resource_type, rid)
            for r in page.resources
            if (rid := get_str(r, "id")) is not None
        ]
        for view in views:
            zone.store.replace(view, ids, view.run([k.resource for k in kept]))
        if kept:
            with ndjson.open("a", encoding="utf-8") as handle:
                for item in kept:
                    handle.write(json.dumps(item.resource, separators=(",", ":")) + "\n")
        if page.last_updated is not None:
            await repository.save_checkpoint(
                zone.store.target,
                Checkpoint(
                    resource_type,
                    page.last_updated,
                    page.boundary_ids,
                    deidentifier.key_version,
                    deidentifier.config_hash,
                ),
            )
        summary.fetched[resource_type] += len(page.resources)
        summary.loaded[resource_type] += len(kept)
        log.info(
            "research_export_page",
            export_id=summary.export_id,
            resource_type=resource_type,
            fetched=len(page.resources),
            loaded=len(kept),
        )
        progress.advance(resource_type, len(page.resources))
    progress.finish(resource_type)


# --- the graph, from the tables ------------------------------------------------------------------

_GRAPH_PATIENTS = "SELECT id, gender, birth_year, zip3 FROM {patient}"
_GRAPH_CONDITIONS = (
    "SELECT code, MIN(code_system) FROM {condition} WHERE code IS NOT NULL"
    " AND patient_id IN (SELECT id FROM {patient}) GROUP BY code"
)
_GRAPH_FEATURES = (
    "SELECT code, MIN(code_system) FROM {observation} WHERE code IS NOT NULL"
    " AND value IS NOT NULL AND patient_id IN (SELECT id FROM {patient}) GROUP BY code"
)
_GRAPH_HAS_CONDITION = (
    "SELECT DISTINCT patient_id, code, CAST(onset_date AS STRING) FROM {condition}"
    " WHERE code IS NOT NULL AND patient_id IN (SELECT id FROM {patient})"
)
_GRAPH_MEASURED = (
    "SELECT patient_id, code, value, unit, CAST(effective_date AS STRING) FROM {observation}"
    " WHERE code IS NOT NULL AND value IS NOT NULL AND patient_id IN (SELECT id FROM {patient})"
)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def graph_data(store: AnalyticsStore) -> GraphData:
    return GraphData(
        patients=[
            PatientNode(
                str(r[0]), _text(r[1]), int(str(r[2])) if r[2] is not None else None, _text(r[3])
            )
            for r in store.query(_GRAPH_PATIENTS)
        ],
        conditions=[CodeNode(str(r[0]), _text(r[1])) for r in store.query(_GRAPH_CONDITIONS)],
        features=[CodeNode(str(r[0]), _text(r[1])) for r in store.query(_GRAPH_FEATURES)],
        has_condition=[
            HasCondition(str(r[0]), str(r[1]), _text(r[2]))
            for r in store.query(_GRAPH_HAS_CONDITION)
        ],
        measured=[
            Measured(str(r[0]), str(r[1]), float(str(r[2])), _text(r[3]), _text(r[4]))
            for r in store.query(_GRAPH_MEASURED)
        ],
    )


# --- researchers' aggregates (small cells suppressed) ------------------------------------------


def _decade(year: object) -> str:
    if year is None:
        return "unknown"
    value = int(str(year))
    return f"{value // 10 * 10}s"


def demographics(store: AnalyticsStore) -> SuppressedTable:
    """Patients by sex and birth decade (each patient in exactly one cell)."""
    counts: Counter[tuple[str, str]] = Counter()
    for gender, year, n in store.query(
        "SELECT gender, birth_year, COUNT(*) FROM {patient} GROUP BY gender, birth_year"
    ):
        counts[(str(gender or "unknown"), _decade(year))] += int(str(n))
    rows: Counter[str] = Counter()
    columns: Counter[str] = Counter()
    for (g, d), n in counts.items():
        rows[g] += n
        columns[d] += n
    return two_way(("gender", "birth_decade"), counts, rows, columns, sum(counts.values()))


def population(store: AnalyticsStore) -> int:
    rows = store.query("SELECT COUNT(*) FROM {patient}")
    return int(str(rows[0][0])) if rows else 0


def condition_prevalence(store: AnalyticsStore) -> tuple[list[Cell], int | None]:
    counts = {
        str(code): int(str(n))
        for code, n in store.query(
            "SELECT code, COUNT(DISTINCT patient_id) FROM {condition}"
            " WHERE code IS NOT NULL GROUP BY code"
        )
    }
    return prevalence(counts, population(store))


@dataclass(frozen=True, slots=True)
class CooccurrenceRow:
    condition_a: str
    condition_b: str
    patients: int


def egfr_comorbidity(graph: GraphStore, *, threshold: float) -> tuple[list[CooccurrenceRow], int]:
    """Condition pairs among patients with an eGFR below ``threshold``: pairs held by fewer
    than ``MIN_CELL`` patients are withheld (their number is returned, not the pairs)."""
    result: GraphResult = graph.run(query_text("egfr_comorbidity"), {"threshold": threshold})
    shown: list[CooccurrenceRow] = []
    withheld = 0
    for a, b, n in result.rows:
        count = int(str(n))
        if count < MIN_CELL:
            withheld += 1
            continue
        shown.append(CooccurrenceRow(str(a), str(b), count))
    return shown, withheld


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
