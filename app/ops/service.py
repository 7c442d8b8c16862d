"""The ops dashboard's service: the overview every page and the JSON API show, and the ops
actions (each previewed, then done and audited).

It reads the service's own tables (:mod:`app.ops.queries`) and asks Medplum
(:mod:`app.ops.medplum_side`) with the service's client; answers from Medplum are cached for a
few seconds so that a dashboard left open does not eat the project's FHIR quota. When Medplum
cannot be asked, the overview still answers from the tables (``medplum_reachable: false``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from app.integrations.medplum import MedplumClient, MedplumClientConfig, MedplumError
from app.integrations.medplum.auth import StaticTokenSource
from app.observability.correlation import current_correlation_id
from app.observability.logging import get_logger
from app.ops import medplum_side, queries
from app.ops.repository import MAX_WINDOW_REPLAY, ActionRecord, record_action, replay_failed
from app.ops.schemas import (
    AcceptanceRow,
    ActionItem,
    ActionResult,
    BudgetPanel,
    DeadLetterItem,
    GapItem,
    HandlerPanel,
    MinutePointModel,
    Overview,
    ProcessingPanel,
    TransmitAttempts,
    WorkerItem,
)

if TYPE_CHECKING:
    from procrastinate import App
    from psycopg_pool import AsyncConnectionPool

    from app.handlers.registry import HandlerRegistry
    from app.settings import Settings

log = get_logger("app.ops")

# A worker whose heartbeat is older than this is shown as dead (procrastinate beats every 10 s
# and treats 30 s of silence as stalled).
WORKER_STALE_SECONDS = 30.0
SUBSCRIPTIONS_TTL = 5.0
SLOW_TTL = 60.0


class ActionRefused(Exception):
    """The action cannot be done as asked (a stable code says why)."""

    def __init__(self, code: str, status_code: int = 409) -> None:
        super().__init__(code)
        self.code = code
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Actor:
    profile: str
    login_id: str | None
    access_token: str = field(repr=False)


@dataclass
class _Cached[T]:
    value: T
    at: float


class _Cache:
    def __init__(self) -> None:
        self._items: dict[str, _Cached[object]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get[T](self, key: str, ttl: float, load: Callable[[], Awaitable[T]]) -> T:
        item = self._items.get(key)
        if item is not None and time.monotonic() - item.at < ttl:
            return item.value  # pyright: ignore[reportReturnType]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            item = self._items.get(key)
            if item is not None and time.monotonic() - item.at < ttl:
                return item.value  # pyright: ignore[reportReturnType]
            value = await load()
            self._items[key] = _Cached(value, time.monotonic())
            return value

    def forget(self) -> None:
        self._items.clear()


class OpsService:
    """One per process: the database pool and queue of the receiver, the handler registry and
    a Medplum client of the service's own (opened on first use)."""

    name = "ops"

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool,
        queue: App,
        registry: HandlerRegistry,
        *,
        medplum: MedplumClient | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.registry = registry
        self._medplum = medplum
        self._cache = _Cache()

    # --- lifecycle (a runtime dependency) ---------------------------------------------------

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        if self._medplum is not None:
            await self._medplum.aclose()
            self._medplum = None

    def _config(self, *, client_id: str | None = None, secret: str = "") -> MedplumClientConfig:
        settings = self.settings
        return MedplumClientConfig(
            base_url=settings.medplum_base_url,
            client_id=client_id or settings.medplum_client_id,
            client_secret=secret,
            allowed_hosts=tuple(settings.medplum_allowed_hosts),
            connect_timeout=settings.medplum_connect_timeout,
            read_timeout=settings.medplum_read_timeout,
            max_attempts=2,
            max_retry_wait_seconds=min(5.0, settings.medplum_max_retry_wait),
        )

    def medplum(self) -> MedplumClient | None:
        """The service's own Medplum client; None when the process has no credentials."""
        if self._medplum is None:
            secret = self.settings.medplum_client_secret
            if secret is None or not secret.get_secret_value():
                return None
            self._medplum = MedplumClient(self._config(secret=secret.get_secret_value()))
        return self._medplum

    def user_client(self, actor: Actor) -> MedplumClient:
        """A client that acts as the signed-in ops user (Medplum applies their policy)."""
        return MedplumClient(
            self._config(client_id=self.settings.ops_client_id),
            token_source=StaticTokenSource(actor.access_token),
        )

    # --- overview ---------------------------------------------------------------------------

    async def _medplum_view(
        self,
    ) -> tuple[
        dict[str, medplum_side.SubscriptionState] | None,
        dict[str, medplum_side.TransmitStats],
        list[medplum_side.Acceptance] | None,
    ]:
        medplum = self.medplum()
        if medplum is None:
            return None, {}, None
        try:
            states = await self._cache.get(
                "subscriptions",
                SUBSCRIPTIONS_TTL,
                lambda: medplum_side.subscriptions(medplum, self.registry),
            )
        except MedplumError as error:
            log.warning("ops_medplum_unavailable", error_code=error.error_code)
            return None, {}, None

        async def transmit() -> dict[str, medplum_side.TransmitStats]:
            since = datetime.now(UTC) - timedelta(hours=1)
            out: dict[str, medplum_side.TransmitStats] = {}
            for state in states.values():
                if state.subscription_id:
                    out[state.handler] = await medplum_side.transmit_stats(
                        medplum, state.subscription_id, since
                    )
            return out

        async def decisions() -> list[medplum_side.Acceptance]:
            return await medplum_side.acceptance(medplum, datetime.now(UTC) - timedelta(days=30))

        try:
            attempts = await self._cache.get("transmit", SLOW_TTL, transmit)
        except MedplumError:
            attempts = {}
        try:
            accepted = await self._cache.get("acceptance", SLOW_TTL, decisions)
        except MedplumError:
            accepted = None
        return states, attempts, accepted

    async def overview(self) -> Overview:
        names = sorted(self.registry.subscribed_names())
        traffic = {t.handler: t for t in await queries.handler_traffic(self.pool, names)}
        refused = await queries.refusals(self.pool)
        sweeps = await queries.sweep_states(self.pool)
        recorded = await queries.recorded_health(self.pool)
        states, attempts, accepted = await self._medplum_view()
        panels: list[HandlerPanel] = []
        for name in names:
            flow = traffic[name]
            state = states.get(name) if states is not None else None
            record = recorded.get(name)
            by_reason = dict(refused.get(name, {}))
            duplicates = by_reason.pop("duplicate", 0)
            sent = attempts.get(name)
            status = state.status if state else "unknown"
            effective = status if state else (record.status if record else "unknown")
            panels.append(
                HandlerPanel(
                    handler=name,
                    subscription_id=(state.subscription_id if state else None)
                    or (record.subscription_id if record else None),
                    medplum_status=status,
                    medplum_error=state.error if state else None,
                    recorded_status=record.status if record else None,
                    healthy=effective == "active",
                    deliveries_per_minute=round(flow.deliveries_last_15m / 15, 2),
                    deliveries_last_hour=flow.deliveries_last_hour,
                    resent_last_hour=flow.resent_last_hour,
                    duplicates_last_hour=duplicates,
                    refused_last_hour=by_reason,
                    last_delivery_at=flow.last_delivery_at,
                    sweep_recovered_24h=flow.sweep_recovered_24h,
                    sweep_lag_seconds=sweeps[name].lag_seconds if name in sweeps else None,
                    replayed_24h=flow.replayed_24h,
                    transmit=TransmitAttempts(
                        attempts=sent.attempts,
                        failures=sent.failures,
                        http_codes=sent.http_codes,
                        auto_disabled=sent.auto_disabled,
                        last_attempt_at=sent.last_attempt_at,
                        truncated=sent.truncated,
                    )
                    if sent
                    else None,
                )
            )
        unattributed = {
            reason: count
            for handler, reasons in refused.items()
            if handler not in names
            for reason, count in reasons.items()
        }
        return Overview(
            generated_at=datetime.now(UTC),
            medplum_reachable=states is not None,
            handlers=panels,
            unattributed_refusals_last_hour=unattributed,
            processing=await self.processing(),
            acceptance=[AcceptanceRow.model_validate(row, from_attributes=True) for row in accepted]
            if accepted is not None
            else None,
        )

    async def processing(self) -> ProcessingPanel:
        queue = await queries.queue_state(self.pool)
        timing = await queries.latency(self.pool)
        workers = await queries.worker_heartbeats(self.pool)
        budget = await queries.budget_left(self.pool)
        return ProcessingPanel(
            queue_depth=queue.depth,
            oldest_waiting_seconds=queue.oldest_waiting_seconds,
            running=queue.running,
            retrying=queue.retrying,
            retried_last_hour=queue.retried_last_hour,
            dead_letters=queue.dead_letters,
            dead_letters_by_code=await queries.dead_letter_codes(self.pool),
            processed_last_hour=timing.processed_last_hour,
            latency_p50_ms=timing.p50_ms,
            latency_p90_ms=timing.p90_ms,
            latency_p99_ms=timing.p99_ms,
            medplum_round_trips_avg=timing.round_trips_avg,
            medplum_round_trips_p95=timing.round_trips_p95,
            quota_points_per_event=timing.quota_points_avg,
            budget=BudgetPanel(
                points_left=budget.points_left, window_resets_at=budget.window_resets_at
            )
            if budget
            else None,
            workers=[
                WorkerItem(
                    worker_id=w.worker_id,
                    last_heartbeat=w.last_heartbeat,
                    age_seconds=round(w.age_seconds, 1),
                    alive=w.age_seconds < WORKER_STALE_SECONDS,
                )
                for w in workers
            ],
        )

    async def dead_letters(self, limit: int = 50) -> list[DeadLetterItem]:
        return [
            DeadLetterItem(
                event_id=d.event_id,
                handler=d.handler,
                reference=d.reference,
                version_id=d.version_id,
                error_code=d.error_code,
                attempts=d.attempts,
                received_at=d.received_at,
                replays=d.replays,
            )
            for d in await queries.dead_letters(self.pool, limit=limit)
        ]

    async def series(self, minutes: int = 60) -> list[MinutePointModel]:
        return [
            MinutePointModel(
                minute=p.minute,
                deliveries=p.deliveries,
                refused=p.refused,
                failed=p.failed,
                latency_p50_ms=p.latency_p50_ms,
                latency_p95_ms=p.latency_p95_ms,
                backlog=p.backlog,
                oldest_waiting_seconds=p.oldest_waiting_seconds,
            )
            for p in await queries.minute_series(self.pool, minutes)
        ]

    async def gaps(
        self, start: datetime, end: datetime, handler: str | None = None
    ) -> list[GapItem]:
        medplum = self._require_medplum()
        self._check_handler(handler, swept=True)
        found = await medplum_side.gaps(
            medplum,
            self.pool,
            self.registry,
            settings=self.settings,
            start=start,
            end=end,
            handler=handler,
        )
        return [GapItem.model_validate(g, from_attributes=True) for g in found]

    async def actions(self, limit: int = 20) -> list[ActionItem]:
        return [
            ActionItem(
                action_id=a.action_id,
                at=a.at,
                actor=a.actor,
                action=a.action,
                handler=a.handler,
                target=a.target,
                window_start=a.window_start,
                window_end=a.window_end,
                outcome=a.outcome,
                detail=a.detail,
                affected=a.affected,
            )
            for a in await queries.recent_actions(self.pool, limit=limit)
        ]

    # --- actions ------------------------------------------------------------------------------

    def _require_medplum(self) -> MedplumClient:
        medplum = self.medplum()
        if medplum is None:
            raise ActionRefused("medplum_not_configured", 503)
        return medplum

    def _check_handler(self, handler: str | None, *, swept: bool = False) -> None:
        if handler is None:
            return
        known = self.registry.get(handler)
        if known is None or (swept and known.sweep is None):
            raise ActionRefused("unknown_handler", 404)

    async def _audit(self, actor: Actor, record: ActionRecord) -> int:
        return await record_action(
            self.pool,
            ActionRecord(
                actor=actor.profile,
                login_id=actor.login_id,
                action=record.action,
                outcome=record.outcome,
                handler=record.handler,
                target=record.target,
                window_start=record.window_start,
                window_end=record.window_end,
                detail=record.detail,
                affected=record.affected,
                correlation_id=current_correlation_id(),
            ),
        )

    async def replay_dead_letter(
        self, actor: Actor, event_id: int, *, confirm: bool
    ) -> ActionResult:
        status = await queries.event_status(self.pool, event_id)
        if status is None:
            raise ActionRefused("event_not_found", 404)
        if status[0] != "failed":
            raise ActionRefused("event_not_failed")
        if not confirm:
            return ActionResult(action="replay_dead_letter", status="preview", affected=1)
        replayed = await replay_failed(self.pool, self.queue, event_id=event_id)
        action_id = await self._audit(
            actor,
            ActionRecord(
                actor=actor.profile,
                action="replay_dead_letter",
                outcome="done" if replayed else "refused",
                target=str(event_id),
                detail=status[1],
                affected=len(replayed),
            ),
        )
        log.info("ops_replay", event_id=event_id, actor=actor.profile, replayed=len(replayed))
        return ActionResult(
            action="replay_dead_letter", status="done", affected=len(replayed), action_id=action_id
        )

    async def replay_window(
        self, actor: Actor, start: datetime, end: datetime, handler: str | None, *, confirm: bool
    ) -> ActionResult:
        self._check_handler(handler)
        if not confirm:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT count(*) FROM starvit.event_keys WHERE status = 'failed' "
                    "AND received_at >= %s AND received_at < %s "
                    "AND (%s::text IS NULL OR handler = %s)",
                    (start, end, handler, handler),
                )
                count = int((await cursor.fetchone() or (0,))[0])
            return ActionResult(
                action="replay_window",
                status="preview",
                affected=min(count, MAX_WINDOW_REPLAY),
                detail=f"at most {MAX_WINDOW_REPLAY} per replay"
                if count > MAX_WINDOW_REPLAY
                else None,
            )
        replayed = await replay_failed(self.pool, self.queue, window=(start, end), handler=handler)
        action_id = await self._audit(
            actor,
            ActionRecord(
                actor=actor.profile,
                action="replay_window",
                outcome="done",
                handler=handler,
                window_start=start,
                window_end=end,
                affected=len(replayed),
            ),
        )
        return ActionResult(
            action="replay_window", status="done", affected=len(replayed), action_id=action_id
        )

    async def sweep_window(
        self, actor: Actor, start: datetime, end: datetime, handler: str | None, *, confirm: bool
    ) -> ActionResult:
        self._check_handler(handler, swept=True)
        medplum = self._require_medplum()
        if not confirm:
            found = await medplum_side.gaps(
                medplum,
                self.pool,
                self.registry,
                settings=self.settings,
                start=start,
                end=end,
                handler=handler,
            )
            missing = sum(g.changed_in_medplum - g.reached_inbox for g in found)
            return ActionResult(action="sweep_window", status="preview", affected=missing)
        try:
            queued = await medplum_side.sweep_window(
                medplum,
                self.pool,
                self.queue,
                registry=self.registry,
                settings=self.settings,
                start=start,
                end=end,
                handler=handler,
            )
        except MedplumError as error:
            await self._audit(
                actor,
                ActionRecord(
                    actor=actor.profile,
                    action="sweep_window",
                    outcome="failed",
                    handler=handler,
                    window_start=start,
                    window_end=end,
                    detail=error.error_code,
                ),
            )
            raise ActionRefused(error.error_code, 502) from None
        action_id = await self._audit(
            actor,
            ActionRecord(
                actor=actor.profile,
                action="sweep_window",
                outcome="done",
                handler=handler,
                window_start=start,
                window_end=end,
                affected=queued,
            ),
        )
        return ActionResult(
            action="sweep_window", status="done", affected=queued, action_id=action_id
        )

    async def reenable(self, actor: Actor, handler: str, *, confirm: bool) -> ActionResult:
        known = self.registry.get(handler)
        if known is None or known.subscription is None:
            raise ActionRefused("unknown_handler", 404)
        medplum = self._require_medplum()
        if not confirm:
            states = await medplum_side.subscriptions(medplum, self.registry)
            state = states.get(handler)
            return ActionResult(
                action="reenable_subscription",
                status="preview",
                affected=1,
                detail=state.status if state else None,
            )
        try:
            result = await medplum_side.reenable(medplum, self.settings, self.registry, handler)
        except MedplumError as error:
            await self._audit(
                actor,
                ActionRecord(
                    actor=actor.profile,
                    action="reenable_subscription",
                    outcome="failed",
                    handler=handler,
                    detail=error.error_code,
                ),
            )
            raise ActionRefused(error.error_code, 502) from None
        self._cache.forget()
        action_id = await self._audit(
            actor,
            ActionRecord(
                actor=actor.profile,
                action="reenable_subscription",
                outcome="done",
                handler=handler,
                target=f"Subscription/{result.subscription_id}",
                detail=result.action,
                affected=1,
            ),
        )
        return ActionResult(
            action="reenable_subscription",
            status="done",
            affected=1,
            detail=result.action,
            action_id=action_id,
        )

    async def resend(
        self, actor: Actor, handler: str, reference: str, interaction: str, *, confirm: bool
    ) -> ActionResult:
        known = self.registry.get(handler)
        if known is None or known.subscription is None:
            raise ActionRefused("unknown_handler", 404)
        if reference.split("/", 1)[0] != known.subscription.trigger.resource_type:
            raise ActionRefused("wrong_resource_type", 422)
        medplum = self._require_medplum()
        states = await medplum_side.subscriptions(medplum, self.registry)
        state = states.get(handler)
        if state is None or not state.subscription_id:
            raise ActionRefused("subscription_missing")
        if not confirm:
            return ActionResult(action="resend", status="preview", affected=1, detail=state.status)
        # Recorded first: the delivery it causes can arrive before Medplum answers, and must be
        # recognised as the resend's (not delivery health).
        action_id = await self._audit(
            actor,
            ActionRecord(
                actor=actor.profile,
                action="resend",
                outcome="done",
                handler=handler,
                target=reference,
                detail=interaction,
                affected=1,
            ),
        )
        async with self.user_client(actor) as user_medplum:
            try:
                await medplum_side.resend(
                    user_medplum, reference, state.subscription_id, interaction
                )
            except MedplumError as error:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "UPDATE starvit.ops_actions SET outcome = 'failed', detail = %s "
                        "WHERE id = %s",
                        (error.error_code, action_id),
                    )
                code = "forbidden" if error.status_code in (401, 403) else error.error_code
                raise ActionRefused(code, 403 if code == "forbidden" else 502) from None
        return ActionResult(action="resend", status="done", affected=1, action_id=action_id)
