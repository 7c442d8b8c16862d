"""Starvit clinical event processor."""

__version__ = "0.1.0"
