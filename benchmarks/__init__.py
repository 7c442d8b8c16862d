"""Benchmarks for ``make bench`` (``python -m benchmarks.run``); see docs/benchmarks.md."""
