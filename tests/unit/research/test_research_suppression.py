"""Small-cell suppression: no published count from 1 to 10, none derivable."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from app.research.suppression import MIN_CELL, is_small, one_way, prevalence, two_way


def _derivable(shown: dict[object, int | None], cells: list[object], total: object) -> bool:
    """Whether a hidden cell of the line, or a small sum of hidden cells, follows from the
    shown ones and a shown total."""
    if shown[total] is None:
        return False
    hidden = [c for c in cells if shown[c] is None]
    if not hidden:
        return False
    hidden_sum = shown[total] - sum(shown[c] or 0 for c in cells)  # type: ignore[operator]
    return len(hidden) == 1 or is_small(hidden_sum)


def test_a_single_small_cell_takes_its_smallest_neighbour_with_it() -> None:
    table = one_way("sex", {"female": 40, "male": 25, "other": 3}, 68)
    shown = {c.key[0]: c.count for c in table.cells}
    assert shown == {"female": 40, "male": None, "other": None}
    assert table.total == 68


def test_a_small_total_hides_everything_in_prevalence() -> None:
    cells, population = prevalence({"a": 5, "b": 7}, 9)
    assert population is None
    assert all(c.count is None for c in cells)
    cells, population = prevalence({"common": 48, "rare": 4, "mid": 20}, 50)
    assert {c.key[0]: c.count for c in cells} == {"common": None, "mid": 20, "rare": None}


@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abcd"), st.sampled_from("wxyz")),
        st.integers(0, 40),
        min_size=1,
    )
)
def test_no_published_count_is_small_or_derivable(counts: dict[tuple[str, str], int]) -> None:
    rows: Counter[str] = Counter()
    columns: Counter[str] = Counter()
    for (r, c), n in counts.items():
        rows[r] += n
        columns[c] += n
    total = sum(counts.values())
    table = two_way(("r", "c"), counts, rows, columns, total)
    published = (
        [c.count for c in table.cells]
        + [c.count for cells in table.margins.values() for c in cells]
        + [table.total]
    )
    assert not any(n is not None and 0 < n < MIN_CELL for n in published)
    shown: dict[object, int | None] = {("cell", *c.key): c.count for c in table.cells}
    shown.update({("row", c.key[0]): c.count for c in table.margins["r"]})
    shown.update({("column", c.key[0]): c.count for c in table.margins["c"]})
    shown["total"] = table.total
    row_keys = sorted(rows)
    column_keys = sorted(columns)
    for r in row_keys:
        assert not _derivable(shown, [("cell", r, c) for c in column_keys], ("row", r))
    for c in column_keys:
        assert not _derivable(shown, [("cell", r, c) for r in row_keys], ("column", c))
    assert not _derivable(shown, [("row", r) for r in row_keys], "total")
    assert not _derivable(shown, [("column", c) for c in column_keys], "total")
