"""The composition root: builds the handler registry and the long-lived parts of a process
from :class:`~app.settings.Settings`.

The receiver needs only the database (event keys and the job queue): it must keep accepting
notifications while Medplum is down, so Medplum is not one of its readiness dependencies. The
worker needs the database and the Medplum client.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import TYPE_CHECKING

from procrastinate import App, PsycopgConnector

from app.botkit.handler import BotHandler
from app.events.repository import EventIntake
from app.handlers.registry import HandlerRegistry
from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.persistence.database import RECONNECT_TIMEOUT_SECONDS, Database, ensure_schema
from app.persistence.embedded import database_url_for
from app.review.expiry import ExpiryHandler
from app.review.handler import ReviewHandler
from app.runtime import Runtime
from bots import ALL_BOTS

if TYPE_CHECKING:
    from app.settings import Settings


QUEUE_POOL_TIMEOUT_SECONDS = 5.0


@cache
def handler_registry() -> HandlerRegistry:
    """Every handler the service runs: one per clinical bot (``bots/``), the clinician-decision
    loop and the expiry of undecided Tasks."""
    return HandlerRegistry(
        [*(BotHandler(bot) for bot in ALL_BOTS), ReviewHandler(), ExpiryHandler()]
    )


def queue_app(url: str, *, pool_max_size: int = 4) -> App:
    """The procrastinate app on ``url``; the tasks live in :mod:`app.events.jobs`."""
    connector = PsycopgConnector(
        conninfo=url,
        min_size=1,
        max_size=pool_max_size,
        # Fail within seconds while the database is away and reconnect as soon as it is back
        # (the worker then starts a new session; psycopg's defaults wait 30 s and back off
        # for up to five minutes).
        timeout=QUEUE_POOL_TIMEOUT_SECONDS,
        reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
    )
    return App(connector=connector, import_paths=["app.events.jobs"])


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
            request_deadline=settings.medplum_request_deadline,
        )
    )


async def build_runtime(settings: Settings) -> Runtime:
    """The receiver's runtime: database pool and group-commit event intake."""
    settings.require_webhook_secrets()
    database, queue = await open_database(settings)
    intake = EventIntake(
        database.pool, queue, acquire_timeout=settings.intake_acquire_timeout_seconds
    )
    return Runtime(
        settings,
        dependencies=[database, intake],
        intake=intake,
        registry=handler_registry(),
    )
