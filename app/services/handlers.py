"""The event handlers the receiver accepts in the ``X-Starvit-Bot`` channel header: every bot,
plus the clinician-decision handler for review Tasks."""

from __future__ import annotations

from functools import cache

from app.services.notifications import REVIEW_HANDLER
from bots import ALL_BOTS


@cache
def handler_names() -> frozenset[str]:
    return frozenset({*(bot.declaration.name for bot in ALL_BOTS), REVIEW_HANDLER})
