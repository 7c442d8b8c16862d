"""Helpers for the end-to-end tests: a Medplum stand-in, a PostgreSQL database, the receiver
and worker processes, synced Subscriptions, and FHIR access as the seeded identities (through
the service's own Medplum client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.settings import load_settings
from app.subscriptions.service import sync_subscriptions
from app.wiring import medplum_client
from devtools.devserver import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    DevServer,
)
from devtools.resources import vital_sign
from devtools.stack import Stack

type Json = dict[str, Any]


def fhir_client(base_url: str, client_id: str, secret: str) -> MedplumClient:
    """The Medplum client as one of the seeded client-credentials identities."""
    config = MedplumClientConfig(
        base_url=base_url, client_id=client_id, client_secret=secret, read_timeout=30.0
    )
    return MedplumClient(config)


def days_ago(days: int) -> str:
    """A clinical time ``days`` before now (at 09:00 UTC), for evidence that must be current."""
    moment = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    return (moment - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def observation(patient: str, loinc: str, value: float, unit: str, when: str) -> Json:
    return vital_sign(patient, loinc, value, unit, when)


@dataclass
class Pipeline:
    devserver: DevServer
    stack: Stack
    database_url: str
    partner: MedplumClient
    admin: MedplumClient

    async def new_patient(self, **extra: Any) -> str:
        created = await self.partner.create(
            {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01", **extra}
        )
        assert created.reference
        return created.reference

    async def weight_and_height(
        self, patient: str, weight: float = 95.0, when: str | None = None
    ) -> tuple[Json, Json]:
        """A height and a weight (by default 60 and 30 days ago: current evidence, inside
        every protocol's window)."""
        height = await self.partner.create(observation(patient, "8302-2", 165, "cm", days_ago(60)))
        taken = when or days_ago(30)
        body = await self.partner.create(observation(patient, "29463-7", weight, "kg", taken))
        return height.resource, body.resource

    async def read(self, reference: str) -> Json:
        """``Type/id`` as the project admin."""
        resource_type, _, resource_id = reference.partition("/")
        return (await self.admin.read(resource_type, resource_id)).resource

    async def search(self, resource_type: str, **params: str) -> list[Json]:
        """Every match (all pages) as the project admin."""
        return await self.admin.search_all(resource_type, {"_count": "200", **params})

    def events(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return list(
                conn.execute(
                    "SELECT id, handler, resource_type, resource_id, version_id, status, outcome, "
                    "error_code, attempts FROM starvit.event_keys ORDER BY id"
                )
            )

    async def settled(self, within: float = 30.0) -> None:
        """Wait until Medplum has nothing left to deliver and every event is processed."""
        deadline = time.monotonic() + within
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            stats = await self.stats()
            pending = stats["notifications"]
            busy = pending.get("queued", 0) + pending.get("in_flight", 0)
            open_events = [e for e in self.events() if e[5] == "queued"]
            if busy == 0 and not open_events:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.6:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.1)
        raise AssertionError(f"not settled: {[e for e in self.events() if e[5] != 'processed']}")

    async def stats(self) -> Json:
        async with httpx.AsyncClient() as http:
            return (await http.get(self.devserver.base_url + "_devserver/stats")).json()

    async def fault(self, **fault: Any) -> None:
        async with httpx.AsyncClient() as http:
            answer = await http.post(self.devserver.base_url + "_devserver/fault", json=fault)
            answer.raise_for_status()

    async def configure_standin(self, **settings: Any) -> Json:
        """Change the stand-in's run-time settings (quota, compat mode, conflicts...)."""
        async with httpx.AsyncClient() as http:
            answer = await http.post(self.devserver.base_url + "_devserver/config", json=settings)
            answer.raise_for_status()
            return answer.json()

    async def set_project_features(self, features: list[str]) -> None:
        """What a super admin does on a real server (project admins cannot change them)."""
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                self.devserver.base_url + "_devserver/project", json={"features": features}
            )
            answer.raise_for_status()

    async def tasks_for(self, patient: str, **params: str) -> list[Json]:
        return await self.search("Task", subject=patient, **params)


async def eventually[T](
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 20.0
) -> T:
    deadline = time.monotonic() + within
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; last value: {value!r}")
        await asyncio.sleep(0.1)
        value = await probe()
    return value


@asynccontextmanager
async def running_pipeline(
    devserver: DevServer, database_url: str, **env: str
) -> AsyncIterator[Pipeline]:
    """``start_pipeline`` for the length of a block: the processes and clients are stopped
    whatever the block does."""
    running = await start_pipeline(devserver, database_url, **env)
    try:
        yield running
    finally:
        running.stack.close()
        await running.partner.aclose()
        await running.admin.aclose()


async def start_pipeline(devserver: DevServer, database_url: str, **env: str) -> Pipeline:
    stack = Stack(devserver.base_url, database_url, extra_env=env)
    stack.start_receiver()
    stack.start_worker()
    settings = load_settings(
        medplum_base_url=devserver.base_url,
        medplum_client_secret=stack.env()["STARVIT_MEDPLUM_CLIENT_SECRET"],
        webhook_secrets=stack.webhook_secret,
        receiver_url=stack.receiver_url,
        database_url=database_url,
    )
    async with medplum_client(settings) as medplum:
        await sync_subscriptions(medplum, settings)
    return Pipeline(
        devserver=devserver,
        stack=stack,
        database_url=database_url,
        partner=fhir_client(devserver.base_url, PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET),
        admin=fhir_client(devserver.base_url, ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET),
    )
