"""The research zone's own state: extraction checkpoints and the record of every export.

* ``research_checkpoints``: per analytics target (``duckdb:<file>``, ``bigquery:<dataset>``)
  and resource type, the ``meta.lastUpdated`` of the last resource loaded and the ids that
  share it (so a rerun, or a resumed run, asks Medplum only for what changed since), with the
  key version and configuration hash the loaded data were made with (a change of either
  starts the target afresh).
* ``research_exports``: one row per export: when, target, key version, configuration hash,
  policy and ZIP3 list versions, counts by resource type and drop reason, and the
  re-identification risk report (counts and shares only).

Neither holds PHI: Medplum resource ids (references), codes and counts.

Revision ID: 0008_research
Revises: 0007_ops
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from collections.abc import Sequence

revision: str = "0008_research"
down_revision: str | Sequence[str] | None = "0007_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPGRADE = (
    """
    CREATE TABLE IF NOT EXISTS starvit.research_checkpoints (
        target        text        NOT NULL,
        resource_type text        NOT NULL,
        last_updated  timestamptz NOT NULL,
        boundary_ids  text[]      NOT NULL DEFAULT '{}',  -- ids whose lastUpdated = last_updated
        key_version   text        NOT NULL,
        config_hash   text        NOT NULL,
        updated_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target, resource_type)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS starvit.research_exports (
        id             bigserial   PRIMARY KEY,
        started_at     timestamptz NOT NULL,
        finished_at    timestamptz,
        status         text        NOT NULL,            -- running | succeeded | failed
        target         text        NOT NULL,
        full_refresh   boolean     NOT NULL,
        key_version    text        NOT NULL,
        config_hash    text        NOT NULL,
        policy_version text        NOT NULL,
        zip3_version   text        NOT NULL,
        fetched        jsonb       NOT NULL DEFAULT '{}',  -- resource type -> count
        loaded         jsonb       NOT NULL DEFAULT '{}',  -- resource type -> count
        dropped        jsonb       NOT NULL DEFAULT '{}',  -- reason -> count
        risk           jsonb,                              -- the re-identification risk report
        error_code     text
    )
    """,
    "CREATE INDEX IF NOT EXISTS research_exports_target ON starvit.research_exports (target, id)",
)

_DOWNGRADE = (
    "DROP TABLE IF EXISTS starvit.research_exports",
    "DROP TABLE IF EXISTS starvit.research_checkpoints",
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _DOWNGRADE:
        op.execute(statement)
