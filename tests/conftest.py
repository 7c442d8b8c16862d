"""Fixtures shared by the suites: test settings, the app on a bare runtime (no database, no
Medplum), an in-process HTTP client running the app's lifespan, and captured JSON log lines."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.observability.logging import configure_logging
from app.runtime import Runtime
from app.settings import Settings, load_settings
from app.wiring import handler_registry


def settings_for_tests(**overrides: object) -> Settings:
    values: dict[str, object] = {"webhook_secrets": "s1", "environment": "test"}
    values.update(overrides)
    return load_settings(**values)


async def bare_runtime(settings: Settings) -> Runtime:
    return Runtime(settings, registry=handler_registry())


class LogCapture:
    """Every log line the service writes while installed, as text and as parsed JSON events."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def install(self) -> None:
        configure_logging("DEBUG", stream=self.stream)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    capture.install()
    yield capture
    configure_logging()


@pytest.fixture
def make_app(logs: LogCapture) -> Callable[..., FastAPI]:
    """Build the app with settings overrides; logging goes to ``logs``."""

    def build(**overrides: object) -> FastAPI:
        app = create_app(settings_for_tests(**overrides), runtime_factory=bare_runtime)
        logs.install()  # create_app configures logging for stderr
        return app

    return build


type Serve = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def serve() -> Serve:
    """``async with serve(app) as client``: the app's lifespan runs around the client."""

    @asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            yield client

    return running
