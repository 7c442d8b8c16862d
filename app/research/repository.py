"""The research zone's rows in the service's database: checkpoints and exports (no PHI)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True, slots=True)
class Checkpoint:
    resource_type: str
    last_updated: datetime
    boundary_ids: tuple[str, ...]
    key_version: str
    config_hash: str


@dataclass(frozen=True, slots=True)
class ExportRecord:
    id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    target: str
    full_refresh: bool
    key_version: str
    config_hash: str
    policy_version: str
    zip3_version: str
    fetched: dict[str, int]
    loaded: dict[str, int]
    dropped: dict[str, int]
    risk: dict[str, object] | None
    error_code: str | None


_EXPORT_COLUMNS = (
    "id, started_at, finished_at, status, target, full_refresh, key_version, config_hash, "
    "policy_version, zip3_version, fetched, loaded, dropped, risk, error_code"
)


class ResearchRepository:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection]) -> None:
        self._pool = pool

    async def checkpoints(self, target: str) -> dict[str, Checkpoint]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT resource_type, last_updated, boundary_ids, key_version, config_hash"
                " FROM starvit.research_checkpoints WHERE target = %s",
                (target,),
            )
            rows = await cursor.fetchall()
        return {row[0]: Checkpoint(row[0], row[1], tuple(row[2]), row[3], row[4]) for row in rows}

    async def save_checkpoint(self, target: str, checkpoint: Checkpoint) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO starvit.research_checkpoints"
                " (target, resource_type, last_updated, boundary_ids, key_version, config_hash)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (target, resource_type) DO UPDATE SET"
                " last_updated = EXCLUDED.last_updated, boundary_ids = EXCLUDED.boundary_ids,"
                " key_version = EXCLUDED.key_version, config_hash = EXCLUDED.config_hash,"
                " updated_at = now()",
                (
                    target,
                    checkpoint.resource_type,
                    checkpoint.last_updated,
                    list(checkpoint.boundary_ids),
                    checkpoint.key_version,
                    checkpoint.config_hash,
                ),
            )

    async def clear_checkpoints(self, target: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM starvit.research_checkpoints WHERE target = %s", (target,)
            )

    async def start_export(
        self,
        *,
        started_at: datetime,
        target: str,
        full_refresh: bool,
        key_version: str,
        config_hash: str,
        policy_version: str,
        zip3_version: str,
    ) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO starvit.research_exports (started_at, status, target, full_refresh,"
                " key_version, config_hash, policy_version, zip3_version)"
                " VALUES (%s, 'running', %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    started_at,
                    target,
                    full_refresh,
                    key_version,
                    config_hash,
                    policy_version,
                    zip3_version,
                ),
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def finish_export(
        self,
        export_id: int,
        *,
        finished_at: datetime,
        status: str,
        fetched: Mapping[str, int],
        loaded: Mapping[str, int],
        dropped: Mapping[str, int],
        risk: Mapping[str, object] | None,
        error_code: str | None = None,
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE starvit.research_exports SET finished_at = %s, status = %s,"
                " fetched = %s, loaded = %s, dropped = %s, risk = %s, error_code = %s"
                " WHERE id = %s",
                (
                    finished_at,
                    status,
                    Jsonb(dict(fetched)),
                    Jsonb(dict(loaded)),
                    Jsonb(dict(dropped)),
                    Jsonb(dict(risk)) if risk is not None else None,
                    error_code,
                    export_id,
                ),
            )

    async def exports(self, *, limit: int = 20) -> list[ExportRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_EXPORT_COLUMNS} FROM starvit.research_exports"  # noqa: S608 - constant
                " ORDER BY id DESC LIMIT %s",
                (limit,),
            )
            rows = await cursor.fetchall()
        return [ExportRecord(*row) for row in rows]

    async def latest_succeeded(self, target: str) -> ExportRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_EXPORT_COLUMNS} FROM starvit.research_exports"  # noqa: S608 - constant
                " WHERE target = %s AND status = 'succeeded' ORDER BY id DESC LIMIT 1",
                (target,),
            )
            row = await cursor.fetchone()
        return ExportRecord(*row) if row else None
