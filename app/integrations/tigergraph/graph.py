"""The research graph on TigerGraph (pyTigerGraph over its REST++ and GSQL endpoints).

* ``rebuild``: deletes the vertices of the research types (their edges go with them) and
  upserts the new ones in batches (``POST /restpp/graph/<graph>``);
* ``run``: the shared openCypher text, wrapped as ``INTERPRET OPENCYPHER QUERY () FOR GRAPH
  <graph> { ... }`` (``POST /gsql/v1/queries/interpret`` on 4.x). Query parameters are
  written into the text as literals (numbers only, or strings made of code characters), since
  interpreted openCypher takes no parameter list.

The schema (``schema.gsql``) is applied once by an administrator; the service needs a
database user with write access to the graph and nothing else. No key files: the password or
token comes from the secret store the deployment mounts (see docs/backend/ASYNC_JOBS_ETL.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import pyTigerGraph  # pyright: ignore[reportMissingTypeStubs]

from app.research.graph import GraphData, GraphResult, GraphValue

VERTEX_TYPES = ("Patient", "Condition", "Feature")
BATCH = 1000
_SAFE_STRING = re.compile(r"^[A-Za-z0-9 ._:/|-]{0,200}$")
_RETURN_ALIAS = re.compile(r"\bAS\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class QueryParameterRefused(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TigerGraphConfig:
    host: str  # e.g. https://example.i.tgcloud.io
    graph: str
    username: str
    password: str
    restpp_port: int = 443
    gs_port: int = 443
    api_token: str = ""


def literal(value: GraphValue) -> str:
    if isinstance(value, bool) or value is None:
        return "true" if value else ("false" if value is False else "null")
    if isinstance(value, int | float):
        return repr(value)
    if not _SAFE_STRING.match(value):
        raise QueryParameterRefused("a string parameter may hold only code characters")
    return f"'{value}'"


def interpreted(cypher: str, params: Mapping[str, GraphValue]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "graphname":
            return match.group(0)
        if name not in params:
            raise QueryParameterRefused(f"missing parameter {name}")
        return literal(params[name])

    body = _PARAM.sub(substitute, cypher)
    return f"INTERPRET OPENCYPHER QUERY () FOR GRAPH $graphname {{\n{body}\n}}"


def return_columns(cypher: str) -> tuple[str, ...]:
    tail = cypher[cypher.upper().rfind("RETURN") :]
    return tuple(_RETURN_ALIAS.findall(tail))


def _rows(answer: object, columns: tuple[str, ...]) -> list[tuple[GraphValue, ...]]:
    """Rows of an interpreted query's ``results``: the first list of objects found in them."""
    results: list[object] = cast("list[object]", answer) if isinstance(answer, list) else []
    for item in results:
        if not isinstance(item, dict):
            continue
        for value in cast("dict[str, object]", item).values():
            if isinstance(value, list):
                records: list[dict[str, object]] = [
                    cast("dict[str, object]", r)
                    for r in cast("list[object]", value)
                    if isinstance(r, dict)
                ]
                return [tuple(cast("GraphValue", r.get(c)) for c in columns) for r in records]
    return []


class TigerGraphStore:
    def __init__(self, config: TigerGraphConfig) -> None:
        self._conn = pyTigerGraph.TigerGraphConnection(
            host=config.host,
            graphname=config.graph,
            username=config.username,
            password=config.password,
            restppPort=config.restpp_port,
            gsPort=config.gs_port,
            apiToken=config.api_token,
        )

    def rebuild(self, data: GraphData) -> None:
        conn = self._conn
        for vertex_type in VERTEX_TYPES:
            conn.delVertices(vertex_type)  # pyright: ignore[reportUnknownMemberType]
        self._vertices(
            "Patient",
            [
                (
                    p.id,
                    {
                        "gender": p.gender or "",
                        "birth_year": p.birth_year or 0,
                        "zip3": p.zip3 or "",
                    },
                )
                for p in data.patients
            ],
        )
        self._vertices("Condition", [(c.code, {"system": c.system or ""}) for c in data.conditions])
        self._vertices("Feature", [(f.code, {"system": f.system or ""}) for f in data.features])
        self._edges(
            "Condition",
            "HAS_CONDITION",
            [(h.patient, h.condition, {"onset": h.onset or ""}) for h in data.has_condition],
        )
        self._edges(
            "Feature",
            "MEASURED",
            [
                (
                    m.patient,
                    m.feature,
                    {"value": m.value, "unit": m.unit or "", "date": m.date or ""},
                )
                for m in data.measured
            ],
        )

    def _vertices(
        self, vertex_type: str, vertices: Sequence[tuple[str, dict[str, object]]]
    ) -> None:
        for start in range(0, len(vertices), BATCH):
            self._conn.upsertVertices(vertex_type, list(vertices[start : start + BATCH]))  # pyright: ignore[reportUnknownMemberType]

    def _edges(
        self, target: str, edge: str, edges: Sequence[tuple[str, str, dict[str, object]]]
    ) -> None:
        # REST++ upserts are keyed by (source, target) within one request: repeated pairs (a
        # patient measured several times) go in successive requests, told apart by the
        # edge's discriminator.
        rounds: list[list[tuple[str, str, dict[str, object]]]] = []
        seen: dict[tuple[str, str], int] = {}
        for item in edges:
            n = seen.get((item[0], item[1]), 0)
            seen[(item[0], item[1])] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(item)
        for batch_round in rounds:
            for start in range(0, len(batch_round), BATCH):
                chunk = batch_round[start : start + BATCH]
                self._conn.upsertEdges("Patient", edge, target, chunk)  # pyright: ignore[reportUnknownMemberType]

    def run(self, cypher: str, params: Mapping[str, GraphValue]) -> GraphResult:
        answer = cast("object", self._conn.runInterpretedQuery(interpreted(cypher, params)))  # pyright: ignore[reportUnknownMemberType]
        columns = return_columns(cypher)
        return GraphResult(columns, _rows(answer, columns))

    def close(self) -> None:
        return None
