"""SQL-on-FHIR v2 ViewDefinitions and the runner that turns resources into flat rows.

The runner implements what the shipped views use: ``select`` (nested), ``column`` (with
``collection``), ``forEach``, ``forEachOrNull``, ``where``, ``constant`` and the
``getResourceKey()`` / ``getReferenceKey([type])`` functions, with FHIRPath by ``fhirpathpy``.
``unionAll`` and ``repeat`` are refused at load time rather than silently ignored."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Literal, cast

import fhirpathpy  # pyright: ignore[reportMissingTypeStubs]

from app.fhir.resource_json import JSONObject, JSONValue

VIEWS_DIR = Path(__file__).parent
_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})$")
_FULL_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")

type ColumnType = Literal["string", "integer", "decimal", "boolean", "date"]
type Cell = str | int | float | bool | date | None
type Row = dict[str, Cell]
type Compiled = Callable[[object, Mapping[str, object]], list[object]]


class ViewDefinitionError(ValueError):
    """A ViewDefinition the runner does not support or that is malformed."""


def _type_name(type_info: object) -> str | None:
    name = getattr(type_info, "name", None)
    return name if isinstance(name, str) else None


def _get_resource_key(inputs: list[object]) -> list[object]:
    return [i["id"] for i in inputs if isinstance(i, dict) and "id" in i]


def _get_reference_key(inputs: list[object], type_info: object = None) -> list[object]:
    wanted = _type_name(type_info) if type_info is not None else None
    keys: list[object] = []
    for item in inputs:
        if not isinstance(item, dict):
            continue
        reference = cast("dict[str, object]", item).get("reference")
        m = _REFERENCE.match(reference) if isinstance(reference, str) else None
        if m is not None and (wanted is None or m.group(1) == wanted):
            keys.append(m.group(2))
    return keys


_FUNCTIONS: dict[str, dict[str, object]] = {
    "getResourceKey": {"fn": _get_resource_key, "arity": {0: list[str]()}},
    "getReferenceKey": {"fn": _get_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
}


def _compile(path: str) -> Compiled:
    try:
        compiled = fhirpathpy.compile(path, options={"userInvocationTable": _FUNCTIONS})  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    except Exception as error:
        raise ViewDefinitionError(f"FHIRPath {path!r} does not parse: {error}") from None
    return cast("Compiled", compiled)


@dataclass(frozen=True)
class Column:
    name: str
    path: Compiled
    type: ColumnType
    collection: bool


@dataclass(frozen=True)
class Select:
    columns: tuple[Column, ...]
    selects: tuple[Select, ...]
    for_each: Compiled | None
    or_null: bool


@dataclass(frozen=True)
class ViewDefinition:
    name: str
    resource: str
    constants: Mapping[str, object]
    where: tuple[Compiled, ...]
    select: tuple[Select, ...]
    columns: tuple[tuple[str, ColumnType], ...]
    document: JSONObject

    def run(self, resources: Iterable[Mapping[str, JSONValue]]) -> list[Row]:
        rows: list[Row] = []
        for resource in resources:
            if resource.get("resourceType") != self.resource:
                continue
            if all(_is_true(w(resource, self.constants)) for w in self.where):
                rows.extend(_rows(self.select, resource, self.constants))
        return rows


def _is_true(result: list[object]) -> bool:
    return len(result) == 1 and result[0] is True


def _cell(values: list[object], column: Column) -> Cell:
    if column.collection:
        return json.dumps(values, default=str)
    if len(values) > 1:
        raise ViewDefinitionError(f"column {column.name} gave several values")
    if not values:
        return None
    value = values[0]
    match column.type:
        case "date":
            m = _FULL_DATE.match(str(value))
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
        case "integer":
            try:
                return int(str(value)[:4]) if isinstance(value, str) else int(str(value))
            except ValueError:
                return None
        case "decimal":
            return float(value) if isinstance(value, int | float | Decimal) else None
        case "boolean":
            return value if isinstance(value, bool) else None
        case "string":
            return str(value)


def _select_rows(select: Select, node: object, constants: Mapping[str, object]) -> list[Row]:
    if select.for_each is not None:
        nodes = select.for_each(node, constants)
        if not nodes:
            if not select.or_null:
                return []
            return [dict.fromkeys(_names(select))]
        return [row for n in nodes for row in _one(select, n, constants)]
    return _one(select, node, constants)


def _names(select: Select) -> list[str]:
    names = [c.name for c in select.columns]
    for sub in select.selects:
        names.extend(_names(sub))
    return names


def _one(select: Select, node: object, constants: Mapping[str, object]) -> list[Row]:
    base: Row = {c.name: _cell(c.path(node, constants), c) for c in select.columns}
    return [{**base, **sub} for sub in _rows(select.selects, node, constants)]


def _rows(selects: Sequence[Select], node: object, constants: Mapping[str, object]) -> list[Row]:
    rows: list[Row] = [{}]
    for select in selects:
        produced = _select_rows(select, node, constants)
        rows = [{**left, **right} for left in rows for right in produced]
        if not rows:
            return []
    return rows


def _parse_select(raw: object) -> Select:
    if not isinstance(raw, dict):
        raise ViewDefinitionError("select must be an object")
    doc = cast("dict[str, object]", raw)
    for unsupported in ("unionAll", "repeat"):
        if unsupported in doc:
            raise ViewDefinitionError(f"{unsupported} is not supported by this runner")
    columns: list[Column] = []
    for col in cast("list[object]", doc.get("column") or []):
        if not isinstance(col, dict):
            raise ViewDefinitionError("column must be an object")
        c = cast("dict[str, object]", col)
        name, path, kind = c.get("name"), c.get("path"), c.get("type", "string")
        if not isinstance(name, str) or not isinstance(path, str):
            raise ViewDefinitionError("a column needs a name and a path")
        if kind not in ("string", "integer", "decimal", "boolean", "date"):
            raise ViewDefinitionError(f"column {name}: unsupported type {kind!r}")
        columns.append(Column(name, _compile(path), kind, c.get("collection") is True))
    for_each = doc.get("forEach")
    or_null = doc.get("forEachOrNull")
    if for_each is not None and or_null is not None:
        raise ViewDefinitionError("forEach and forEachOrNull are exclusive")
    path = for_each if for_each is not None else or_null
    if path is not None and not isinstance(path, str):
        raise ViewDefinitionError("forEach must be a FHIRPath string")
    return Select(
        columns=tuple(columns),
        selects=tuple(_parse_select(s) for s in cast("list[object]", doc.get("select") or [])),
        for_each=_compile(path) if path else None,
        or_null=or_null is not None,
    )


def _column_types(select: Select) -> list[tuple[str, ColumnType]]:
    out: list[tuple[str, ColumnType]] = [(c.name, c.type) for c in select.columns]
    for sub in select.selects:
        out.extend(_column_types(sub))
    return out


def _constant_value(raw: dict[str, object]) -> object:
    for key, value in raw.items():
        if key.startswith("value"):
            return value
    raise ViewDefinitionError("a constant needs a value[x]")


def parse_view(document: JSONObject) -> ViewDefinition:
    name, resource = document.get("name"), document.get("resource")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ViewDefinitionError("a view needs a lower-case name usable as a table name")
    if not isinstance(resource, str):
        raise ViewDefinitionError(f"view {name} needs a resource")
    constants = {
        str(c.get("name")): _constant_value(c)
        for c in cast("list[dict[str, object]]", document.get("constant") or [])
    }
    where = tuple(
        _compile(str(cast("dict[str, object]", w).get("path")))
        for w in cast("list[object]", document.get("where") or [])
    )
    select = tuple(_parse_select(s) for s in cast("list[object]", document.get("select") or []))
    columns = [col for s in select for col in _column_types(s)]
    if len({c for c, _ in columns}) != len(columns):
        raise ViewDefinitionError(f"view {name} repeats a column name")
    if not columns or columns[0][0] != "id":
        raise ViewDefinitionError(f"view {name} must start with the resource key column 'id'")
    return ViewDefinition(name, resource, constants, where, select, tuple(columns), document)


def load_views(directory: Path = VIEWS_DIR) -> tuple[ViewDefinition, ...]:
    """The shipped views (every ``*.json`` here), by name."""
    views: list[ViewDefinition] = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        views.append(parse_view(cast("JSONObject", document)))
    return tuple(views)
