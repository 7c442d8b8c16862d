"""Schema migrations on a real PostgreSQL: a database created by release 0.1.0 (its schema file is
kept verbatim in ``tests/fixtures/schema``) upgrades without losing rows and ends up with exactly
the structure of a fresh database; set-up is idempotent and safe to run concurrently."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app.persistence.database import (
    current_revision,
    ensure_schema,
    head_revision,
    migrate,
    sqlalchemy_url,
)
from app.wiring import queue_app
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

RELEASE_0_1_0 = Path(__file__).resolve().parents[1] / "fixtures" / "schema" / "release-0.1.0.sql"

EVENT_KEYS = [
    ("bmi", "sub-1", "Observation", "o1", "1", "create", "notification", "p1", "processed"),
    ("egfr", None, "Observation", "o2", "deleted", "delete", "sweep", "p2", "queued"),
]
WATERMARKS = [("bmi",), ("egfr",)]
HEALTH = [("bmi", "sub-1", "active"), ("egfr", None, "error")]


def create_release_0_1_0(url: str) -> None:
    """Release 0.1.0's schema, with rows in every table (the column is still ``bot``)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RELEASE_0_1_0.read_bytes())
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO starvit.event_keys (bot, subscription_id, resource_type,"
                " resource_id, version_id, interaction, source, patient_id, status)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                EVENT_KEYS,
            )
            cursor.executemany(
                "INSERT INTO starvit.sweep_watermarks (bot, since)"
                " VALUES (%s, '2025-01-02T03:04:05Z')",
                WATERMARKS,
            )
            cursor.executemany(
                "INSERT INTO starvit.subscription_health (bot, subscription_id, status)"
                " VALUES (%s, %s, %s)",
                HEALTH,
            )


async def ensure(url: str) -> None:
    """Set-up exactly as a starting process runs it."""
    await ensure_schema(url, queue_app(url))


def rows(url: str, column: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables, reading the handler column as ``column``."""
    name = sql.Identifier(column)
    queries = {
        "event_keys": sql.SQL(
            "SELECT {}, subscription_id, resource_type, resource_id, version_id, interaction,"
            " source, patient_id, status FROM starvit.event_keys ORDER BY id"
        ).format(name),
        "sweep_watermarks": sql.SQL("SELECT {} FROM starvit.sweep_watermarks ORDER BY 1").format(
            name
        ),
        "subscription_health": sql.SQL(
            "SELECT {}, subscription_id, status FROM starvit.subscription_health ORDER BY 1"
        ).format(name),
    }
    with psycopg.connect(url) as conn:
        return {table: conn.execute(query).fetchall() for table, query in queries.items()}


EXPECTED_ROWS = {
    "event_keys": EVENT_KEYS,
    "sweep_watermarks": WATERMARKS,
    "subscription_health": HEALTH,
}


def columns_named(url: str, name: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'starvit' AND column_name = %s ORDER BY 1",
            (name,),
        ).fetchall()
    return [table for (table,) in found]


def structure(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Tables, columns, indexes and constraints of the schema ``starvit``."""
    with psycopg.connect(url) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, ordinal_position, column_name, data_type, is_nullable,"
                " column_default FROM information_schema.columns"
                " WHERE table_schema = 'starvit' ORDER BY 1, 2"
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'starvit' ORDER BY 1, 2"
            ).fetchall(),
            "constraints": conn.execute(
                "SELECT c.conrelid::regclass::text, c.conname, c.contype,"
                " pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " JOIN pg_namespace n ON n.oid = c.connamespace"
                " WHERE n.nspname = 'starvit' ORDER BY 1, 2"
            ).fetchall(),
        }


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


async def test_a_release_0_1_0_database_upgrades_keeping_its_rows(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    create_release_0_1_0(database_url)
    assert await current_revision(database_url) is None

    await ensure(database_url)

    assert capfd.readouterr().out == ""  # the service's stdout carries nothing but its own logs
    assert rows(database_url, "handler") == EXPECTED_ROWS
    assert columns_named(database_url, "bot") == []
    assert columns_named(database_url, "handler") == [
        "event_keys",
        "rejected_deliveries",
        "subscription_health",
        "sweep_watermarks",
    ]
    assert (
        scalar(
            database_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'event_keys_unique'",
        )
        == "UNIQUE (handler, resource_type, resource_id, version_id)"
    )
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.UniqueViolation) as err,
    ):
        conn.execute(
            "INSERT INTO starvit.event_keys (handler, resource_type, resource_id, version_id,"
            " interaction, source) VALUES ('bmi', 'Observation', 'o1', '1', 'update', 'sweep')"
        )
    assert err.value.diag.constraint_name == "event_keys_unique"
    assert await current_revision(database_url) == head_revision() == "0008_research"
    assert scalar(database_url, "SELECT to_regclass('starvit.alembic_version') IS NOT NULL")
    assert scalar(database_url, "SELECT to_regclass('public.alembic_version') IS NULL")
    assert scalar(database_url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")


async def test_a_fresh_database_has_the_structure_of_an_upgraded_one(
    postgres_server_url: str, database_url: str
) -> None:
    await migrate(database_url)
    with fresh_database(postgres_server_url) as old_url:
        create_release_0_1_0(old_url)
        await ensure(old_url)
        upgraded = structure(old_url)

    fresh = structure(database_url)
    assert fresh == upgraded
    assert fresh["indexes"]  # the comparison saw the schema, not two empty lists
    assert {name for _table, name, _type, _definition in fresh["constraints"]} >= {
        "event_keys_pkey",
        "event_keys_unique",
        "sweep_watermarks_pkey",
        "subscription_health_pkey",
    }
    assert {index for _table, index, _definition in fresh["indexes"]} >= {
        "event_keys_resource",
        "event_keys_received_at",
        "event_keys_status",
    }


@pytest.mark.parametrize("start", ["empty", "release-0.1.0"])
async def test_set_up_runs_twice_and_concurrently(database_url: str, start: str) -> None:
    if start == "release-0.1.0":
        create_release_0_1_0(database_url)

    await asyncio.gather(ensure(database_url), ensure(database_url), ensure(database_url))
    await ensure(database_url)
    await ensure(database_url)

    assert await current_revision(database_url) == head_revision()
    assert scalar(database_url, "SELECT count(*) FROM starvit.alembic_version") == 1
    assert scalar(database_url, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
    if start == "release-0.1.0":
        assert rows(database_url, "handler") == EXPECTED_ROWS


async def test_a_downgrade_to_the_baseline_and_back_keeps_the_rows(database_url: str) -> None:
    create_release_0_1_0(database_url)
    await ensure(database_url)

    await migrate(database_url, "0001")
    assert await current_revision(database_url) == "0001"
    assert columns_named(database_url, "handler") == []
    assert rows(database_url, "bot") == EXPECTED_ROWS

    await migrate(database_url)
    assert await current_revision(database_url) == head_revision()
    assert columns_named(database_url, "bot") == []
    assert rows(database_url, "handler") == EXPECTED_ROWS


async def test_a_fresh_database_migrates_down_to_base_and_up_again(database_url: str) -> None:
    await migrate(database_url)
    await migrate(database_url, "base")
    assert await current_revision(database_url) is None
    assert scalar(database_url, "SELECT to_regclass('starvit.event_keys') IS NULL")

    await migrate(database_url, "head")
    assert await current_revision(database_url) == head_revision()
    assert columns_named(database_url, "handler") == [
        "event_keys",
        "rejected_deliveries",
        "subscription_health",
        "sweep_watermarks",
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@127.0.0.1:5432/db", "postgresql+psycopg://u@127.0.0.1:5432/db"),
        (
            "postgres://u:p%40x@h/db?sslmode=require",
            "postgresql+psycopg://u:p%40x@h/db?sslmode=require",
        ),
        ("postgresql:///db?host=/run/postgresql", "postgresql+psycopg:///db?host=/run/postgresql"),
    ],
)
def test_libpq_urls_become_psycopg_sqlalchemy_urls(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected


def test_a_url_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ValueError):
        sqlalchemy_url("host=localhost dbname=starvit")
