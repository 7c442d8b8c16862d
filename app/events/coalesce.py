"""Coalescing bursts: events of one handler computed once, on the newest state.

Every handler reads the *current* state from Medplum, never the notified body, so when a newer
event that will make the same reads is already waiting, processing an older one spends quota
for a result the newer one recomputes anyway. Before an event is processed:

* it waits until it is ``STARVIT_COALESCE_WINDOW_MS`` old (0, the default, never waits: single
  events stay fast, and a backlog coalesces without any delay because its later events are
  already queued);
* it is skipped, recorded ``coalesced`` (PHI-free: the event key and a per-handler count), when
  a later event of the same handler is waiting for **the same resource** (its newer version, or
  its delete: the handler reads the current version either way), or, for the handlers listed in
  ``STARVIT_COALESCE_BY_PATIENT``, for **the same patient** (a handler whose result depends on
  the patient's newest data and not on which of the patient's resources was notified, e.g. a
  BMI from the newest weight and height; never a handler that acts on each notified reading,
  such as a crisis alert). A delete is never skipped for another resource's event.

Jobs of one patient and handler run one at a time (the job's lock), so the later event runs
after this one is recorded, on a state that includes this event's resource.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.handlers.protocol import DELETED_VERSION
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from app.handlers.protocol import StoredEvent
    from app.settings import Settings

log = get_logger("app.events.coalesce")
COALESCED = "coalesced"


async def coalesce(
    pool: AsyncConnectionPool,
    settings: Settings,
    event: StoredEvent,
    *,
    now: datetime | None = None,
) -> bool:
    """True when the event was recorded ``coalesced`` (a later one will compute its result)."""
    window = settings.coalesce_window_ms / 1000
    if window > 0:
        age = ((now or datetime.now(UTC)) - event.received_at).total_seconds()
        if age < window:
            await asyncio.sleep(window - age)
    by_patient = (
        event.handler in settings.coalesce_by_patient
        and event.patient_id is not None
        and event.version_id != DELETED_VERSION
    )
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            """
            (SELECT id FROM starvit.event_keys
              WHERE resource_type = %(type)s AND resource_id = %(rid)s
                AND handler = %(handler)s AND status = 'queued' AND id > %(id)s
              LIMIT 1)
            UNION ALL
            (SELECT id FROM starvit.event_keys
              WHERE %(by_patient)s AND handler = %(handler)s AND patient_id = %(patient)s
                AND status = 'queued' AND id > %(id)s
              LIMIT 1)
            LIMIT 1
            """,
            {
                "handler": event.handler,
                "id": event.id,
                "type": event.resource_type,
                "rid": event.resource_id,
                "by_patient": by_patient,
                "patient": event.patient_id,
            },
        )
        later = await cursor.fetchone()
        if later is None:
            return False
        await conn.execute(
            "UPDATE starvit.event_keys SET status = 'processed', outcome = %s, error_code = NULL,"
            " processed_at = now(), medplum_requests = 0,"
            " latency_ms = extract(epoch FROM now() - received_at) * 1000 WHERE id = %s",
            (COALESCED, event.id),
        )
        await conn.execute(
            """
            INSERT INTO starvit.coalesced_events (handler, minute, count)
            VALUES (%s, date_trunc('minute', now()), 1)
            ON CONFLICT (handler, minute)
            DO UPDATE SET count = starvit.coalesced_events.count + 1
            """,
            (event.handler,),
        )
    log.info("event_coalesced", event_id=event.id, handler=event.handler, into=int(later[0]))
    return True


async def coalesced_counts(pool: AsyncConnectionPool, *, minutes: int = 60) -> dict[str, int]:
    """Events coalesced per handler over the last ``minutes`` (for ops and the benchmark)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT handler, sum(count)::bigint FROM starvit.coalesced_events"
            " WHERE minute >= date_trunc('minute', now()) - make_interval(mins => %s)"
            " GROUP BY handler",
            (minutes,),
        )
        rows = await cursor.fetchall()
    return {str(handler): int(count) for handler, count in rows}
