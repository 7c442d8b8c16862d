"""``GET /metrics``: Prometheus text, computed at scrape time from the service's PHI-free tables
(so every receiver process answers the same figures, however many there are).

Authenticated: ``Authorization: Bearer <STARVIT_METRICS_TOKEN>`` (what Prometheus' scrape
config sends), or an ops user's session or Medplum token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.api.errors import ERROR_RESPONSES, ApiError, ErrorCode
from app.ops import queries
from app.ops.auth import SignInRefused
from app.ops.dependencies import current_session, ops_auth, ops_service
from app.ops.service import OpsService

router = APIRouter(tags=["ops"])


class _Snapshot(Collector):
    """Families computed before the registry collects them (the queries are async)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


async def families(service: OpsService) -> list[Metric]:
    pool = service.pool
    names = sorted(service.registry.subscribed_names())
    traffic = await queries.handler_traffic(pool, names)
    refused = await queries.refusals(pool)
    health = await queries.recorded_health(pool)
    sweeps = await queries.sweep_states(pool)
    queue = await queries.queue_state(pool)
    timing = await queries.latency(pool)
    codes = await queries.dead_letter_codes(pool)
    workers = await queries.worker_heartbeats(pool)

    deliveries = _gauge(
        "starvit_deliveries_last_hour", "Notifications received (replays apart)", ["handler"]
    )
    last = _gauge(
        "starvit_last_delivery_timestamp_seconds", "Time of the last notification", ["handler"]
    )
    recovered = _gauge(
        "starvit_sweep_recovered_24h", "Events the sweep recovered (24 h)", ["handler"]
    )
    lag = _gauge("starvit_sweep_lag_seconds", "Age of the sweep watermark", ["handler"])
    for row in traffic:
        deliveries.add_metric([row.handler], row.deliveries_last_hour)
        recovered.add_metric([row.handler], row.sweep_recovered_24h)
        if row.last_delivery_at is not None:
            last.add_metric([row.handler], row.last_delivery_at.timestamp())
    for name, state in sweeps.items():
        if state.lag_seconds is not None:
            lag.add_metric([name], state.lag_seconds)
    refusals = _gauge(
        "starvit_refused_deliveries_last_hour",
        "Refused (and duplicate) deliveries by reason",
        ["handler", "reason"],
    )
    for handler, reasons in refused.items():
        for reason, count in reasons.items():
            refusals.add_metric([handler, reason], count)
    active = _gauge(
        "starvit_subscription_active",
        "1 when the last health check saw the Subscription active",
        ["handler", "status"],
    )
    for name, row in health.items():
        active.add_metric([name, row.status], 1.0 if row.status == "active" else 0.0)
    queued = _gauge("starvit_queue_depth", "Events waiting to be processed")
    queued.add_metric([], queue.depth)
    oldest = _gauge("starvit_queue_oldest_seconds", "Age of the oldest waiting event")
    oldest.add_metric([], queue.oldest_waiting_seconds or 0.0)
    running = _gauge("starvit_jobs_running", "Event jobs running now")
    running.add_metric([], queue.running)
    dead = _gauge("starvit_dead_letters", "Failed events by error code", ["error_code"])
    for code, count in codes.items():
        dead.add_metric([code], count)
    latency = _gauge("starvit_latency_ms", "End-to-end latency over the last hour", ["quantile"])
    for quantile, value in (
        ("0.5", timing.p50_ms),
        ("0.9", timing.p90_ms),
        ("0.99", timing.p99_ms),
    ):
        if value is not None:
            latency.add_metric([quantile], value)
    trips = _gauge("starvit_medplum_round_trips_per_event", "Average over the last hour")
    if timing.round_trips_avg is not None:
        trips.add_metric([], timing.round_trips_avg)
    beats = _gauge(
        "starvit_worker_heartbeat_age_seconds", "Seconds since each worker's heartbeat", ["worker"]
    )
    for worker in workers:
        beats.add_metric([str(worker.worker_id)], worker.age_seconds)
    return [
        deliveries,
        last,
        recovered,
        lag,
        refusals,
        active,
        queued,
        oldest,
        running,
        dead,
        latency,
        trips,
        beats,
    ]


async def _authorised(request: Request) -> bool:
    settings = request.app.state.settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token):
        return True
    try:
        auth = ops_auth(request)
    except ApiError:
        return False
    try:
        return await current_session(request, auth) is not None
    except SignInRefused:
        return False


@router.get(
    "/metrics",
    summary="Prometheus metrics (scrape with the metrics token)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        401: ERROR_RESPONSES[401],
        503: ERROR_RESPONSES[503],
    },
)
async def metrics(request: Request) -> Response:
    if not await _authorised(request):
        raise ApiError(401, ErrorCode.UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await families(ops_service(request))))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
