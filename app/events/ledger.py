"""The ledger of derived writes in PostgreSQL (``starvit.derived_slots``): see
:mod:`app.handlers.ledger`. Keys are digests; nothing here is PHI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

from app.handlers.ledger import SlotState

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool


class PostgresSlotLedger:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def states(self, keys: Iterable[str]) -> Mapping[str, SlotState]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT slot_key, state FROM starvit.derived_slots WHERE slot_key = ANY(%s)",
                (wanted,),
            )
            rows = await cursor.fetchall()
        return {str(key): cast("SlotState", state) for key, state in rows}

    async def claim(self, handler: str, keys: Iterable[str], event_id: int) -> None:
        await self._set(handler, keys, event_id, "claimed")

    async def confirm(self, handler: str, keys: Iterable[str], event_id: int) -> None:
        await self._set(handler, keys, event_id, "written")

    async def _set(
        self, handler: str, keys: Iterable[str], event_id: int, state: SlotState
    ) -> None:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return
        # A written key stays written: a late claim never makes it uncertain again.
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO starvit.derived_slots (slot_key, handler, state, event_id)
                SELECT k, %s, %s, %s FROM unnest(%s::text[]) AS k
                ON CONFLICT (slot_key) DO UPDATE
                   SET state = CASE WHEN starvit.derived_slots.state = 'written'
                                    THEN 'written' ELSE EXCLUDED.state END,
                       event_id = EXCLUDED.event_id,
                       updated_at = now()
                """,
                (handler, state, event_id, wanted),
            )
