"""The ledger of derived writes in PostgreSQL (``starvit.derived_slots``): see
:mod:`app.handlers.ledger`. Keys are digests; nothing here is PHI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM, TASK_SYSTEM
from app.fhir.views import TaskView
from app.handlers.ledger import SlotState
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from app.integrations.medplum import MedplumClient

log = get_logger("app.events.ledger")
BACKFILL_BATCH = 5000


# The marker row saying that every review Task the service ever wrote is in the ledger.
COMPLETE_MARKER = "-complete-"


class PostgresSlotLedger:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._complete = False
        self._lock = asyncio.Lock()

    @property
    def complete(self) -> bool:
        return self._complete

    async def load(self) -> bool:
        """Read whether the ledger is complete (the marker row)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM starvit.derived_slots WHERE slot_key = %s", (COMPLETE_MARKER,)
            )
            self._complete = await cursor.fetchone() is not None
        return self._complete

    async def backfill(self, medplum: MedplumClient, *, max_pages: int = 1000) -> int:
        """Fill the ledger with every review Task the service wrote (their identifiers), once:
        one paged search of the service's Tasks (20 points a page of 1,000), then the marker.
        A new database needs it too (it finds nothing and costs one search). Safe to run from
        several processes at once."""
        async with self._lock:
            if self._complete or await self.load():
                return 0
            keys: list[str] = []
            total = 0
            params = {"_tag": f"{TAG_SYSTEM}|{TAG_CODE}", "_count": "1000"}
            async for page in medplum.search_pages("Task", params, max_pages=max_pages):
                for task in page.resources:
                    key = TaskView(task).identifier_value(TASK_SYSTEM)
                    if key is not None:
                        keys.append(key)
                        total += 1
                if len(keys) > BACKFILL_BATCH:
                    await self.confirm("-", keys, 0)
                    keys = []
            await self.confirm("-", [*keys, COMPLETE_MARKER], 0)
            self._complete = True
            log.info("derived_ledger_backfilled", keys=total)
            return total

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
