"""FastAPI application factory and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api import health
from app.api.errors import ERROR_RESPONSES, install_error_handlers
from app.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.observability.logging import configure_logging, get_logger
from app.observability.tracing import configure_tracing, instrument_app, tracing_active
from app.runtime import Runtime
from app.settings import Settings, get_settings

RuntimeFactory = Callable[[Settings], Awaitable[Runtime]]

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
        get_logger("app.main").info("started", version=__version__)
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(
        title="Starvit clinical event processor",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        responses={500: ERROR_RESPONSES[500]},
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    from app.api.v1 import router as v1_router  # noqa: PLC0415

    app.include_router(v1_router)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    if tracing_active():
        instrument_app(app)
    return app
