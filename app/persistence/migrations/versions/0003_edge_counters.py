"""The receiver's shared abuse-control state: failed-signature windows and refused-delivery
counts; and an index for the pruning of processed event keys.

* ``signature_failures``: one row per client address (the address a trusted proxy reports, else
  the peer), its current fixed one-minute window and the failures counted in it. Shared by every
  receiver process, so the limit holds however many processes or hosts serve the receiver.
* ``rejected_deliveries``: refused deliveries per handler (a registered name or ``-``), reason
  (bad_signature, malformed, unknown_handler, wrong_resource_type, rate_limited) and minute.
* ``event_keys_processed_received_at``: processed keys by age, what the housekeeping deletes.

Neither table holds anything from a request but a client address (not PHI: it is Medplum's or
a proxy's, or an attacker's); no body, header value or resource reference.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.signature_failures (
        client       text        PRIMARY KEY,   -- an IP address (or 'unknown')
        window_start timestamptz NOT NULL,      -- start of the client's current window
        failures     integer     NOT NULL       -- failures counted in that window
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS starvit.rejected_deliveries (
        handler text        NOT NULL,           -- a registered handler name, or '-'
        reason  text        NOT NULL,           -- bad_signature | malformed | unknown_handler
                                                -- | wrong_resource_type | rate_limited
        minute  timestamptz NOT NULL,
        count   bigint      NOT NULL,
        PRIMARY KEY (handler, reason, minute)
    )
    """,
    "CREATE INDEX IF NOT EXISTS rejected_deliveries_minute"
    " ON starvit.rejected_deliveries (minute DESC)",
    "CREATE INDEX IF NOT EXISTS event_keys_processed_received_at"
    " ON starvit.event_keys (received_at) WHERE status = 'processed'",
)

_DOWNGRADE = (
    "DROP INDEX IF EXISTS starvit.event_keys_processed_received_at",
    "DROP TABLE IF EXISTS starvit.rejected_deliveries",
    "DROP TABLE IF EXISTS starvit.signature_failures",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
