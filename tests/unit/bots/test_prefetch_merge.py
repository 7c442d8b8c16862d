"""Prefetch searches that differ only in their codes are sent as one, and split back into
exactly what each declared search would have returned."""

from __future__ import annotations

from typing import Any

from app.botkit.prefetch import merge

W = "http://loinc.org|29463-7"
H = "http://loinc.org|8302-2"
P = "subject=Patient/p1"


def obs(i: int, code: str) -> dict[str, Any]:
    system, _, value = code.partition("|")
    return {
        "resourceType": "Observation",
        "id": f"o{i}",
        "code": {"coding": [{"system": system, "code": value}]},
    }


def test_two_code_searches_become_one_and_split_back() -> None:
    [merged] = merge(
        [
            ("weights", "Observation", f"{P}&code={W}&_sort=-date&_count=2"),
            ("heights", "Observation", f"{P}&code={H}&_sort=-date&_count=3"),
        ]
    )
    assert merged.merged
    assert merged.query == f"{P}&_sort=-date&code={W},{H}&_count=25"
    page = [obs(1, W), obs(2, H), obs(3, W), obs(4, W), obs(5, H)]
    split = merged.split(page)
    assert [r["id"] for r in split["weights"]] == ["o1", "o3"], "cut at its own _count"
    assert [r["id"] for r in split["heights"]] == ["o2", "o5"]
    assert merged.short(split, page_full=False) == []
    # A full combined page may have cut the heights short: fetched on their own.
    assert [m.name for m in merged.short(split, page_full=True)] == ["heights"]


def test_searches_that_differ_otherwise_are_not_merged() -> None:
    searches = merge(
        [
            ("a", "Observation", f"{P}&code={W}&_count=20"),
            ("b", "Observation", f"{P}&code={H}&status=final&_count=20"),
            ("c", "Condition", f"{P}&clinical-status=active&_count=100"),
            ("d", "Observation", f"{P}&code={H}&_include=Observation:subject"),
            ("e", "Task", f"{P}&code={H}"),
        ]
    )
    assert [s.merged for s in searches] == [False] * 5
    assert searches[0].query == f"{P}&code={W}&_count=20"
    page = [obs(1, W)]
    assert searches[0].split(page) == {"a": page}


def test_a_code_without_system_and_encoded_tokens_match() -> None:
    [merged] = merge(
        [
            ("x", "Observation", f"{P}&code=29463-7"),
            ("y", "Observation", f"{P}&code=http%3A%2F%2Floinc.org%7C8302-2"),
        ]
    )
    split = merged.split([obs(1, W), obs(2, H), obs(3, "http://other|8302-2")])
    assert [r["id"] for r in split["x"]] == ["o1"]
    assert [r["id"] for r in split["y"]] == ["o2"]
