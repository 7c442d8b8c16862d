"""``GET /v1/research/...``: de-identified aggregates for the researcher role only.

Every count passes small-cell suppression (no cell from 1 to 10, none derivable from the
others or the totals: :mod:`app.research.suppression`). Authentication is a Medplum access
token (:mod:`app.api.auth`); the role, audiences and the per-caller rate limit are in
:mod:`app.research.access`. Each answered request is audited as a log event naming the caller's
profile, the aggregate and how many cells were withheld (never a count or an id)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.api.auth import authenticate
from app.api.deps import RuntimeDep
from app.api.errors import ERROR_RESPONSES, ApiError, ErrorCode, ErrorEnvelope
from app.integrations.medplum.tokens import AccessToken
from app.observability.logging import get_logger
from app.research import service
from app.research.access import SubjectRateLimit, audiences, is_researcher
from app.research.suppression import MIN_CELL, Cell, SuppressedTable

router = APIRouter(prefix="/research", tags=["research"])
log = get_logger("app.research.api")


async def researcher(request: Request, runtime: RuntimeDep) -> AccessToken:
    settings = runtime.settings
    token = await authenticate(request, runtime, audiences=audiences(settings))
    if not is_researcher(token, settings):
        log.info("research_access_refused", profile=token.profile, client_id=token.client_id)
        raise ApiError(403, ErrorCode.FORBIDDEN, details={"reason": "not_a_researcher"})
    limiter = getattr(request.app.state, "research_rate_limit", None)
    if not isinstance(limiter, SubjectRateLimit):
        limiter = SubjectRateLimit(settings.research_requests_per_minute)
        request.app.state.research_rate_limit = limiter
    allowed, reset = limiter.allow(token.profile)
    if not allowed:
        raise ApiError(429, ErrorCode.RATE_LIMITED, headers={"Retry-After": str(reset)})
    return token


Researcher = Annotated[AccessToken, Depends(researcher)]

RESPONSES: dict[int | str, dict[str, object]] = {
    **{code: ERROR_RESPONSES[code] for code in (401, 422, 429, 503)},
    403: {"model": ErrorEnvelope, "description": "The caller does not hold the researcher role"},
}


class CountCell(BaseModel):
    key: list[str] = Field(description="The cell's category values, one per dimension.")
    count: int | None = Field(
        description=f"Patients; null when withheld (1 to {MIN_CELL - 1}, or derivable)."
    )


class CrossTable(BaseModel):
    dimensions: list[str]
    cells: list[CountCell]
    margins: dict[str, list[CountCell]] = Field(
        description="Per dimension, its totals over the other dimension."
    )
    total: int | None
    min_cell: int = MIN_CELL


class Prevalence(BaseModel):
    population: int | None = Field(description="Patients in the analytics store.")
    conditions: list[CountCell] = Field(description="Patients per condition code (SNOMED CT).")
    min_cell: int = MIN_CELL


class Cooccurrence(BaseModel):
    condition_a: str
    condition_b: str
    patients: int


class EgfrComorbidity(BaseModel):
    threshold: float
    pairs: list[Cooccurrence] = Field(
        description="Condition pairs held together by patients with an eGFR below the threshold."
    )
    withheld_pairs: int = Field(description=f"Pairs held by fewer than {MIN_CELL} patients.")
    min_cell: int = MIN_CELL


class ExportInfo(BaseModel):
    id: int
    status: Literal["running", "succeeded", "failed"]
    started_at: str
    finished_at: str | None
    full_refresh: bool
    key_version: str
    config_hash: str
    policy_version: str
    zip3_version: str
    loaded: dict[str, int]
    risk: dict[str, object] | None


def _cells(cells: list[Cell]) -> list[CountCell]:
    return [CountCell(key=list(c.key), count=c.count) for c in cells]


def _withheld(cells: list[Cell]) -> int:
    return sum(1 for c in cells if c.count is None)


async def _with_zone[T](runtime: RuntimeDep, work: Callable[[service.ResearchZone], T]) -> T:
    try:
        return await asyncio.to_thread(service.read_zone, runtime.settings, work)
    except service.ZoneUnavailable as error:
        raise ApiError(
            503, ErrorCode.DEPENDENCY_UNAVAILABLE, details={"reason": error.reason}
        ) from error


def _audit(token: AccessToken, aggregate: str, withheld: int) -> None:
    log.info(
        "research_aggregate_read",
        profile=token.profile,
        client_id=token.client_id,
        aggregate=aggregate,
        withheld_cells=withheld,
    )


@router.get(
    "/demographics",
    response_model=CrossTable,
    summary="Patients by sex and birth decade (small cells suppressed)",
    responses=RESPONSES,
)
async def demographics(runtime: RuntimeDep, token: Researcher) -> CrossTable:
    table: SuppressedTable = await _with_zone(runtime, lambda z: service.demographics(z.store))
    margins = {k: _cells(v) for k, v in table.margins.items()}
    _audit(token, "demographics", _withheld(table.cells))
    return CrossTable(
        dimensions=list(table.dimensions),
        cells=_cells(table.cells),
        margins=margins,
        total=table.total,
    )


@router.get(
    "/conditions",
    response_model=Prevalence,
    summary="Patients per condition (small cells and small complements suppressed)",
    responses=RESPONSES,
)
async def conditions(runtime: RuntimeDep, token: Researcher) -> Prevalence:
    cells, population = await _with_zone(runtime, lambda z: service.condition_prevalence(z.store))
    _audit(token, "conditions", _withheld(cells))
    return Prevalence(population=population, conditions=_cells(cells))


@router.get(
    "/graph/egfr-comorbidity",
    response_model=EgfrComorbidity,
    summary="Conditions co-occurring among patients with a low eGFR (from the graph)",
    responses=RESPONSES,
)
async def egfr_comorbidity(
    runtime: RuntimeDep,
    token: Researcher,
    threshold: Annotated[
        float, Query(ge=5, le=150, description="eGFR threshold, mL/min/1.73 m²")
    ] = 60.0,
) -> EgfrComorbidity:
    pairs, withheld = await _with_zone(
        runtime, lambda z: service.egfr_comorbidity(z.graph, threshold=threshold)
    )
    _audit(token, "egfr_comorbidity", withheld)
    return EgfrComorbidity(
        threshold=threshold,
        pairs=[
            Cooccurrence(condition_a=p.condition_a, condition_b=p.condition_b, patients=p.patients)
            for p in pairs
        ],
        withheld_pairs=withheld,
    )


@router.get(
    "/exports",
    response_model=list[ExportInfo],
    summary="Recent exports with their key version, configuration hash and risk report",
    responses=RESPONSES,
)
async def exports(
    runtime: RuntimeDep,
    token: Researcher,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ExportInfo]:
    try:
        records = await service.recent_exports(runtime, limit=limit)
    except service.ZoneUnavailable as error:
        raise ApiError(
            503, ErrorCode.DEPENDENCY_UNAVAILABLE, details={"reason": error.reason}
        ) from error
    _audit(token, "exports", 0)
    return [
        ExportInfo(
            id=r.id,
            status=r.status,  # pyright: ignore[reportArgumentType]
            started_at=r.started_at.isoformat(),
            finished_at=r.finished_at.isoformat() if r.finished_at else None,
            full_refresh=r.full_refresh,
            key_version=r.key_version,
            config_hash=r.config_hash,
            policy_version=r.policy_version,
            zip3_version=r.zip3_version,
            loaded=r.loaded,
            risk=r.risk,
        )
        for r in records
    ]
