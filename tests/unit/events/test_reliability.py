"""The pieces that keep the service from stopping silently, without a database: the intake's
down state (refuse at once, recover on the first good probe), the periodic tasks the worker
schedules, the worker's reconnection loop and its exit statuses, and the sweep's cursor
arithmetic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from procrastinate import App, testing
from psycopg_pool import PoolTimeout

from app.events import jobs
from app.events.repository import EventIntake, EventKey, IntakeUnavailable
from app.events.sweep import _instant, _Position  # pyright: ignore[reportPrivateUsage]
from app.handlers.registry import HandlerRegistry
from app.settings import load_settings


class _Connection:
    async def execute(self, *_args: object, **_kwargs: object) -> None:
        return None


class FlakyPool:
    """A pool whose database is away while ``down`` is set: ``connection()`` fails as the
    real pool does (``PoolTimeout`` after the acquire timeout, here at once)."""

    def __init__(self) -> None:
        self.down = False
        self.acquired = 0
        self.timeouts: list[float | None] = []

    @asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - the pool's own signature
    ) -> AsyncIterator[_Connection]:
        self.timeouts.append(timeout)
        if self.down:
            raise PoolTimeout("couldn't get a connection")
        self.acquired += 1
        yield _Connection()


def key(index: int) -> EventKey:
    return EventKey(
        handler="bmi",
        resource_type="Observation",
        resource_id=f"obs-{index}",
        version_id="1",
        interaction="create",
        source="notification",
    )


async def test_the_intake_refuses_at_once_while_down_and_recovers_on_a_good_probe() -> None:
    pool = FlakyPool()
    intake = EventIntake(pool, App(connector=testing.InMemoryConnector()), probe_interval=0.01)  # pyright: ignore[reportArgumentType]
    pool.down = True
    with pytest.raises(IntakeUnavailable):
        await intake.submit(key(1))
    assert intake.down
    assert await intake.check() == "intake_database_unreachable"
    # Every commit asked for a connection with the short acquire timeout.
    assert set(pool.timeouts) == {intake.acquire_timeout}
    asked = len(pool.timeouts)
    # While down, a notification never waits for the database: no connection is asked for
    # on its behalf (only the probe asks).
    for index in range(20):
        with pytest.raises(IntakeUnavailable):
            await intake.submit(key(index))
    probes_meanwhile = len(pool.timeouts) - asked
    assert probes_meanwhile <= 2
    pool.down = False
    for _ in range(200):
        if not intake.down:
            break
        await asyncio.sleep(0.01)
    assert not intake.down
    assert await intake.check() is None
    await intake.aclose()


def registered(**overrides: Any) -> set[str]:
    settings = load_settings(environment="test", **overrides)
    queue = App(connector=testing.InMemoryConnector())
    jobs.register(queue, settings, HandlerRegistry([]))
    return {task.periodic_id for task in queue.periodic_registry.periodic_tasks.values()}


def test_the_worker_schedules_the_dead_letter_retry_unless_it_is_off() -> None:
    assert "dead_letters" in registered(dead_letter_retry_interval_seconds=300)
    assert "dead_letters" not in registered(dead_letter_retry_interval_seconds=0)
    assert {"stalled", "housekeeping"} <= registered()


def test_intervals_become_cron_expressions() -> None:
    assert jobs.every(5) == "* * * * * */5"
    assert jobs.every(300) == "*/5 * * * *"


async def test_the_worker_reconnects_after_a_lost_database_then_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions: list[str] = []
    stop_after = 3

    async def session(*_args: Any) -> None:
        sessions.append("session")
        if len(sessions) < stop_after:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        asyncio.get_running_loop().call_soon(jobs_stop)
        await asyncio.sleep(3600)

    def jobs_stop() -> None:
        import os  # noqa: PLC0415
        import signal  # noqa: PLC0415

        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(jobs, "_session", session)
    monkeypatch.setattr(jobs, "RECONNECT_FIRST_WAIT", 0.01)
    code = await jobs.run_worker(worker_settings())
    assert code == 0
    assert len(sessions) == stop_after


async def test_a_worker_that_cannot_reach_its_database_gives_up_with_status_3(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def session(*_args: Any) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(jobs, "_session", session)
    monkeypatch.setattr(jobs, "RECONNECT_FIRST_WAIT", 0.01)
    monkeypatch.setattr(jobs, "RECONNECT_MAX_WAIT", 0.02)
    code = await jobs.run_worker(worker_settings(worker_reconnect_limit_seconds=0.2))
    assert code == jobs.EXIT_GAVE_UP


async def test_an_unexpected_error_ends_the_worker_with_status_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def session(*_args: Any) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(jobs, "_session", session)
    assert await jobs.run_worker(worker_settings()) == jobs.EXIT_CRASHED


def worker_settings(**overrides: Any) -> Any:
    return load_settings(
        environment="test",
        medplum_client_secret="unit-test-secret",
        **overrides,
    )


def test_the_sweep_cursor_orders_by_instant_then_id() -> None:
    moment = datetime(2026, 1, 5, 10, 0, 0, 123000, tzinfo=UTC)
    position = _Position(moment, "b", 2)
    assert position.passed(moment, "a")
    assert position.passed(moment, "b")
    assert not position.passed(moment, "c")
    assert not position.passed(datetime(2026, 1, 5, 10, 0, 1, tzinfo=UTC), "a")
    assert _instant(moment) == "2026-01-05T10:00:00.123Z"
