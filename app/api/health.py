"""Liveness and readiness probes (unauthenticated, no PHI, not rate limited)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class DependencyCheck(BaseModel):
    name: str
    ok: bool
    error_code: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: list[DependencyCheck]


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database is reachable (the receiver never needs Medplum to accept events)",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    from app.api.deps import runtime_of  # noqa: PLC0415

    checks = [
        DependencyCheck(name=name, ok=error is None, error_code=error)
        for name, error in (await runtime_of(request).readiness()).items()
    ]
    ready = all(check.ok for check in checks)
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
