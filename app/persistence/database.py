"""The PostgreSQL pool and the schema set-up (ours, versioned by Alembic, and procrastinate's).

Set-up runs under a session-level advisory lock so that several processes starting at once
(receiver workers, queue workers) neither race nor fail: the first one migrates, the others wait
and then find nothing left to do. Alembic runs synchronously, so it runs in a thread on a
SQLAlchemy connection (psycopg 3 driver) that holds the lock. Procrastinate's own
``apply_schema`` is not idempotent, so it is applied only when its table is absent.

From Python, bring a database to a revision with ``await migrate(url)`` (or
``await migrate(url, "0001")``, which downgrades) and read it with ``await current_revision(url)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from collections.abc import Iterator

    from procrastinate import App

SCHEMA = "starvit"  # the service's tables and Alembic's version table
MIGRATIONS = Path(__file__).resolve().with_name("migrations")
_SCHEMA_LOCK = 0x5_7A_7E_17  # any constant: identifies the set-up advisory lock
_LIBPQ_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+psycopg"})

# Alembic installs its ``context`` and ``op`` proxies as module globals while a command runs, so
# two commands must not overlap in one process (the advisory lock only serialises commands on
# the same database).
_ALEMBIC_COMMAND = threading.Lock()

_log = logging.getLogger(__name__)
# Alembic announces its dialect and DDL assumptions at INFO on every start; the service logs its
# own line when the revision actually changes.
logging.getLogger("alembic").setLevel(logging.WARNING)


def sqlalchemy_url(url: str) -> str:
    """The libpq URL ``url`` (``postgresql://...``) as a SQLAlchemy URL for psycopg 3."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _LIBPQ_SCHEMES:
        raise ValueError("expected a postgresql:// URL")
    # Only the scheme changes: re-assembling a parsed URL would turn "postgresql:///db" (a local
    # socket, empty host) into "...:/db".
    return f"postgresql+psycopg://{rest}"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the scripts ship inside the package.

    ``connection`` (which should hold the set-up lock) is the one the migrations run on.
    """
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this release knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


async def ensure_schema(url: str, queue: App) -> None:
    """Migrate the service's schema to head, then add procrastinate's schema if it is absent."""
    await asyncio.to_thread(_migrate, url, "head", queue.schema_manager.get_schema())


async def migrate(url: str, revision: str = "head") -> None:
    """Bring the service's schema to ``revision`` ("head", "base" or a revision id), upgrading
    or downgrading as needed. Procrastinate's schema is left alone."""
    await asyncio.to_thread(_migrate, url, revision, None)


async def current_revision(url: str) -> str | None:
    """The database's revision (``None`` before the first migration)."""
    return await asyncio.to_thread(_current_revision_of, url)


def _current_revision_of(url: str) -> str | None:
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return _revision_on(connection)
    finally:
        engine.dispose()


def _revision_on(connection: Connection) -> str | None:
    # Its own transaction: a transaction left open here would make Alembic treat the next
    # command's transaction as external and never commit it.
    with connection.begin():
        context = MigrationContext.configure(connection, opts={"version_table_schema": SCHEMA})
        return context.get_current_revision()


@contextlib.contextmanager
def _locked_connection(url: str) -> Iterator[Connection]:
    # NullPool: closing the connection ends the session, which releases the lock even when the
    # explicit unlock below cannot run.
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK})
            connection.commit()  # the lock is session-level: it outlives this transaction
            try:
                yield connection
            finally:
                with contextlib.suppress(Exception):
                    connection.rollback()
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK}
                    )
                    connection.commit()
    finally:
        engine.dispose()


def _migrate(url: str, revision: str, queue_schema: str | None) -> None:
    with _locked_connection(url) as connection:
        before = _revision_on(connection)
        config = alembic_config(connection)
        with _ALEMBIC_COMMAND:
            if _is_downgrade(config, before, revision):
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)
        after = _revision_on(connection)
        if after != before:
            # Preformatted: the service's log handler drops interpolation arguments.
            _log.info(f"schema_migrated from={before or 'base'} to={after or 'base'}")
        if queue_schema is not None:
            _apply_queue_schema(connection, queue_schema)


def _is_downgrade(config: Config, current: str | None, target: str) -> bool:
    if target in ("head", "heads") or current is None:
        return False
    if target == "base":
        return True
    script = ScriptDirectory.from_config(config)
    lineage = [step.revision for step in script.walk_revisions()]  # newest first
    wanted = script.get_revision(target).revision  # raises on an unknown revision
    if current not in lineage:
        return False  # a database newer than this release: Alembic's upgrade reports it
    return lineage.index(wanted) > lineage.index(current)


def _apply_queue_schema(connection: Connection, queue_schema: str) -> None:
    with connection.begin():
        present = connection.execute(
            text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        ).scalar_one()
        if not present:
            # One multi-statement script with its own "%" and ":" characters: sent as is, without
            # parameters (psycopg then uses the simple query protocol).
            connection.exec_driver_sql(queue_schema, execution_options={"no_parameters": True})


# A connection attempt that fails is retried by the pool with a doubling backoff for at most
# this long, then left to the next request that needs a connection: a short limit keeps the
# pool asking often, so it is back within a second or two of the database's return (psycopg's
# default, five minutes of backoff, left it up to 16 s behind).
RECONNECT_TIMEOUT_SECONDS = 1.0
# Connecting to a database that does not answer (a failover in progress) gives up after this.
CONNECT_TIMEOUT_SECONDS = 3


# A connection handed out again within this many seconds of its last hand-out is not checked
# with a round trip: it was in use a moment ago (under load, most are), and the check cost a
# PostgreSQL round trip per checkout (about an eighth of the worker's CPU per event).
CHECK_IDLE_SECONDS = 2.0


class _IdleCheck:
    """``AsyncConnectionPool``'s ``check``: a round trip only for a connection that sat idle
    for more than :data:`CHECK_IDLE_SECONDS` (or one psycopg already knows is closed)."""

    def __init__(self, idle_seconds: float = CHECK_IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._handed_out: weakref.WeakKeyDictionary[AsyncConnection, float] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, conn: AsyncConnection) -> None:
        now = time.monotonic()
        last = self._handed_out.get(conn)
        self._handed_out[conn] = now
        if last is not None and now - last < self.idle_seconds and not conn.closed:
            return
        await AsyncConnectionPool.check_connection(conn)


class Database:
    """The service's pool (separate from procrastinate's own connector pool).

    A connection that sat idle is checked with a round trip before it is handed out
    (``AsyncConnectionPool.check_connection``): a connection the database dropped while it sat
    idle (a restart, a failover) is discarded instead of failing the commit that got it. One
    handed out within :data:`CHECK_IDLE_SECONDS` of its last use is not (:class:`_IdleCheck`).
    """

    name = "database"

    def __init__(self, url: str, max_size: int = 10, *, check_timeout: float = 1.0) -> None:
        self.url = url
        self.check_timeout = check_timeout
        self.pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            connection_class=AsyncConnection,
            check=_IdleCheck(),
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def check(self) -> str | None:
        """None when a (checked) connection answers within ``check_timeout`` seconds."""
        try:
            async with asyncio.timeout(self.check_timeout + 1):
                async with self.pool.connection(timeout=self.check_timeout) as conn:
                    await conn.execute("SELECT 1")
        except Exception:
            return "database_unreachable"
        return None

    async def aclose(self) -> None:
        await self.pool.close()
