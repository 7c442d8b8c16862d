"""Analytics stores for the flat view tables: DuckDB (embedded, the default) and BigQuery.

Both take the same rows from the same ViewDefinitions and answer the same SQL: queries are
written in the subset both dialects share (``COUNT(DISTINCT ...)``, ``EXTRACT(YEAR FROM d)``,
``GROUP BY``), with tables named ``{view}`` and parameters named ``@name`` (scalars and string
arrays, used with ``IN UNNEST(@name)``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.research.views.runner import Cell, Row, ViewDefinition

type Param = str | int | float | list[str]
type Record = tuple[Cell, ...]

_TABLE = re.compile(r"\{([a-z][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the data in a store were made with (a change of either means a full refresh)."""

    key_version: str
    config_hash: str


class AnalyticsStore(Protocol):
    @property
    def target(self) -> str:
        """A stable name of where the tables live (checkpoints are kept per target)."""
        ...

    def state(self) -> StoreState | None: ...

    def reset(self, views: Sequence[ViewDefinition], state: StoreState) -> None:
        """Drop and create every view's table, empty, and record ``state``."""
        ...

    def replace(
        self, view: ViewDefinition, resource_ids: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Delete the rows of ``resource_ids`` and insert ``rows`` (those resources' new rows)."""
        ...

    def query(self, sql: str, params: Mapping[str, Param] | None = None) -> list[Record]: ...

    def close(self) -> None: ...


def table_names(sql: str) -> list[str]:
    return _TABLE.findall(sql)


def render_tables(sql: str, qualify: Mapping[str, str]) -> str:
    return _TABLE.sub(lambda m: qualify[m.group(1)], sql)
