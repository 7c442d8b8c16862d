"""Baseline: the schema of release 0.1.0 (before migrations were versioned).

Every statement is ``IF NOT EXISTS``: a database created by release 0.1.0 already has these
tables but no version table, and must upgrade without errors and without losing rows.

The schema holds the service's non-PHI state only. Nothing here may hold a resource body, a
name, a date of birth, an address or free text; only Medplum resource references, versions,
bot names, timestamps of the service's own processing and stable error codes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    "CREATE SCHEMA IF NOT EXISTS starvit",
    # One row per event the service has accepted: the PHI-free event key, recorded once.
    """
    CREATE TABLE IF NOT EXISTS starvit.event_keys (
        id              bigserial PRIMARY KEY,
        bot             text        NOT NULL,
        subscription_id text,
        resource_type   text        NOT NULL,
        resource_id     text        NOT NULL,
        version_id      text        NOT NULL,           -- 'deleted' for delete notifications
        interaction     text        NOT NULL,           -- create | update | delete
        source          text        NOT NULL,           -- notification | sweep | replay
        patient_id      text,                           -- the Patient id used as the queue lock
        author          text,                           -- who made the version (Type/id)
        received_at     timestamptz NOT NULL DEFAULT now(),
        job_id          bigint,
        status          text        NOT NULL DEFAULT 'queued',  -- queued | processed | failed
        outcome         text,                           -- proposed, no_result, unchanged, ...
        error_code      text,
        attempts        integer     NOT NULL DEFAULT 0,
        processed_at    timestamptz,
        latency_ms      double precision,
        medplum_requests integer,
        -- A version is notified once per handler whatever the interaction ('deleted' for
        -- deletes), so a sweep's copy of an event deduplicates against the notification's.
        CONSTRAINT event_keys_unique UNIQUE (bot, resource_type, resource_id, version_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS event_keys_resource"
    " ON starvit.event_keys (resource_type, resource_id)",
    "CREATE INDEX IF NOT EXISTS event_keys_received_at ON starvit.event_keys (received_at DESC)",
    "CREATE INDEX IF NOT EXISTS event_keys_status"
    " ON starvit.event_keys (status) WHERE status <> 'processed'",
    # Reconciliation sweep watermark per bot (Medplum `_lastUpdated` of the newest swept
    # resource).
    """
    CREATE TABLE IF NOT EXISTS starvit.sweep_watermarks (
        bot        text PRIMARY KEY,
        since      timestamptz NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Last observed state of each bot's Subscription in Medplum.
    """
    CREATE TABLE IF NOT EXISTS starvit.subscription_health (
        bot             text PRIMARY KEY,
        subscription_id text,
        status          text NOT NULL,       -- active | off | error | missing | requested
        has_error_text  boolean NOT NULL DEFAULT false,
        checked_at      timestamptz NOT NULL DEFAULT now()
    )
    """,
)

# The schema itself stays: it also holds Alembic's version table.
_DOWNGRADE = (
    "DROP TABLE IF EXISTS starvit.subscription_health",
    "DROP TABLE IF EXISTS starvit.sweep_watermarks",
    "DROP TABLE IF EXISTS starvit.event_keys",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
