"""Integration fixtures: a real PostgreSQL (the machine's, when ``STARVIT_TEST_DATABASE_URL``
names one, else the embedded server in ``var/test-pgdata``) with a fresh database per test,
and the real Medplum stand-in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from app.persistence.embedded import ensure_running, stop
from devtools.databases import scratch_database
from devtools.devserver import DevServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    configured = os.environ.get("STARVIT_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    data_dir = PROJECT_ROOT / "var" / "test-pgdata"
    server, started = ensure_running(data_dir)
    yield server.url
    if started:
        stop(data_dir)  # leave nothing running that this session started


def fresh_database(server_url: str) -> AbstractContextManager[str]:
    """A new, empty database on ``server_url`` (dropped afterwards)."""
    return scratch_database(server_url, "starvit_test")


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A new, empty database for one test."""
    with fresh_database(postgres_server_url) as url:
        yield url


# The stand-in as strict as the oldest Medplum the service supports: 5.0 reads only the first
# supported-interaction extension and never auto-disables a Subscription; the FHIR quota
# (50,000 points a minute), RateLimit headers and declared-profile validation are on by
# default. Only the delivery retries are quicker than Medplum's 1 s doubling.
STRICT_STANDIN = {"MEDPLUM_COMPAT": "5.0", "SUBSCRIPTION_RETRY_BASE_MS": "200"}


@pytest.fixture
def devserver() -> Iterator[DevServer]:
    with DevServer.start(env=STRICT_STANDIN) as server:
        yield server


@pytest.fixture(scope="module")
def module_devserver() -> Iterator[DevServer]:
    """One strict stand-in for a whole test module (its tests work on their own patients)."""
    with DevServer.start(env=STRICT_STANDIN) as server:
        yield server


@pytest.fixture(scope="module")
def module_database(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
async def fresh_quota_window(module_devserver: DevServer) -> None:
    """Each test of a module that shares a stand-in starts in a fresh quota minute, as if it ran
    alone (the quota itself stays Medplum's default). Modules opt in with
    ``pytest.mark.usefixtures("fresh_quota_window")``."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(module_devserver.base_url + "_devserver/reset-quota")
        answer.raise_for_status()
