"""The partner bundle API's state: idempotency keys with their PHI-free outcomes, the shared
rate-limit windows and concurrency leases per partner, and the PHI-free audit of requests.

* ``partner_requests_idempotency``: one row per partner and ``Idempotency-Key`` (kept 24 h):
  the SHA-256 fingerprint of the request, its state (``running`` or ``done``), the bundle id,
  and, once done, the status code and the outcome (entry indexes, resource types, ``Type/id``
  references and statuses: nothing the partner posted).
* ``partner_rate_windows``: per partner, its current fixed one-minute window and the requests
  counted in it, shared by every process and replica.
* ``partner_leases``: the requests of a partner in progress (a lease expires, so a crashed
  process cannot hold a slot for ever).
* ``partner_audit``: one row per request: partner, correlation id, bundle type, entry counts
  by resource type, status, error code, dry run, duration. No resource content.

Revision ID: 0006_partners
Revises: 0005_quota
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0006_partners"
down_revision: str | Sequence[str] | None = "0005_quota"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.partner_requests_idempotency (
        client_id    text        NOT NULL,
        key          text        NOT NULL,
        fingerprint  text        NOT NULL,          -- SHA-256 hex of method, path, mode, body
        bundle_id    uuid        NOT NULL UNIQUE,
        state        text        NOT NULL,          -- running | done
        status_code  integer,
        outcome      jsonb,                          -- PHI-free: indexes, types, Type/id, status
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NOT NULL,
        PRIMARY KEY (client_id, key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS partner_requests_idempotency_expires"
    " ON starvit.partner_requests_idempotency (expires_at)",
    """
    CREATE TABLE IF NOT EXISTS starvit.partner_rate_windows (
        client_id    text        PRIMARY KEY,
        window_start timestamptz NOT NULL,
        requests     integer     NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS starvit.partner_leases (
        lease_id   uuid        PRIMARY KEY,
        client_id  text        NOT NULL,
        expires_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS partner_leases_client ON starvit.partner_leases (client_id)",
    """
    CREATE TABLE IF NOT EXISTS starvit.partner_audit (
        id             bigserial   PRIMARY KEY,
        received_at    timestamptz NOT NULL DEFAULT now(),
        client_id      text,                          -- null when the token was refused
        correlation_id text        NOT NULL,
        method         text        NOT NULL,
        bundle_id      uuid,
        bundle_type    text,
        dry_run        boolean     NOT NULL DEFAULT false,
        entries        integer     NOT NULL DEFAULT 0,
        counts         jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- resource type -> entries
        status_code    integer     NOT NULL,
        error_code     text,
        replayed       boolean     NOT NULL DEFAULT false,
        duration_ms    double precision NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS partner_audit_client_received"
    " ON starvit.partner_audit (client_id, received_at DESC)",
)

_DOWNGRADE = (
    "DROP TABLE IF EXISTS starvit.partner_audit",
    "DROP TABLE IF EXISTS starvit.partner_leases",
    "DROP TABLE IF EXISTS starvit.partner_rate_windows",
    "DROP TABLE IF EXISTS starvit.partner_requests_idempotency",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
