"""The partner's rate limit and concurrency cap are shared by every process: two receiver
processes on one database refuse the request over the limit with 429, ``Retry-After`` and the
IETF ``RateLimit`` headers."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.partners import repository
from app.persistence.database import migrate
from devtools.devserver import DevServer
from devtools.stack import Stack
from tests.integration.partner_support import BETA, client_token, registry_file

pytestmark = pytest.mark.integration


async def test_the_rate_limit_holds_across_two_processes(
    devserver: DevServer, database_url: str, tmp_path: Path
) -> None:
    registry = registry_file(tmp_path, partner_beta={"requests_per_minute": 3})
    env = {"STARVIT_PARTNER_REGISTRY": str(registry)}
    token = await client_token(devserver.base_url, BETA)
    first = Stack(devserver.base_url, database_url, extra_env=env)
    second = Stack(devserver.base_url, database_url, extra_env=env)
    try:
        await asyncio.to_thread(first.start_receiver)
        await asyncio.to_thread(second.start_receiver)
        # Four requests in one fixed minute window (not started in its last seconds).
        if time.time() % 60 > 50:
            await asyncio.sleep(61 - time.time() % 60)
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(timeout=30) as http:
            for stack in (first, second, first, second):
                answers.append(
                    await http.get(
                        f"{stack.receiver_base}/v1/bundles/{uuid.uuid4()}",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                )
    finally:
        first.close()
        second.close()

    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    assert [a.headers["RateLimit"].split(";")[1] for a in answers] == ["r=2", "r=1", "r=0", "r=0"]
    refused = answers[3]
    assert refused.json()["error_code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"partner";q=3;w=60'


async def test_the_concurrency_cap_is_shared_and_released(database_url: str) -> None:
    await migrate(database_url)
    async with AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True},
        open=False,
        connection_class=AsyncConnection,
    ) as pool:
        leases = await asyncio.gather(
            *(repository.acquire_lease(pool, "lab-1", 2, 60) for _ in range(3))
        )
        granted = [lease for lease in leases if lease is not None]
        assert len(granted) == 2
        assert await repository.acquire_lease(pool, "lab-2", 2, 60) is not None
        await repository.release_lease(pool, granted[0])
        assert await repository.acquire_lease(pool, "lab-1", 2, 60) is not None
        # An expired lease (its process died) frees its slot.
        assert await repository.acquire_lease(pool, "lab-3", 1, -1) is not None
        assert await repository.acquire_lease(pool, "lab-3", 1, 60) is not None
