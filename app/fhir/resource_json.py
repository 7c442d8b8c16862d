"""FHIR JSON as it crosses the client boundary: plain parsed JSON with precise static types.

The client never builds ``fhir.resources`` models (about 0.3 ms a resource, see the conventions):
it hands out the parsed JSON typed as :data:`JSONObject` and small typed views. The accessors
below read one member with its JSON type checked, so callers need no ``Any``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import orjson

type JSONScalar = str | int | float | bool | None
type JSONValue = JSONScalar | list[JSONValue] | dict[str, JSONValue]
type JSONObject = dict[str, JSONValue]
type JSONArray = list[JSONValue]

# FHIR R4 `id` (and version id) and resource type names, as the server accepts them.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


def loads(data: bytes) -> JSONValue:
    """Parse JSON bytes (orjson); raises ``orjson.JSONDecodeError`` (a ``ValueError``)."""
    value: JSONValue = orjson.loads(data)
    return value


def loads_object(data: bytes) -> JSONObject | None:
    """Parse a JSON object, or ``None`` when the bytes are empty, not JSON or not an object."""
    if not data:
        return None
    try:
        value = loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def dumps(value: Mapping[str, object] | Sequence[Mapping[str, object]]) -> bytes:
    """Serialise compact JSON (orjson). Mappings that are not ``dict`` (at any depth) are
    converted on the way."""
    return orjson.dumps(value, default=_plain)


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(cast("Mapping[str, object]", value))
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(cast("Sequence[object]", value))
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def get_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def get_number(obj: Mapping[str, object], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def get_object(obj: Mapping[str, object], key: str) -> JSONObject | None:
    value = obj.get(key)
    return cast("JSONObject", value) if isinstance(value, dict) else None


def get_array(obj: Mapping[str, object], key: str) -> JSONArray:
    value = obj.get(key)
    return cast("JSONArray", value) if isinstance(value, list) else []


def get_objects(obj: Mapping[str, object], key: str) -> list[JSONObject]:
    """The members of an array that are JSON objects (FHIR arrays of complex types)."""
    return [item for item in get_array(obj, key) if isinstance(item, dict)]


def version_id_of(resource: Mapping[str, object]) -> str | None:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        return get_str(cast("JSONObject", meta), "versionId")
    return None


def iter_references(value: JSONValue) -> Iterator[str]:
    """Every ``reference`` string anywhere in ``value`` (``Reference.reference``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from iter_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_references(item)


def rewrite_references(value: JSONValue, mapping: Mapping[str, str]) -> JSONValue:
    """A copy of ``value`` whose ``reference`` strings found in ``mapping`` are replaced.
    Only ``reference`` members are touched (a ``urn:uuid`` in an identifier stays)."""
    if isinstance(value, dict):
        out: JSONObject = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out[key] = mapping.get(item, item)
            else:
                out[key] = rewrite_references(item, mapping)
        return out
    if isinstance(value, list):
        return [rewrite_references(item, mapping) for item in value]
    return value


def rewrite_resource(resource: JSONObject, mapping: Mapping[str, str]) -> JSONObject:
    """:func:`rewrite_references` for one resource (or bundle entry)."""
    rewritten = rewrite_references(resource, mapping)
    assert isinstance(rewritten, dict)
    return rewritten
