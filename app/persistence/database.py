"""The PostgreSQL pool and idempotent schema set-up (ours and procrastinate's).

Set-up runs under a transaction-scoped advisory lock so that several processes starting at once
(receiver workers, queue workers) neither race nor fail: procrastinate's own ``apply_schema``
is not idempotent, so it is applied only when its table is absent.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from procrastinate import App

_SCHEMA_LOCK = 0x5_7A_7E_17  # any constant: identifies the set-up advisory lock


def own_schema_sql() -> str:
    return resources.files("app.persistence").joinpath("schema.sql").read_text()


async def ensure_schema(url: str, queue: App) -> None:
    async with await AsyncConnection.connect(url, autocommit=False) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        await conn.execute(own_schema_sql())  # pyright: ignore[reportCallIssue, reportArgumentType]
        cursor = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await cursor.fetchone()
        has_queue = bool(row and row[0])
        if not has_queue:
            schema = queue.schema_manager.get_schema()
            await conn.execute(schema)  # pyright: ignore[reportCallIssue, reportArgumentType]


class Database:
    """The service's pool (separate from procrastinate's own connector pool)."""

    name = "database"

    def __init__(self, url: str, max_size: int = 10) -> None:
        self.url = url
        self.pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            connection_class=AsyncConnection,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def check(self) -> str | None:
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return "database_unreachable"
        return None

    async def aclose(self) -> None:
        await self.pool.close()
