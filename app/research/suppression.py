"""Small-cell suppression as the CMS cell size suppression policy asks for it: no published
count from 1 to 10 (``MIN_CELL``), and none that can be derived from the other published
cells and totals.

* Primary: every count from 1 to 10 is suppressed (0 may be shown: it reveals no one).
* Complementary: in every line of a table (a row or a column with its published total) the
  suppressed cells must together hold at least ``MIN_CELL`` people and be at least two cells,
  otherwise ``total - shown`` would give a small count or a suppressed cell exactly; the
  smallest shown non-zero cell of that line is suppressed until that holds, and if it cannot
  hold the line's total is suppressed too. Rows and columns are revisited until nothing
  changes (a cell suppressed for a column may open a row).
* A total from 1 to 10 is itself suppressed, and so is a grand total that would reveal a
  suppressed margin."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

MIN_CELL = 11


def is_small(count: int) -> bool:
    return 0 < count < MIN_CELL


@dataclass
class Line:
    """Cells that add up to a total (a row or column of a table, or a one-way table)."""

    cells: list[Hashable]
    total: Hashable


def _fix_line(line: Line, counts: Mapping[Hashable, int], suppressed: set[Hashable]) -> bool:
    """Complementary suppression of one line; returns whether anything changed."""
    changed = False
    if is_small(counts[line.total]) and line.total not in suppressed:
        suppressed.add(line.total)
        changed = True
    hidden = [c for c in line.cells if c in suppressed]
    if not hidden:
        return changed
    if line.total in suppressed:
        # the total is hidden: the hidden cells cannot be derived from it
        return changed
    while True:
        hidden = [c for c in line.cells if c in suppressed]
        hidden_sum = sum(counts[c] for c in hidden)
        if hidden_sum == 0 or (len(hidden) >= 2 and hidden_sum >= MIN_CELL):
            return changed
        shown = sorted(
            (c for c in line.cells if c not in suppressed and counts[c] > 0),
            key=lambda c: counts[c],
        )
        if not shown:
            suppressed.add(line.total)
            return True
        suppressed.add(shown[0])
        changed = True


def suppress(counts: Mapping[Hashable, int], lines: Sequence[Line]) -> set[Hashable]:
    """The keys (cells and totals) to withhold, for a table given as counts by key and the
    lines that add up."""
    suppressed = {k for k, v in counts.items() if is_small(v)}
    changed = True
    while changed:
        changed = False
        for line in lines:
            changed |= _fix_line(line, counts, suppressed)
    return suppressed


@dataclass(frozen=True, slots=True)
class Cell:
    key: tuple[str, ...]
    count: int | None  # None when suppressed


@dataclass(frozen=True, slots=True)
class SuppressedTable:
    dimensions: tuple[str, ...]
    cells: list[Cell]
    margins: dict[str, list[Cell]]  # per dimension: the totals over the other dimensions
    total: int | None


def one_way(dimension: str, counts: Mapping[str, int], total: int) -> SuppressedTable:
    table: dict[Hashable, int] = {("cell", k): v for k, v in counts.items()}
    table["total"] = total
    hidden = suppress(table, [Line([("cell", k) for k in counts], "total")])
    cells = [Cell((k,), None if ("cell", k) in hidden else v) for k, v in sorted(counts.items())]
    return SuppressedTable((dimension,), cells, {}, None if "total" in hidden else total)


def two_way(
    dimensions: tuple[str, str],
    counts: Mapping[tuple[str, str], int],
    row_totals: Mapping[str, int],
    column_totals: Mapping[str, int],
    total: int,
) -> SuppressedTable:
    """A cross-tabulation whose rows and columns add up to their totals (each person in
    exactly one cell)."""
    rows = sorted(row_totals)
    columns = sorted(column_totals)
    table: dict[Hashable, int] = {}
    for r in rows:
        for c in columns:
            table[("cell", r, c)] = counts.get((r, c), 0)
        table[("row", r)] = row_totals[r]
    for c in columns:
        table[("column", c)] = column_totals[c]
    table["total"] = total
    lines = [Line([("cell", r, c) for c in columns], ("row", r)) for r in rows]
    lines += [Line([("cell", r, c) for r in rows], ("column", c)) for c in columns]
    lines.append(Line([("row", r) for r in rows], "total"))
    lines.append(Line([("column", c) for c in columns], "total"))
    hidden = suppress(table, lines)

    def shown(key: Hashable) -> int | None:
        return None if key in hidden else table[key]

    cells = [Cell((r, c), shown(("cell", r, c))) for r in rows for c in columns]
    margins = {
        dimensions[0]: [Cell((r,), shown(("row", r))) for r in rows],
        dimensions[1]: [Cell((c,), shown(("column", c))) for c in columns],
    }
    return SuppressedTable(dimensions, cells, margins, shown("total"))


def prevalence(counts: Mapping[str, int], population: int) -> tuple[list[Cell], int | None]:
    """Counts that do not add up (a person may have several conditions) against a published
    population: a count is withheld when it is small or when the people *without* it are
    (``population - count`` from 1 to 10); a small population is withheld with everything."""
    if is_small(population):
        return [Cell((k,), None) for k in sorted(counts)], None
    cells = [
        Cell((k,), None if is_small(v) or is_small(population - v) else v)
        for k, v in sorted(counts.items())
    ]
    return cells, population
