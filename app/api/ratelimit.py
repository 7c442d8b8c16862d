"""Failed-signature limiting per client (abuse control), shared by every receiver process.

Only failures are counted (a missing or wrong signature, a handler that is not subscribed), in
fixed one-minute windows aligned to the wall clock so that every process agrees on the window.
The count lives in a :class:`FailureStore`: PostgreSQL (``starvit.signature_failures``, wired by
the app's lifespan) so that all processes and hosts share it, or memory when the process has no
database.

The receiver must stay fast for Medplum, so a signed (good) delivery costs no database round
trip: the limiter keeps an in-process copy of the shared count of each client that has failed,
refreshed every time that client fails here. Before reading a body, the receiver looks only at
that copy (:meth:`FailureLimiter.blocked`): a client over the limit gets 429 without its body
being read or an HMAC computed. A client that went over the limit on another process is
caught on its first failure here (one body read and one HMAC per process and window), after
which this process refuses it up front too. The price: a client over the limit is refused for
the rest of the window even with a good signature; Medplum retries such a delivery later.

The client is the peer address, or, when the peer is a configured trusted proxy
(``STARVIT_TRUSTED_PROXIES``), the nearest address in ``X-Forwarded-For`` that is not itself a
trusted proxy. ``X-Forwarded-For`` from anyone else is ignored: it is whatever the sender wrote.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from app.observability.logging import get_logger

log = get_logger("app.api.ratelimit")

type Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailureStore(Protocol):
    async def record_failure(self, client: str, window_start: float) -> int:
        """Count one failure of ``client`` in the window starting at ``window_start`` (epoch
        seconds); the client's failures in that window, this one included."""
        ...


class MemoryFailureStore:
    """Per-process counts: for a process without a database, and the fallback while the
    database is unreachable."""

    def __init__(self, max_clients: int = 10_000) -> None:
        self.max_clients = max_clients
        self._counts: dict[str, tuple[float, int]] = {}

    async def record_failure(self, client: str, window_start: float) -> int:
        start, count = self._counts.get(client, (window_start, 0))
        if window_start > start:
            start, count = window_start, 0
        if client not in self._counts and len(self._counts) >= self.max_clients:
            self._evict(window_start)
        self._counts[client] = (start, count + 1)
        return count + 1

    def _evict(self, window_start: float) -> None:
        expired = [c for c, (start, _) in self._counts.items() if start < window_start]
        for client in expired or list(self._counts)[: len(self._counts) // 2]:
            del self._counts[client]


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        store: FailureStore | None = None,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self.store: FailureStore = store or MemoryFailureStore(max_clients)
        self._fallback = MemoryFailureStore(max_clients)
        self.max_clients = max_clients
        # client -> (window start, shared failure count last seen): only clients that failed.
        self._seen: dict[str, tuple[float, int]] = {}

    def _window_start(self, now: float) -> float:
        return math.floor(now / self.window) * self.window

    def blocked(self, client: str) -> int | None:
        """Seconds to wait when ``client`` is over the limit as last seen here, else None. No
        I/O: this runs before every body is read."""
        seen = self._seen.get(client)
        if seen is None:
            return None
        now = self.clock()
        start, count = seen
        if start != self._window_start(now):
            del self._seen[client]
            return None
        if count < self.limit:
            return None
        return self._retry_after(start, now)

    async def record_failure(self, client: str) -> int | None:
        """Count a failure; the seconds to wait when the client is now over the limit."""
        now = self.clock()
        start = self._window_start(now)
        try:
            count = await self.store.record_failure(client, start)
        except Exception as error:  # the limiter must answer, whatever the store does
            log.warning("failure_store_unavailable", exception_type=type(error).__name__)
            count = await self._fallback.record_failure(client, start)
        if client not in self._seen and len(self._seen) >= self.max_clients:
            self._seen.clear()  # a flood of addresses: start over rather than grow
        self._seen[client] = (start, count)
        if count > self.limit:
            return self._retry_after(start, now)
        return None

    def _retry_after(self, start: float, now: float) -> int:
        return max(1, math.ceil(start + self.window - now))


def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """The address a limit applies to (see the module's docstring)."""
    if peer is None:
        return "unknown"
    if not trusted or not forwarded_for:
        return peer
    peer_address = _address(peer)
    if peer_address is None or not _within(peer_address, trusted):
        return peer
    nearest = peer
    # Right to left: each hop appended the address it received the request from; the first
    # one not added by a trusted proxy is the client (anything left of it is the client's word).
    for entry in reversed(forwarded_for.split(",")):
        address = _address(entry)
        if address is None:
            break
        nearest = str(address)
        if not _within(address, trusted):
            break
    return nearest


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[Network, ...]
) -> bool:
    return any(address in network for network in trusted)
