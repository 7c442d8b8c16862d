"""Fault injection for the integration tests: a PostgreSQL of the test's own that can be stopped
and started again on the same port (a restart or a failover as the service sees it), and
helpers to read the service's JSON log lines and its tables."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from app.persistence.embedded import ensure_running, stop
from devtools.databases import create_database
from devtools.stack import ServiceProcess, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StoppablePostgres:
    """An embedded PostgreSQL in ``var/test-pgdata-faults`` on a fixed loopback port, which the
    test stops (``pg_ctl -m fast``: every connection is cut) and starts again."""

    data_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var" / "test-pgdata-faults")
    port: int = field(default_factory=free_port)
    outages: int = 0

    @property
    def server_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> float:
        """Start the server; the seconds it took."""
        began = time.monotonic()
        server, _started = ensure_running(self.data_dir, port=self.port)
        assert server.port == self.port, "a server from another run holds the data directory"
        return time.monotonic() - began

    def stop(self) -> None:
        stop(self.data_dir)
        self.outages += 1

    def new_database(self, name: str) -> str:
        return create_database(self.server_url, name, replace=True)


def stoppable_postgres() -> Iterator[StoppablePostgres]:
    """The generator behind a fixture: started, and stopped whatever the test did."""
    server = StoppablePostgres()
    stop(server.data_dir)  # a leftover of an interrupted run would hold another port
    server.start()
    try:
        yield server
    finally:
        stop(server.data_dir)


def log_events(process: ServiceProcess, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``process`` whose ``event`` is ``event``."""
    found: list[dict[str, Any]] = []
    for line in list(process.output):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and parsed.get("event") == event:
            found.append(parsed)  # pyright: ignore[reportUnknownArgumentType]
    return found


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=3) as conn:
        return list(conn.execute(sql, params))  # pyright: ignore[reportArgumentType]


def event_rows(url: str) -> list[tuple[Any, ...]]:
    """(id, handler, resource_type, resource_id, version_id, status, outcome, error_code,
    attempts) of every event key."""
    return query(
        url,
        "SELECT id, handler, resource_type, resource_id, version_id, status, outcome, "
        "error_code, attempts FROM starvit.event_keys ORDER BY id",
    )


def assert_each_event_once(url: str) -> None:
    """No event key recorded twice, and no event with more than one successful job (a job
    that ran again after a crash is the same job row; a second job would be a second set of
    effects)."""
    rows = event_rows(url)
    identities = [(r[1], r[2], r[3], r[4]) for r in rows]
    assert len(identities) == len(set(identities))
    twice = query(
        url,
        "SELECT (args->>'event_id')::bigint, count(*) FROM procrastinate_jobs "
        "WHERE task_name = 'starvit:process_event' AND status = 'succeeded' "
        "GROUP BY 1 HAVING count(*) > 1",
    )
    assert twice == [], f"events with more than one successful job: {twice}"


async def wait_until(probe: Any, within: float = 60.0, every: float = 0.2) -> Any:
    """Poll the (sync or async) ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s; last value: {value!r}")
        await asyncio.sleep(every)
