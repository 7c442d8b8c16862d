"""Alembic's environment for the service's own schema, ``starvit``.

Migrations run only on a connection handed over in ``config.attributes["connection"]`` by
:mod:`app.persistence.database`, which holds the set-up advisory lock on it: a migration run
without that lock could race another process starting at the same time. No logging
configuration is loaded here (the service configures logging itself and writes JSON lines).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from app.persistence.database import SCHEMA


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,  # raw SQL migrations: there are no models to compare against
        version_table_schema=SCHEMA,
    )
    with context.begin_transaction():
        # The version table lives in the service's schema, which must exist before Alembic
        # creates that table (before the first migration runs).
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported: run them on a database")
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "migrations need a locked connection: use app.persistence.database.migrate()"
        )
    run_migrations(connection)


main()
