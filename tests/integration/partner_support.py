"""Helpers for the partner API tests: tokens from the stand-in, bundles, the app in-process."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from app.settings import load_settings
from devtools.devserver import (
    PARTNER_CLIENT_ID,
    PARTNER_CLIENT_SECRET,
    PROJECT_ROOT,
    SERVICE_CLIENT_ID,
    SERVICE_CLIENT_SECRET,
)

type Json = dict[str, Any]

DEV_REGISTRY = PROJECT_ROOT / "devserver" / "partners.json"
BETA = ("partner-beta", "partner-beta-dev-secret")
ACME = (PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET)


async def client_token(base_url: str, credentials: tuple[str, str] = ACME) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            base_url + "oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": credentials[0],
                "client_secret": credentials[1],
            },
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])


def registry_file(directory: Path, **limits: Any) -> Path:
    """The development registry, with some partners' limits changed (``partner-beta={...}``)."""
    data = json.loads(DEV_REGISTRY.read_text())
    for partner in data["partners"]:
        change = limits.get(partner["client_id"].replace("-", "_"))
        if change:
            partner["limits"] = {**partner.get("limits", {}), **change}
    path = directory / f"partners-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(data))
    return path


def partner_app(base_url: str, database_url: str, registry: Path, **overrides: Any) -> FastAPI:
    settings = load_settings(
        database_url=database_url,
        webhook_secrets="partner-tests",
        environment="test",
        medplum_base_url=base_url,
        medplum_client_id=SERVICE_CLIENT_ID,
        medplum_client_secret=SERVICE_CLIENT_SECRET,
        partner_registry=registry,
        **overrides,
    )
    return create_app(settings)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as http,
    ):
        yield http


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient_entry(full_url: str, marker: str, **extra: Any) -> Json:
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:partner-mrn", "value": marker}],
            "gender": "female",
            "birthDate": "1970-05-01",
            **extra,
        },
        "request": {"method": "POST", "url": "Patient"},
    }


def weight_entry(
    full_url: str, patient: str, value: float = 72.5, unit: str = "kg", **extra: Any
) -> Json:
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": patient},
            "effectiveDateTime": "2026-11-30T09:00:00Z",
            "valueQuantity": {
                "value": value,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": unit,
            },
            **extra,
        },
        "request": {"method": "POST", "url": "Observation"},
    }


def bundle(entries: list[Json], bundle_type: str = "transaction") -> Json:
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}


def post_headers(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers
