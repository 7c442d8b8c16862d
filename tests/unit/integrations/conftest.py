"""Fixtures for the Medplum client tests: a fake monotonic clock, a sleep that records the
computed waits instead of sleeping, and helpers that script Medplum's answers (pytest-httpx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from app.integrations.medplum import MedplumClient, MedplumClientConfig

BASE = "http://127.0.0.1:8103/"
FHIR = BASE + "fhir/R4/"
TOKEN_URL = BASE + "oauth2/token"
CLIENT_ID = "starvit-service"
CLIENT_SECRET = "starvit-dev-service-secret"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Stands in for ``asyncio.sleep``: records what the retry policy decided to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


def make_config(**overrides: Any) -> MedplumClientConfig:
    values: dict[str, Any] = {
        "base_url": BASE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    values.update(overrides)
    return MedplumClientConfig(**values)


@pytest.fixture
async def medplum(clock: FakeClock, sleeps: RecordingSleep) -> AsyncIterator[MedplumClient]:
    async with MedplumClient(make_config(), clock=clock, sleep=sleeps) as client:
        yield client


def add_token(
    httpx_mock: HTTPXMock,
    token: str = "token-1",
    *,
    expires_in: int = 3600,
    reusable: bool = False,
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=TOKEN_URL,
        json={"token_type": "Bearer", "access_token": token, "expires_in": expires_in},
        is_reusable=reusable,
    )


def patient(patient_id: str = "p1", version: str = "1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "meta": {"versionId": version}, **extra}


def outcome(code: str, text: str, outcome_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
    }
    if outcome_id:
        body["id"] = outcome_id
    return body


def fhir_requests(httpx_mock: HTTPXMock) -> list[Any]:
    return [r for r in httpx_mock.get_requests() if not str(r.url).startswith(TOKEN_URL)]
