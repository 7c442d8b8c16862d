"""The ops dashboard's own state: the audit of every ops action, and the mark a replay leaves
on an event key.

* ``ops_actions``: one row per action an ops user confirmed (replay a dead letter, replay a
  window, re-run the sweep, re-enable a Subscription, ``$resend`` a resource): who (a Medplum
  profile reference), what, on which references or window, and how it ended (a stable code).
  References, ids, times and counts only: never a resource body or free text.
* ``event_keys.replayed_at`` / ``replays``: an event put back on the queue by an ops replay.
  Its processing says nothing about Medplum's delivery or the pipeline's latency, so the
  dashboard's delivery-health figures leave replayed events out.
* Two indexes for the dashboard's reads: the newest event of a handler, and replayed events.

Revision ID: 0007_ops
Revises: 0006_partners
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0007_ops"
down_revision: str | Sequence[str] | None = "0006_partners"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.ops_actions (
        id             bigserial   PRIMARY KEY,
        at             timestamptz NOT NULL DEFAULT now(),
        actor          text        NOT NULL,   -- the ops user's profile, e.g. Practitioner/<id>
        login_id       text,                   -- the Medplum Login the session came from
        action         text        NOT NULL,   -- replay_dead_letter | replay_window | sweep_window
                                               -- | reenable_subscription | resend
        handler        text,
        target         text,                   -- an event id, a Subscription or Type/id
        window_start   timestamptz,
        window_end     timestamptz,
        outcome        text        NOT NULL,   -- done | refused | failed (+ a stable code)
        detail         text,                   -- a stable code or a count, never free text
        affected       integer     NOT NULL DEFAULT 0,
        correlation_id text
    )
    """,
    "CREATE INDEX IF NOT EXISTS ops_actions_at ON starvit.ops_actions (at DESC)",
    "CREATE INDEX IF NOT EXISTS ops_actions_resend"
    " ON starvit.ops_actions (target, at) WHERE action = 'resend'",
    "ALTER TABLE starvit.event_keys ADD COLUMN IF NOT EXISTS replayed_at timestamptz",
    "ALTER TABLE starvit.event_keys ADD COLUMN IF NOT EXISTS replays integer NOT NULL DEFAULT 0",
    # The dashboard's "last delivery" per handler, whatever its age, without a scan.
    "CREATE INDEX IF NOT EXISTS event_keys_handler_received"
    " ON starvit.event_keys (handler, received_at DESC)",
    "CREATE INDEX IF NOT EXISTS event_keys_replayed"
    " ON starvit.event_keys (replayed_at) WHERE replayed_at IS NOT NULL",
)

_DOWNGRADE = (
    "DROP INDEX IF EXISTS starvit.event_keys_replayed",
    "DROP INDEX IF EXISTS starvit.event_keys_handler_received",
    "ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS replays",
    "ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS replayed_at",
    "DROP TABLE IF EXISTS starvit.ops_actions",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
