"""The server-rendered SVG charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.ops.charts import Series, line_chart


def test_a_chart_draws_each_series_with_gaps_where_there_is_no_value() -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    times = [start + timedelta(minutes=i) for i in range(5)]
    svg = str(
        line_chart(
            "Latency",
            times,
            [
                Series("p50", "info", [10.0, 20.0, None, 40.0, 50.0]),
                Series("p95", "warn", [None] * 5),
            ],
            "ms",
        )
    )
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert "<title>Latency</title>" in svg
    # Two segments of the p50 line around the missing minute, none for an empty series.
    assert svg.count('class="line info"') == 2
    assert 'class="line warn"' not in svg
    assert ">10:00<" in svg
    assert ">10:04<" in svg
    # The axis reaches a round figure above the largest value.
    assert ">50<" in svg


def test_chart_text_is_escaped() -> None:
    svg = str(line_chart("<script>", [], [Series("a&b", "ok", [])], "<u>"))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "a&amp;b" in svg
