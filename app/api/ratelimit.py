"""A per-client fixed-window counter for failed signatures (abuse control).

Only failures are counted, so a genuine Medplum delivery (signed) is never refused; a client
that keeps sending unsigned or wrongly signed requests gets 429 instead of 401 until the window
rolls over. Kept per process: each receiver process limits what reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self.max_clients = max_clients
        self._counts: dict[str, tuple[float, int]] = {}

    def record_failure(self, client: str) -> bool:
        """Count a failure; True when the client is now over the limit."""
        now = self.clock()
        start, count = self._counts.get(client, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        count += 1
        if client not in self._counts and len(self._counts) >= self.max_clients:
            self._evict(now)
        self._counts[client] = (start, count)
        return count > self.limit

    def retry_after(self, client: str) -> int:
        start, _ = self._counts.get(client, (self.clock(), 0))
        return max(1, int(self.window - (self.clock() - start) + 0.999))

    def _evict(self, now: float) -> None:
        expired = [c for c, (start, _) in self._counts.items() if now - start >= self.window]
        for client in expired or list(self._counts)[: len(self._counts) // 2]:
            del self._counts[client]
