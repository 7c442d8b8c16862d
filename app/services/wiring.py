"""Builds the long-lived parts of a process from :class:`~app.settings.Settings`.

The receiver needs only the database (event keys and the job queue): it must keep accepting
notifications while Medplum is down, so Medplum is not one of its readiness dependencies. The
worker needs the database and the Medplum client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from procrastinate import App, PsycopgConnector

from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.persistence.database import Database, ensure_schema
from app.persistence.embedded import database_url_for
from app.persistence.events import EventIntake
from app.services.runtime import Runtime

if TYPE_CHECKING:
    from app.settings import Settings


def queue_app(url: str, *, pool_max_size: int = 4) -> App:
    """The procrastinate app on ``url``; the tasks live in :mod:`app.services.jobs`."""
    connector = PsycopgConnector(conninfo=url, min_size=1, max_size=pool_max_size)
    return App(connector=connector, import_paths=["app.services.jobs"])


async def resolve_database_url(settings: Settings) -> str:
    """``DATABASE_URL``, or the embedded server's URL (started if it is not running)."""
    return await asyncio.to_thread(database_url_for, settings)


async def open_database(settings: Settings) -> tuple[Database, App]:
    url = await resolve_database_url(settings)
    queue = queue_app(url)
    await ensure_schema(url, queue)
    database = Database(url, max_size=settings.db_pool_max_size)
    await database.open()
    return database, queue


def medplum_client(settings: Settings) -> MedplumClient:
    secret = settings.require_medplum_credentials()
    return MedplumClient(
        MedplumClientConfig(
            base_url=settings.medplum_base_url,
            client_id=settings.medplum_client_id,
            client_secret=secret.get_secret_value(),
            allowed_hosts=tuple(settings.medplum_allowed_hosts),
            connect_timeout=settings.medplum_connect_timeout,
            read_timeout=settings.medplum_read_timeout,
            max_retry_wait_seconds=settings.medplum_max_retry_wait,
        )
    )


async def build_runtime(settings: Settings) -> Runtime:
    """The receiver's runtime: database pool and group-commit event intake."""
    settings.require_webhook_secrets()
    database, queue = await open_database(settings)
    intake = EventIntake(database.pool, queue)
    return Runtime(
        settings,
        dependencies=[database, intake],
        database=database,
        queue=queue,
        intake=intake,
    )
