"""What keeps the service within Medplum's FHIR quota: the ledger of derived writes, the shared
budget and the coalescing counters.

* ``derived_slots``: one row per deterministic suggestion key a bot has written (or is writing):
  ``claimed`` before the write is sent, ``written`` once Medplum confirmed it. A replay finds
  its key here instead of paying Medplum a search per write; a ``claimed`` key (the outcome of
  a write is unknown) is checked against Medplum once.
* ``medplum_budget``: one row per ``RateLimit`` policy of the Medplum membership (e.g.
  ``fhirInteractions``): the points left and when the window resets, as Medplum last reported
  them, and until when every worker must wait after a 429. Shared by every worker process.
* ``coalesced_events``: events of one patient and handler computed once: how many were
  skipped per handler and minute; ``event_keys_queued_by_patient``: the look-up behind it.

Nothing here is PHI: digests of references, handler names, counts and times.

Revision ID: 0005_quota
Revises: 0004_reliability
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0005_quota"
down_revision: str | Sequence[str] | None = "0004_reliability"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.derived_slots (
        slot_key   text        PRIMARY KEY,   -- the suggestion's deterministic key (a digest)
        handler    text        NOT NULL,
        state      text        NOT NULL CHECK (state IN ('claimed', 'written')),
        event_id   bigint,                    -- the event that claimed or wrote it
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS starvit.medplum_budget (
        policy        text        PRIMARY KEY,  -- a RateLimit policy name
        remaining     bigint      NOT NULL,     -- points left in the window: Medplum's last
                                                -- answer less what was sent since
        ceiling       bigint      NOT NULL,     -- the most ever reported left (~ the limit)
        reset_at      timestamptz NOT NULL,     -- when the window resets
        observed_at   timestamptz NOT NULL,
        blocked_until timestamptz               -- after a 429: no request before this
    )
    """,
    # The coalescing look-up: a later waiting event of the same handler and patient.
    "CREATE INDEX IF NOT EXISTS event_keys_queued_by_patient"
    " ON starvit.event_keys (handler, patient_id, id) WHERE status = 'queued'",
    """
    CREATE TABLE IF NOT EXISTS starvit.coalesced_events (
        handler text        NOT NULL,
        minute  timestamptz NOT NULL,
        count   bigint      NOT NULL,
        PRIMARY KEY (handler, minute)
    )
    """,
)

_DOWNGRADE = (
    "DROP TABLE IF EXISTS starvit.coalesced_events",
    "DROP INDEX IF EXISTS starvit.event_keys_queued_by_patient",
    "DROP TABLE IF EXISTS starvit.medplum_budget",
    "DROP TABLE IF EXISTS starvit.derived_slots",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
