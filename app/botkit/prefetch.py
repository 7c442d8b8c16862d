"""One query where two ask for the same patient's data (pure).

Bots declare their prefetch searches one by one (the BMI bots: the patient's weights, and the
patient's heights). Searches of one resource type that differ only in their ``code`` and
``_count`` are sent as one search for all the codes (20 quota points instead of 20 each) and
split back here: each declared search gets the resources of its own codes, newest first as the
server sorted them, cut at its own ``_count``. When the combined page was full and a declared
search got fewer than it asked for, the combined page may have cut it short: that search is
sent on its own (:func:`MergedSearch.short`), so every bot sees exactly what its own query
would have returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from app.fhir.resource_json import JSONObject

# Types whose ``code`` search parameter is their ``code`` element (matched here as Medplum does).
MERGEABLE_TYPES = frozenset({"Observation", "Condition"})
# Parameters that change what a page holds beyond the matched resources: never merged.
_UNMERGEABLE = frozenset({"_include", "_revinclude", "_summary", "_total", "_elements", "_offset"})
MAX_COUNT = 1000
_DEFAULT_COUNT = 20
_GROWTH = 5  # the combined page asks for this many times the declared counts


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    query: str  # the declared search's own parameters
    codes: tuple[str, ...]
    count: int


@dataclass(frozen=True, slots=True)
class MergedSearch:
    resource_type: str
    query: str  # what is sent
    members: tuple[Member, ...]

    @property
    def merged(self) -> bool:
        return len(self.members) > 1

    def split(self, resources: Sequence[JSONObject]) -> dict[str, list[JSONObject]]:
        if not self.merged:
            return {self.members[0].name: list(resources)}
        out: dict[str, list[JSONObject]] = {}
        for member in self.members:
            mine = [r for r in resources if _has_code(r, member.codes)]
            out[member.name] = mine[: member.count]
        return out

    def short(self, split: dict[str, list[JSONObject]], page_full: bool) -> list[Member]:
        """Members the combined page may have cut short (to be fetched on their own)."""
        if not self.merged or not page_full:
            return []
        return [m for m in self.members if len(split.get(m.name, [])) < m.count]


def _pairs(query: str) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, _, value in (part.partition("=") for part in query.split("&"))
        if name
    ]


def _count(value: str | None) -> int | None:
    if value is None:
        return _DEFAULT_COUNT
    try:
        count = int(value)
    except ValueError:
        return None
    return count if 0 < count <= MAX_COUNT else None


def merge(searches: Sequence[tuple[str, str, str]]) -> list[MergedSearch]:
    """Group ``(name, resource type, query)`` searches; order of first appearance is kept."""
    groups: dict[tuple[str, ...], list[tuple[Member, list[tuple[str, str]]]]] = {}
    singles: list[MergedSearch] = []
    order: list[tuple[str, ...] | int] = []
    for name, resource_type, query in searches:
        pairs = _pairs(query)
        names = [n for n, _ in pairs]
        codes = [v for n, v in pairs if n == "code"]
        counts = [v for n, v in pairs if n == "_count"]
        count = _count(counts[0] if counts else None)
        if (
            resource_type not in MERGEABLE_TYPES
            or len(codes) != 1
            or len(counts) > 1
            or count is None
            or any(n in _UNMERGEABLE or ":" in n for n in names)
        ):
            order.append(len(singles))
            singles.append(MergedSearch(resource_type, query, (Member(name, query, (), 0),)))
            continue
        rest = tuple(sorted(f"{n}={v}" for n, v in pairs if n not in ("code", "_count")))
        key = (resource_type, *rest)
        member = Member(name, query, tuple(c for c in codes[0].split(",") if c), count)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((member, pairs))
    result: list[MergedSearch] = []
    for item in order:
        if isinstance(item, int):
            result.append(singles[item])
            continue
        members = groups[item]
        if len(members) == 1:
            member, _ = members[0]
            result.append(MergedSearch(item[0], member.query, (member,)))
            continue
        codes = list(dict.fromkeys(c for m, _ in members for c in m.codes))
        total = min(MAX_COUNT, _GROWTH * sum(m.count for m, _ in members))
        first = members[0][1]
        query = "&".join(
            [f"{n}={v}" for n, v in first if n not in ("code", "_count")]
            + [f"code={','.join(codes)}", f"_count={total}"]
        )
        result.append(MergedSearch(item[0], query, tuple(m for m, _ in members)))
    return result


def _has_code(resource: JSONObject, tokens: Sequence[str]) -> bool:
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        return False
    for coding in codings:
        if not isinstance(coding, dict):
            continue
        system, value = coding.get("system"), coding.get("code")
        for token in tokens:
            text = unquote(token)
            if "|" in text:
                want_system, _, want_code = text.partition("|")
                if want_code == value and (want_system or None) == (system or None):
                    return True
            elif text == value:
                return True
    return False
