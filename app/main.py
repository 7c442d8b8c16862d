"""FastAPI application factory and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI

from app import __version__
from app.api import health
from app.api.errors import ERROR_RESPONSES, install_error_handlers
from app.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware, security_headers
from app.api.ratelimit import FailureLimiter, trusted_networks
from app.events.rejections import RejectionCounter
from app.events.repository import PostgresFailureStore, flush_rejections
from app.observability.logging import configure_logging, get_logger
from app.observability.tracing import configure_tracing, instrument_app, tracing_active
from app.runtime import Runtime
from app.settings import Settings, get_settings

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]

# How often the in-process counts of refused deliveries are written to the database.
REJECTIONS_FLUSH_SECONDS = 10.0

API_DESCRIPTION = """\
Starvit clinical event processor.

Receives Medplum rest-hook notifications, runs versioned bots that propose derived metrics and
protocol suggestions as **pending** work for a clinician, and finalises or retracts them on the
clinician's decision. Every error uses the JSON error envelope
(`error_code`, `message`, `correlation_id`, optional `details`).
"""


async def default_runtime(settings: Settings) -> Runtime:
    from app.wiring import build_runtime  # noqa: PLC0415

    return await build_runtime(settings)


def create_app(
    settings: Settings | None = None, runtime_factory: RuntimeFactory | None = None
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    configure_tracing(settings)
    factory = runtime_factory or default_runtime

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await factory(settings)
        app.state.runtime = runtime
        rejections = RejectionCounter(
            runtime.registry.subscribed_names() if runtime.registry else frozenset()
        )
        app.state.rejections = rejections
        flusher: asyncio.Task[None] | None = None
        pool = runtime.intake.pool if runtime.intake is not None else None
        if pool is not None:
            # With a database, the failure counter is shared by every receiver process and the
            # refusal counts are written there; without one, both stay in this process.
            app.state.signature_limiter = FailureLimiter(
                settings.bad_signature_limit_per_minute, store=PostgresFailureStore(pool)
            )
            flusher = asyncio.create_task(_flush_periodically(rejections, pool))
        get_logger("app.main").info("started", version=__version__)
        try:
            yield
        finally:
            if flusher is not None and pool is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
                with contextlib.suppress(Exception):
                    await rejections.flush(partial(flush_rejections, pool))
            await runtime.aclose()

    production = settings.environment == "production"
    app = FastAPI(
        title="Starvit clinical event processor",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        responses={500: ERROR_RESPONSES[500]},
        # The interactive pages load their scripts from a CDN: never served. The schema is the
        # committed contract (contract/openapi.json); production does not serve it either.
        docs_url=None,
        redoc_url=None,
        openapi_url=None if production else "/openapi.json",
    )
    app.state.settings = settings
    app.state.signature_limiter = FailureLimiter(settings.bad_signature_limit_per_minute)
    app.state.rejections = RejectionCounter(frozenset())
    app.state.trusted_proxies = trusted_networks(settings.trusted_proxies)
    install_error_handlers(app)
    app.include_router(health.router)
    from app.api.v1 import router as v1_router  # noqa: PLC0415
    from app.events.endpoints import document_handlers  # noqa: PLC0415
    from app.wiring import handler_registry  # noqa: PLC0415

    document_handlers(handler_registry().subscribed_names())
    app.include_router(v1_router)
    from app.ops import metrics as ops_metrics  # noqa: PLC0415
    from app.ops import pages as ops_pages  # noqa: PLC0415

    app.include_router(ops_pages.router)
    app.include_router(ops_metrics.router)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_seconds=settings.body_read_timeout_seconds,
    )
    app.add_middleware(
        RequestContextMiddleware, extra_headers=security_headers(production=production)
    )
    if tracing_active():
        instrument_app(app)
    return app


async def _flush_periodically(rejections: RejectionCounter, pool: AsyncConnectionPool) -> None:
    log = get_logger("app.main")
    while True:
        await asyncio.sleep(REJECTIONS_FLUSH_SECONDS)
        try:
            await rejections.flush(partial(flush_rejections, pool))
        except Exception as error:  # kept in memory and retried at the next flush
            log.warning("rejections_not_flushed", exception_type=type(error).__name__)
