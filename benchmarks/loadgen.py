"""A small HTTP/1.1 load generator for the receiver benchmark, run as its own process:

    python -m benchmarks.loadgen '{"port": 8000, "mode": "open", "rate": 200, ...}'

It prints one JSON object (the result) on stdout. Requests are pre-signed notifications from
:class:`benchmarks.payloads.NotificationFactory`, written on raw keep-alive connections with
``uvloop`` and parsed with ``httptools`` (both already installed with ``uvicorn[standard]``), so
the generator costs a few tens of microseconds per request, far less than an HTTP client
library would on a 2-core machine it shares with the server.

Two modes:

* ``closed``: ``connections`` connections, each sending its next request as soon as the
  previous answer arrives (saturation throughput, like ``wrk -c``). Requests answered in the
  first ``warmup`` seconds are not counted.
* ``open``: requests are *scheduled* at a fixed rate (request i at ``t0 + i / rate``) whatever
  the server does, sent on a free connection (a new one is opened when none is free, up to
  ``max_connections``; beyond that they wait in the generator). Latency is measured from the
  scheduled time, so time a request spends waiting for a connection or for a late timer counts
  against the server (no coordinated omission); ``send_lag`` reports how late the generator's
  timers fired (about 1 ms of resolution on this event loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import httptools  # pyright: ignore[reportMissingTypeStubs]
import uvloop

from benchmarks.payloads import NotificationFactory

if TYPE_CHECKING:
    from collections.abc import Callable

clock = time.perf_counter


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50) * 1000,
        "p90": percentile(ordered, 0.90) * 1000,
        "p99": percentile(ordered, 0.99) * 1000,
        "p999": percentile(ordered, 0.999) * 1000,
        "max": (ordered[-1] * 1000) if ordered else float("nan"),
    }


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self, on_done: Callable[[Connection, int], None], on_lost: Callable[..., None]):
        self.on_done = on_done
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.scheduled = 0.0
        self.sent = 0.0
        self.busy = False
        self.closed = False
        self.idle_since = clock()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        self.busy = False
        self.idle_since = clock()
        self.on_done(self, int(self.parser.get_status_code()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(self)

    def send(self, request: bytes, scheduled: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.scheduled = scheduled
        self.sent = clock()
        self.transport.write(request)


@dataclass
class Recorder:
    latencies: list[float] = field(default_factory=list[float])
    send_lags: list[float] = field(default_factory=list[float])
    statuses: collections.Counter[int] = field(default_factory=collections.Counter[int])
    errors: int = 0


class Generator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host = str(config.get("host", "127.0.0.1"))
        self.port = int(config["port"])
        self.factory = NotificationFactory(
            str(config["secret"]),
            host=f"{self.host}:{self.port}",
            run_id=str(config["run_id"]),
            patients=int(config.get("patients", 1000)),
        )
        self.counter = int(config.get("first_request", 0))
        self.record = Recorder()
        self.connections: list[Connection] = []
        self.free: list[Connection] = []  # LIFO: the most recently used connection first
        self.waiting: collections.deque[float] = collections.deque()
        self.opening = 0
        self.max_connections = int(config.get("max_connections", 256))
        self.outstanding = 0
        self.idle = asyncio.Event()
        self.counting_from = 0.0
        self.counting_until = float("inf")
        self.stop_at = float("inf")

    def next_request(self) -> bytes:
        self.counter += 1
        return self.factory.request(self.counter)

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, connection = await loop.create_connection(
            lambda: Connection(self.done, self.lost), self.host, self.port
        )
        self.connections.append(connection)
        return connection

    # ------------------------------------------------------------------ callbacks

    def done(self, connection: Connection, status: int) -> None:
        now = clock()
        self.outstanding -= 1
        if self.counting_from <= now <= self.counting_until:
            self.record.latencies.append(now - connection.scheduled)
            self.record.send_lags.append(connection.sent - connection.scheduled)
            self.record.statuses[status] += 1
        self.dispatch(connection, now)

    def lost(self, connection: Connection) -> None:
        if connection.busy:
            connection.busy = False
            self.outstanding -= 1
            self.record.errors += 1
        if connection in self.free:
            self.free.remove(connection)
        if not self.outstanding and not self.waiting:
            self.idle.set()

    def dispatch(self, connection: Connection, now: float) -> None:
        """A connection is free: give it the oldest waiting request, or the next closed-loop
        request, or put it back in the pool."""
        if self.waiting:
            self.outstanding += 1
            connection.send(self.next_request(), self.waiting.popleft())
        elif now < self.stop_at:
            self.outstanding += 1
            connection.send(self.next_request(), now)
        else:
            self.free.append(connection)
            if not self.outstanding:
                self.idle.set()

    def submit(self, scheduled: float) -> None:
        while self.free:
            connection = self.free.pop()
            if connection.closed:
                continue
            if clock() - connection.idle_since > 3.0:
                # The server drops idle keep-alive connections after 5 s: do not race it.
                if connection.transport is not None:
                    connection.transport.close()
                continue
            self.outstanding += 1
            connection.send(self.next_request(), scheduled)
            return
        self.waiting.append(scheduled)
        if len(self.connections) + self.opening < self.max_connections:
            self.opening += 1
            asyncio.get_running_loop().create_task(self._open_for_waiting())

    async def _open_for_waiting(self) -> None:
        try:
            connection = await self.connect()
        except OSError:
            self.record.errors += 1
            return
        finally:
            self.opening -= 1
        self.dispatch(connection, clock())

    # ------------------------------------------------------------------ modes

    async def closed_loop(self, connections: int, duration: float, warmup: float) -> float:
        opened = [await self.connect() for _ in range(connections)]
        start = clock()
        self.counting_from = start + warmup
        self.counting_until = self.counting_from + duration
        self.stop_at = self.counting_until
        self.idle.clear()
        for connection in opened:
            self.outstanding += 1
            connection.send(self.next_request(), clock())
        await asyncio.wait_for(self.idle.wait(), timeout=warmup + duration + 60)
        return duration

    async def open_loop(self, rate: float, duration: float, warmup: float, initial: int) -> float:
        for _ in range(initial):
            self.free.append(await self.connect())
        self.stop_at = 0.0  # never chain closed-loop requests
        total = int(rate * (warmup + duration))
        start = clock() + 0.01
        self.counting_from = start + warmup
        self.counting_until = float("inf")
        self.idle.clear()
        index = 0
        while index < total:
            due = start + index / rate
            now = clock()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while index < total and start + index / rate <= now:
                self.submit(start + index / rate)
                index += 1
        self.idle.clear()
        if self.outstanding or self.waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout=60)
        return duration

    def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


async def run(config: dict[str, Any]) -> dict[str, Any]:
    generator = Generator(config)
    mode = str(config["mode"])
    duration = float(config["duration"])
    warmup = float(config.get("warmup", 1.0))
    cpu_before = time.process_time()
    wall_before = clock()
    if mode == "closed":
        measured = await generator.closed_loop(int(config["connections"]), duration, warmup)
    elif mode == "open":
        measured = await generator.open_loop(
            float(config["rate"]), duration, warmup, int(config.get("initial_connections", 8))
        )
    else:
        raise ValueError(f"unknown mode {mode!r}")
    cpu = time.process_time() - cpu_before
    wall = clock() - wall_before
    generator.close()
    record = generator.record
    completed = sum(record.statuses.values())
    return {
        "mode": mode,
        "rate": config.get("rate"),
        "connections": config.get("connections"),
        "duration_s": measured,
        "completed": completed,
        "errors": record.errors,
        "statuses": {str(k): v for k, v in sorted(record.statuses.items())},
        "throughput": completed / measured,
        "latency_ms": summary_ms(record.latencies),
        "send_lag_ms": summary_ms(record.send_lags),
        "connections_opened": len(generator.connections),
        "generator_cpu_share": cpu / wall if wall else 0.0,
        "requests_made": generator.counter - int(config.get("first_request", 0)),
    }


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    result = uvloop.run(run(config))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
