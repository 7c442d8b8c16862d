"""Every query of the partner API (``starvit.partner_*`` tables, migration 0006_partners).

Nothing stored here comes from a resource: client ids, idempotency keys, fingerprints, bundle
ids, counts by resource type, ``Type/id`` references, statuses and error codes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from app.fhir.resource_json import JSONObject

type Pool = AsyncConnectionPool[AsyncConnection]


# --- rate limit and concurrency ---------------------------------------------------------


async def count_request(pool: Pool, client_id: str, window_start: float) -> int:
    """Count one request of ``client_id`` in the fixed window starting at ``window_start``
    (epoch seconds); the requests in that window, this one included."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO starvit.partner_rate_windows AS w (client_id, window_start, requests) "
            "VALUES (%s, to_timestamp(%s), 1) ON CONFLICT (client_id) DO UPDATE SET "
            "requests = CASE WHEN EXCLUDED.window_start > w.window_start THEN 1 "
            "ELSE w.requests + 1 END, "
            "window_start = GREATEST(w.window_start, EXCLUDED.window_start) "
            "RETURNING requests",
            (client_id, window_start),
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 1


async def acquire_lease(
    pool: Pool, client_id: str, max_concurrent: int, ttl_seconds: float
) -> uuid.UUID | None:
    """A slot among the partner's ``max_concurrent`` requests in progress, or None when all are
    taken. Serialised per partner by a transaction-level advisory lock; expired leases (a
    process that died mid-request) are dropped first."""
    lease = uuid.uuid4()
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('starvit.partner_leases:' || %s, 0))",
            (client_id,),
        )
        await conn.execute(
            "DELETE FROM starvit.partner_leases WHERE client_id = %s AND expires_at < now()",
            (client_id,),
        )
        cursor = await conn.execute(
            "SELECT count(*) FROM starvit.partner_leases WHERE client_id = %s", (client_id,)
        )
        row = await cursor.fetchone()
        if row is not None and int(row[0]) >= max_concurrent:
            return None
        await conn.execute(
            "INSERT INTO starvit.partner_leases (lease_id, client_id, expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s))",
            (lease, client_id, ttl_seconds),
        )
    return lease


async def release_lease(pool: Pool, lease: uuid.UUID) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM starvit.partner_leases WHERE lease_id = %s", (lease,))


# --- idempotency ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """What an ``Idempotency-Key`` means for this request.

    ``new``: run it (``bundle_id`` is its id; ``resumed`` when an earlier attempt with this key
    stopped without an outcome); ``replay``: answer ``status_code`` and ``outcome`` again;
    ``mismatch``: the key was used for another request; ``running``: the first request with
    this key has not finished."""

    kind: Literal["new", "replay", "mismatch", "running"]
    bundle_id: uuid.UUID | None = None
    status_code: int | None = None
    outcome: JSONObject | None = None
    resumed: bool = False


async def claim_key(
    pool: Pool,
    client_id: str,
    key: str,
    fingerprint: str,
    *,
    ttl_seconds: float,
    stale_after_seconds: float,
) -> Claim:
    async with pool.connection() as conn, conn.transaction():
        # Expired keys go first (a key is forgotten after its TTL, and the table stays small).
        await conn.execute(
            "DELETE FROM starvit.partner_requests_idempotency WHERE ctid IN (SELECT ctid FROM "
            "starvit.partner_requests_idempotency WHERE expires_at < now() LIMIT 100)"
        )
        bundle_id = uuid.uuid4()
        cursor = await conn.execute(
            "INSERT INTO starvit.partner_requests_idempotency (client_id, key, fingerprint, "
            "bundle_id, state, expires_at) VALUES (%s, %s, %s, %s, 'running', "
            "now() + make_interval(secs => %s)) ON CONFLICT (client_id, key) DO NOTHING "
            "RETURNING bundle_id",
            (client_id, key, fingerprint, bundle_id, ttl_seconds),
        )
        if await cursor.fetchone() is not None:
            return Claim("new", bundle_id=bundle_id)
        cursor = await conn.execute(
            "SELECT fingerprint, bundle_id, state, status_code, outcome, "
            "updated_at < now() - make_interval(secs => %s) AS stale "
            "FROM starvit.partner_requests_idempotency WHERE client_id = %s AND key = %s "
            "FOR UPDATE",
            (stale_after_seconds, client_id, key),
        )
        row = await cursor.fetchone()
        if row is None:  # deleted between the two statements: the caller retries
            return Claim("running")
        stored_fingerprint, stored_id, state, status_code, outcome, stale = row
        if stored_fingerprint != fingerprint:
            return Claim("mismatch")
        if state == "done":
            return Claim("replay", bundle_id=stored_id, status_code=status_code, outcome=outcome)
        if not stale:
            return Claim("running", bundle_id=stored_id)
        # The first attempt stopped without an outcome (a crashed process): this one takes over.
        # Its forwarded creates are conditional, so what the first attempt wrote is matched.
        await conn.execute(
            "UPDATE starvit.partner_requests_idempotency SET updated_at = now() "
            "WHERE client_id = %s AND key = %s",
            (client_id, key),
        )
        return Claim("new", bundle_id=stored_id, resumed=True)


async def complete_key(
    pool: Pool, client_id: str, key: str, status_code: int, outcome: JSONObject
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE starvit.partner_requests_idempotency SET state = 'done', status_code = %s, "
            "outcome = %s, updated_at = now() WHERE client_id = %s AND key = %s",
            (status_code, Jsonb(outcome), client_id, key),
        )


async def release_key(pool: Pool, client_id: str, key: str) -> None:
    """Forget a key whose request ended without an outcome worth replaying (refused, or failed
    for a reason a retry may not meet): the partner may send it again."""
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM starvit.partner_requests_idempotency "
            "WHERE client_id = %s AND key = %s AND state = 'running'",
            (client_id, key),
        )


async def outcome_of(
    pool: Pool, client_id: str, bundle_id: uuid.UUID
) -> tuple[str, int | None, JSONObject | None] | None:
    """(state, status code, outcome) of the partner's bundle request, if it is still kept."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT state, status_code, outcome FROM starvit.partner_requests_idempotency "
            "WHERE client_id = %s AND bundle_id = %s AND expires_at > now()",
            (client_id, bundle_id),
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    return str(row[0]), row[1], row[2]


# --- audit -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    client_id: str | None
    correlation_id: str
    method: str
    status_code: int
    duration_ms: float
    bundle_id: uuid.UUID | None = None
    bundle_type: str | None = None
    dry_run: bool = False
    entries: int = 0
    counts: dict[str, int] | None = None
    error_code: str | None = None
    replayed: bool = False


async def record_audit(pool: Pool, row: AuditRow) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO starvit.partner_audit (client_id, correlation_id, method, bundle_id, "
            "bundle_type, dry_run, entries, counts, status_code, error_code, replayed, "
            "duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                row.client_id,
                row.correlation_id,
                row.method,
                row.bundle_id,
                row.bundle_type,
                row.dry_run,
                row.entries,
                Jsonb(row.counts or {}),
                row.status_code,
                row.error_code,
                row.replayed,
                row.duration_ms,
            ),
        )
