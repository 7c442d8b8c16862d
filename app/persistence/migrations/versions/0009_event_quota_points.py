"""The Medplum quota points each processed event spent (``event_keys.quota_points``), as the
client counted them (the way Medplum charges): the ops dashboard's points per event.

Revision ID: 0009_event_quota_points
Revises: 0008_research
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0009_event_quota_points"
down_revision: str | Sequence[str] | None = "0008_research"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE starvit.event_keys ADD COLUMN IF NOT EXISTS quota_points integer")


def downgrade() -> None:
    op.execute("ALTER TABLE starvit.event_keys DROP COLUMN IF EXISTS quota_points")
