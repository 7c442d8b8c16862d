"""The embedded analytics store: one DuckDB file (``var/research/research.duckdb`` by default)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb

from app.research.stores import Param, Record, StoreState, render_tables, table_names
from app.research.views.runner import ColumnType, Row, ViewDefinition

SQL_TYPES: dict[ColumnType, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "decimal": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
}
_PARAM = re.compile(r"@([a-z_][a-z0-9_]*)")
_IN_UNNEST = re.compile(r"IN UNNEST\(@([a-z_][a-z0-9_]*)\)")
_STATE_TABLE = "export_state"
_ROWS_PER_INSERT = 200


class DuckDBStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._conn = duckdb.connect(str(path), read_only=read_only)

    @property
    def target(self) -> str:
        return f"duckdb:{self._path.resolve()}"

    @property
    def path(self) -> Path:
        return self._path

    def state(self) -> StoreState | None:
        try:
            row = self._conn.execute(
                f"SELECT key_version, config_hash FROM {_STATE_TABLE}"  # noqa: S608 - constant
            ).fetchone()
        except duckdb.CatalogException:
            return None
        return StoreState(str(row[0]), str(row[1])) if row else None

    def reset(self, views: Sequence[ViewDefinition], state: StoreState) -> None:
        self._conn.execute("BEGIN")
        for view in views:
            columns = ", ".join(f'"{name}" {SQL_TYPES[kind]}' for name, kind in view.columns)
            self._conn.execute(f'DROP TABLE IF EXISTS "{view.name}"')
            self._conn.execute(f'CREATE TABLE "{view.name}" ({columns})')
        self._conn.execute(
            f"CREATE OR REPLACE TABLE {_STATE_TABLE} (key_version VARCHAR, config_hash VARCHAR)"
        )
        self._conn.execute(
            f"INSERT INTO {_STATE_TABLE} VALUES (?, ?)",  # noqa: S608 - constant
            [state.key_version, state.config_hash],
        )
        self._conn.execute("COMMIT")

    def replace(
        self, view: ViewDefinition, resource_ids: Sequence[str], rows: Sequence[Row]
    ) -> None:
        names = [name for name, _ in view.columns]
        self._conn.execute("BEGIN")
        if resource_ids:
            self._conn.execute(
                f'DELETE FROM "{view.name}" WHERE id IN (SELECT unnest(?::VARCHAR[]))',  # noqa: S608 - view names are validated
                [list(resource_ids)],
            )
        # multi-row VALUES in chunks: DuckDB's executemany runs one statement per row
        one = "(" + ", ".join("?" for _ in names) + ")"
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            self._conn.execute(
                f'INSERT INTO "{view.name}" VALUES {", ".join(one for _ in chunk)}',  # noqa: S608 - validated
                [row.get(n) for row in chunk for n in names],
            )
        self._conn.execute("COMMIT")

    def query(self, sql: str, params: Mapping[str, Param] | None = None) -> list[Record]:
        rendered = render_tables(sql, {t: f'"{t}"' for t in table_names(sql)})
        rendered = _IN_UNNEST.sub(lambda m: f"IN (SELECT unnest(${m.group(1)}))", rendered)
        rendered = _PARAM.sub(lambda m: f"${m.group(1)}", rendered)
        result = self._conn.execute(rendered, dict(params or {})).fetchall()
        return [tuple(row) for row in result]

    def close(self) -> None:
        self._conn.close()
