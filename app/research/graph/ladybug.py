"""The embedded graph: LadybugDB (the maintained fork of Kùzu), one file under ``var/research``.

Every rebuild writes a new database file next to the current one, bulk-loads it with ``COPY``
from temporary CSV files (pseudonymous data only, removed right after), and swaps it in."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ladybug  # pyright: ignore[reportMissingTypeStubs]

from app.research.graph import GraphData, GraphResult, GraphValue

SCHEMA = (
    "CREATE NODE TABLE Patient(id STRING PRIMARY KEY, gender STRING, birth_year INT64,"
    " zip3 STRING)",
    "CREATE NODE TABLE Condition(code STRING PRIMARY KEY, system STRING)",
    "CREATE NODE TABLE Feature(code STRING PRIMARY KEY, system STRING)",
    "CREATE REL TABLE HAS_CONDITION(FROM Patient TO Condition, onset STRING)",
    "CREATE REL TABLE MEASURED(FROM Patient TO Feature, value DOUBLE, unit STRING, date STRING)",
)


def _write_csv(path: Path, rows: Iterable[Sequence[GraphValue]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])


class LadybugGraph:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._read_only = read_only
        self._db: ladybug.Database | None = None

    @property
    def path(self) -> Path:
        return self._path

    def _connection(self) -> ladybug.Connection:
        if self._db is None:
            self._db = ladybug.Database(str(self._path), read_only=self._read_only)
        return ladybug.Connection(self._db)

    def rebuild(self, data: GraphData) -> None:
        self.close()
        building = self._path.with_name(self._path.name + ".building")
        for leftover in (building, building.with_name(building.name + ".wal")):
            leftover.unlink(missing_ok=True)
        database = ladybug.Database(str(building))
        try:
            conn = ladybug.Connection(database)
            for statement in SCHEMA:
                conn.execute(statement)
            with tempfile.TemporaryDirectory(prefix="starvit-graph-") as scratch:
                tables: list[tuple[str, Iterable[Sequence[GraphValue]]]] = [
                    ("Patient", ((p.id, p.gender, p.birth_year, p.zip3) for p in data.patients)),
                    ("Condition", ((c.code, c.system) for c in data.conditions)),
                    ("Feature", ((f.code, f.system) for f in data.features)),
                    (
                        "HAS_CONDITION",
                        ((h.patient, h.condition, h.onset) for h in data.has_condition),
                    ),
                    (
                        "MEASURED",
                        ((m.patient, m.feature, m.value, m.unit, m.date) for m in data.measured),
                    ),
                ]
                for table, rows in tables:
                    file = Path(scratch) / f"{table}.csv"
                    _write_csv(file, rows)
                    if file.stat().st_size:
                        conn.execute(f"COPY {table} FROM '{file}' (header=false)")
            conn.close()
        finally:
            database.close()
        os.replace(building, self._path)
        self._path.with_name(self._path.name + ".wal").unlink(missing_ok=True)

    def run(self, cypher: str, params: Mapping[str, GraphValue]) -> GraphResult:
        if not self._path.exists():
            return GraphResult((), [])
        conn = self._connection()
        result = conn.execute(cypher, dict(params))
        assert isinstance(result, ladybug.QueryResult)
        columns = tuple(str(c) for c in result.get_column_names())
        rows: list[tuple[GraphValue, ...]] = []
        while result.has_next():
            rows.append(tuple(result.get_next()))
        return GraphResult(columns, rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
