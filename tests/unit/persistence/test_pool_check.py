"""The pool's connection check: a round trip only for a connection that sat idle."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from app.persistence import database
from app.persistence.database import _IdleCheck  # pyright: ignore[reportPrivateUsage]


class FakeConnection:
    closed = False


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []

    async def check_connection(conn: Any) -> None:
        sent.append(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(check_connection))
    return sent


async def test_a_connection_in_use_a_moment_ago_is_not_checked_again(
    round_trips: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(database.time, "monotonic", lambda: clock[0])
    check = _IdleCheck(idle_seconds=2.0)
    conn: Any = FakeConnection()
    await check(conn)  # never seen: checked
    clock[0] += 0.5
    await check(conn)  # handed out half a second ago: not checked
    assert round_trips == [conn]
    clock[0] += 5.0
    await check(conn)  # idle for five seconds: checked again
    assert round_trips == [conn, conn]


async def test_a_closed_connection_is_always_checked(round_trips: list[Any]) -> None:
    check = _IdleCheck(idle_seconds=60.0)
    conn: Any = FakeConnection()
    await check(conn)
    conn.closed = True
    await check(conn)
    assert len(round_trips) == 2
