"""The production server's own limits (app/api/server.py), on a real socket: Uvicorn with the
guarded protocol refuses oversized or too many headers, an over-long request line and a head
that does not arrive in time, and sends no ``server`` banner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn
from fastapi import FastAPI

from app.api.server import HeadLimits, StarvitUvicornWorker, server_config
from app.cli.main import GUNICORN_FLAGS

LIMITS = HeadLimits(request_line=256, fields=20, field_size=512, head_timeout=0.5)


@pytest.fixture
async def port(make_app: Callable[..., FastAPI]) -> AsyncIterator[int]:
    config = uvicorn.Config(
        make_app(),
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="on",
        **server_config(LIMITS),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # the server starts in well under 5 s
        if server.started:
            break
        await asyncio.sleep(0.01)
    [listener] = server.servers
    yield listener.sockets[0].getsockname()[1]
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def exchange(port: int, request: bytes, *, wait: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()


async def test_a_normal_request_is_served_without_a_server_banner(port: int) -> None:
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"\r\nserver:" not in answer.lower()
    assert b"x-content-type-options: nosniff" in answer


async def test_too_many_headers_are_431(port: int) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"error_code":"headers_too_large"' in answer


async def test_an_oversized_header_is_431_before_it_is_buffered(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        # Far beyond every limit, and never finished: the answer must not wait for its end.
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"a" * 4096)
                await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431")


async def test_an_over_long_request_line_is_414(port: int) -> None:
    answer = await exchange(port, b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")


async def test_a_slow_head_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_an_idle_connection_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answer = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


def test_the_production_flags_name_the_guarded_worker_and_its_limits() -> None:
    flags = dict(zip(GUNICORN_FLAGS[::2], GUNICORN_FLAGS[1::2], strict=False))
    worker = f"{StarvitUvicornWorker.__module__}.{StarvitUvicornWorker.__name__}"
    assert flags["--worker-class"] == worker
    for flag in (
        "--limit-request-line",
        "--limit-request-fields",
        "--limit-request-field_size",
        "--timeout",
        "--graceful-timeout",
        "--keep-alive",
        "--worker-connections",
    ):
        assert int(flags[flag]) > 0, flag


def test_the_worker_reads_gunicorns_limits_into_uvicorns_config() -> None:
    from gunicorn.config import Config as GunicornConfig  # noqa: PLC0415

    cfg = GunicornConfig()
    cfg.set("limit_request_line", 1000)
    cfg.set("limit_request_fields", 30)
    cfg.set("limit_request_field_size", 2000)
    cfg.set("worker_connections", 50)
    worker = StarvitUvicornWorker(0, 0, [], None, 30, cfg, cfg.logger_class(cfg))  # pyright: ignore[reportArgumentType]
    config = worker.config
    assert config.server_header is False
    assert config.limit_concurrency == 50
    limits = config.http.limits  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    assert limits == HeadLimits(request_line=1000, fields=30, field_size=2000)
