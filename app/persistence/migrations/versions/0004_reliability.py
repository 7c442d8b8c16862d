"""What keeps the service from stopping silently: worker heartbeats, the sweep's cursor and lag,
and the bookkeeping of the dead letter's automatic retries.

* ``worker_heartbeats``: one row per worker process (an opaque worker id, host name, pid, when
  it started, its last beat and how many jobs it finished). A row whose ``last_beat`` is older
  than a few heartbeat intervals is a worker that stopped or hangs: what the ops dashboard and
  the liveness check read (``app.events.heartbeats``).
* ``sweep_watermarks``: the cursor becomes (``since``, ``after_id``, ``bucket_offset``): the
  ``_lastUpdated`` of the last swept resource, its id, and how many resources sharing exactly
  that ``_lastUpdated`` were passed, so a run resumes where the last one stopped however many
  resources one instant or one window holds. ``scanned_to`` is how far the sweep has looked
  (the horizon of a run that reached the end), ``lag_seconds`` how far behind now that was at
  the end of the last run.
* ``event_keys``: ``transient`` says whether a dead-lettered event failed for a reason that heals
  (Medplum unreachable, 5xx, rate limit), ``failed_at`` when, and ``auto_retries`` how often the
  worker already gave it another chance on its own.

Nothing here is PHI: ids, host names, pids, timestamps, counts and resource ids.

Revision ID: 0004_reliability
Revises: 0003
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0004_reliability"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.worker_heartbeats (
        worker_id  text        PRIMARY KEY,
        host       text        NOT NULL,
        pid        integer     NOT NULL,
        started_at timestamptz NOT NULL,
        last_beat  timestamptz NOT NULL DEFAULT now(),
        jobs_done  bigint      NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS worker_heartbeats_last_beat"
    " ON starvit.worker_heartbeats (last_beat DESC)",
    "ALTER TABLE starvit.sweep_watermarks ADD COLUMN IF NOT EXISTS after_id text",
    "ALTER TABLE starvit.sweep_watermarks"
    " ADD COLUMN IF NOT EXISTS bucket_offset integer NOT NULL DEFAULT 0",
    "ALTER TABLE starvit.sweep_watermarks ADD COLUMN IF NOT EXISTS scanned_to timestamptz",
    "ALTER TABLE starvit.sweep_watermarks ADD COLUMN IF NOT EXISTS lag_seconds double precision",
    "ALTER TABLE starvit.event_keys ADD COLUMN IF NOT EXISTS transient boolean",
    "ALTER TABLE starvit.event_keys ADD COLUMN IF NOT EXISTS failed_at timestamptz",
    "ALTER TABLE starvit.event_keys"
    " ADD COLUMN IF NOT EXISTS auto_retries integer NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS event_keys_failed_transient"
    " ON starvit.event_keys (failed_at) WHERE status = 'failed' AND transient",
)

_DOWNGRADE = (
    "DROP INDEX IF EXISTS starvit.event_keys_failed_transient",
    "ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS auto_retries",
    "ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS failed_at",
    "ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS transient",
    "ALTER TABLE starvit.sweep_watermarks DROP COLUMN IF EXISTS lag_seconds",
    "ALTER TABLE starvit.sweep_watermarks DROP COLUMN IF EXISTS scanned_to",
    "ALTER TABLE starvit.sweep_watermarks DROP COLUMN IF EXISTS bucket_offset",
    "ALTER TABLE starvit.sweep_watermarks DROP COLUMN IF EXISTS after_id",
    "DROP TABLE IF EXISTS starvit.worker_heartbeats",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
