"""The ledger of derived writes a handler may consult (the protocol; PostgreSQL implements it
in :mod:`app.events.ledger`).

A bot's suggestion has a deterministic key. Asking Medplum whether it exists costs a search
(20 points) and a conditional create costs 140 instead of 100: the ledger answers the same
question from the service's own database. A key is ``claimed`` before its writes are sent and
``written`` once Medplum confirmed them; a claimed key whose outcome is unknown (a timeout, a
crash) is the one case where Medplum is asked (and every unknown key while the ledger is not
yet complete: a database that existed before the ledger).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

type SlotState = Literal["claimed", "written"]


class SlotLedger(Protocol):
    @property
    def complete(self) -> bool:
        """Whether every suggestion ever written is in the ledger (it was filled from Medplum
        once, see :meth:`app.events.ledger.PostgresSlotLedger.backfill`): only then does a key
        the ledger does not know mean a new suggestion. Until then unknown keys are searched
        for in Medplum."""
        ...

    async def states(self, keys: Iterable[str]) -> Mapping[str, SlotState]:
        """The state of each known key (unknown keys are left out)."""
        ...

    async def claim(self, handler: str, keys: Iterable[str], event_id: int) -> None:
        """Mark keys as being written (before the write is sent)."""
        ...

    async def confirm(self, handler: str, keys: Iterable[str], event_id: int) -> None:
        """Mark keys as written (Medplum confirmed them, or they were found there)."""
        ...
