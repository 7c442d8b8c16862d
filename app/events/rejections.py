"""PHI-free counts of refused deliveries, by handler, reason and minute.

Counting must not cost the receiver a database write per refused request (a flood of refusals
is exactly when the database should be spared), so counts are kept in memory and flushed
periodically by the app's lifespan into ``starvit.rejected_deliveries`` (an upsert adding to
the minute's count; app/events/repository.py), where
:func:`app.events.repository.rejected_deliveries` reads them for the ops dashboard.

Nothing a sender wrote is recorded: the handler is a registered handler's name or ``-``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

# "duplicate" is not a refusal: a delivery of a version already received (answered 200),
# counted the same cheap way for the ops dashboard.
type Reason = Literal[
    "bad_signature",
    "malformed",
    "unknown_handler",
    "wrong_resource_type",
    "rate_limited",
    "duplicate",
]
NO_HANDLER = "-"

# (handler, reason, minute as epoch seconds) -> count
type Counts = dict[tuple[str, Reason, int], int]
type Sink = Callable[[Counts], Awaitable[None]]


class RejectionCounter:
    def __init__(self, handlers: frozenset[str], clock: Callable[[], float] = time.time) -> None:
        self.handlers = handlers
        self.clock = clock
        self._counts: Counts = {}

    def count(self, reason: Reason, handler: str | None = None) -> None:
        name = handler if handler in self.handlers else NO_HANDLER
        minute = math.floor(self.clock() / 60) * 60
        key = (name, reason, minute)
        self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> Counts:
        """The counts not yet flushed."""
        return dict(self._counts)

    async def flush(self, sink: Sink) -> int:
        """Hand the counts to ``sink``; kept for the next flush when it fails."""
        counts, self._counts = self._counts, {}
        if not counts:
            return 0
        try:
            await sink(counts)
        except BaseException:
            for key, value in counts.items():
                self._counts[key] = self._counts.get(key, 0) + value
            raise
        return sum(counts.values())
