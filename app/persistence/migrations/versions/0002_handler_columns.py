"""Rename the column ``bot`` to ``handler`` in the three tables of ``starvit``.

The code that processes an event is a handler (:mod:`app.handlers`); the column follows that
name. ``RENAME COLUMN`` keeps every row and rewrites the definitions that use the column: the
unique constraint ``event_keys_unique`` keeps its name and now covers (handler, resource_type,
resource_id, version_id); the primary keys of ``sweep_watermarks`` and ``subscription_health``
follow too.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("event_keys", "sweep_watermarks", "subscription_health")


def upgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE starvit.{table} RENAME COLUMN bot TO handler")


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE starvit.{table} RENAME COLUMN handler TO bot")
