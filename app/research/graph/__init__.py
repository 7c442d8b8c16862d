"""The research graph: patients, conditions, observations as features, and their relations.

Loaded into LadybugDB (embedded, the default) or TigerGraph, and queried with the same
openCypher texts (``queries/*.cypher``). The graph is a projection of the analytics tables,
rebuilt from them after every export."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

QUERIES_DIR = Path(__file__).with_name("queries")
_QUERY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

type GraphValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class PatientNode:
    id: str
    gender: str | None
    birth_year: int | None
    zip3: str | None


@dataclass(frozen=True, slots=True)
class CodeNode:
    code: str
    system: str | None


@dataclass(frozen=True, slots=True)
class HasCondition:
    patient: str
    condition: str
    onset: str | None


@dataclass(frozen=True, slots=True)
class Measured:
    patient: str
    feature: str
    value: float
    unit: str | None
    date: str | None


@dataclass(frozen=True, slots=True)
class GraphData:
    patients: Sequence[PatientNode]
    conditions: Sequence[CodeNode]
    features: Sequence[CodeNode]
    has_condition: Sequence[HasCondition]
    measured: Sequence[Measured]


@dataclass(frozen=True, slots=True)
class GraphResult:
    columns: tuple[str, ...]
    rows: list[tuple[GraphValue, ...]]


class GraphStore(Protocol):
    def rebuild(self, data: GraphData) -> None: ...

    def run(self, cypher: str, params: Mapping[str, GraphValue]) -> GraphResult: ...

    def close(self) -> None: ...


class UnknownQuery(LookupError):
    pass


def query_text(name: str) -> str:
    """A shipped openCypher query by name (``queries/<name>.cypher``)."""
    if not _QUERY_NAME.match(name):
        raise UnknownQuery(name)
    path = QUERIES_DIR / f"{name}.cypher"
    if not path.is_file():
        raise UnknownQuery(name)
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("//")).strip()


def query_names() -> list[str]:
    return sorted(p.stem for p in QUERIES_DIR.glob("*.cypher"))
