"""The ops API's request and response models (the contract in ``contract/openapi.json``).

References, codes, statuses, times and counts only: nothing here can hold PHI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

_HANDLER = r"^[a-z0-9][a-z0-9-]{0,63}$"
_REFERENCE = r"^[A-Z][A-Za-z]{0,63}/[A-Za-z0-9.-]{1,64}$"


class TransmitAttempts(BaseModel):
    attempts: int = Field(description="Delivery attempts Medplum recorded (transmit AuditEvents).")
    failures: int
    http_codes: dict[str, int] = Field(
        description="Attempts per HTTP status; `network` when the POST got no answer."
    )
    auto_disabled: int = Field(description="AuditEvents with outcome 8 (Medplum switched it off).")
    last_attempt_at: datetime | None
    truncated: bool = Field(description="More attempts than were counted (300 are read).")


class HandlerPanel(BaseModel):
    handler: str
    subscription_id: str | None
    medplum_status: str = Field(
        description="active | off | error | requested | missing, as Medplum reports it now; "
        "`unknown` when Medplum could not be asked (then `recorded_status` is the last check)."
    )
    medplum_error: str | None = Field(description="Subscription.error, Medplum's own text.")
    recorded_status: str | None = Field(description="What the worker's health check last saw.")
    healthy: bool
    deliveries_per_minute: float = Field(description="Notifications per minute, last 15 minutes.")
    deliveries_last_hour: int
    resent_last_hour: int = Field(description="Deliveries caused by an ops $resend (not health).")
    duplicates_last_hour: int
    refused_last_hour: dict[str, int] = Field(description="Refused deliveries by reason.")
    last_delivery_at: datetime | None
    sweep_recovered_24h: int
    sweep_lag_seconds: float | None
    replayed_24h: int
    transmit: TransmitAttempts | None = Field(
        description="Medplum's side over the last hour; null when unavailable."
    )


class DeadLetterItem(BaseModel):
    event_id: int
    handler: str
    reference: str
    version_id: str
    error_code: str | None
    attempts: int
    received_at: datetime
    replays: int


class WorkerItem(BaseModel):
    worker_id: str
    last_heartbeat: datetime
    age_seconds: float
    alive: bool


class BudgetPanel(BaseModel):
    points_left: int
    window_resets_at: datetime | None


class ProcessingPanel(BaseModel):
    queue_depth: int
    oldest_waiting_seconds: float | None
    running: int
    retrying: int
    retried_last_hour: int
    dead_letters: int
    dead_letters_by_code: dict[str, int]
    processed_last_hour: int
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    medplum_round_trips_avg: float | None
    medplum_round_trips_p95: float | None
    quota_points_per_event: float | None = Field(
        description="Medplum quota points per event; null when not recorded."
    )
    budget: BudgetPanel | None = Field(description="The shared quota budget; null when absent.")
    workers: list[WorkerItem]


class AcceptanceRow(BaseModel):
    bot: str
    version: str
    approved: int
    rejected: int
    rejected_reasons: dict[str, int] = Field(description="Coded reasons only (`uncoded`).")
    expired: int
    withdrawn: int
    pending: int
    median_hours_to_decision: float | None


class MinutePointModel(BaseModel):
    minute: datetime
    deliveries: int
    refused: int
    failed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    backlog: int
    oldest_waiting_seconds: float | None


class Overview(BaseModel):
    generated_at: datetime
    medplum_reachable: bool
    handlers: list[HandlerPanel]
    unattributed_refusals_last_hour: dict[str, int] = Field(
        description="Refused deliveries that named no subscribed handler, by reason."
    )
    processing: ProcessingPanel
    acceptance: list[AcceptanceRow] | None = Field(description="Last 30 days; null if unknown.")


class DeadLetterList(BaseModel):
    items: list[DeadLetterItem]


class SeriesResponse(BaseModel):
    minutes: list[MinutePointModel]


class GapItem(BaseModel):
    handler: str
    window_start: datetime
    window_end: datetime
    changed_in_medplum: int
    reached_inbox: int
    recovered_by_sweep: int
    missing: list[str] = Field(description="Type/id/_history/version never received (50 at most).")
    truncated: bool


class GapResponse(BaseModel):
    gaps: list[GapItem]


class ActionItem(BaseModel):
    action_id: int
    at: datetime
    actor: str
    action: str
    handler: str | None
    target: str | None
    window_start: datetime | None
    window_end: datetime | None
    outcome: str
    detail: str | None
    affected: int


class ActionList(BaseModel):
    items: list[ActionItem]


class WhoAmI(BaseModel):
    profile: str
    role: Literal["ops"]
    csrf_token: str | None = Field(description="Send as X-CSRF-Token on actions (sessions only).")


# ------------------------------------------------------------------ actions


class _Confirmable(BaseModel):
    confirm: bool = Field(
        default=False,
        description="false: answer what the action would do (nothing changes); true: do it.",
    )


class ReplayDeadLetterRequest(_Confirmable):
    event_id: int = Field(ge=1, le=2**62)


class WindowRequest(_Confirmable):
    start: datetime
    end: datetime
    handler: str | None = Field(default=None, pattern=_HANDLER)

    @model_validator(mode="after")
    def _ordered(self) -> WindowRequest:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a time zone")
        if not self.start < self.end:
            raise ValueError("start must be before end")
        if (self.end - self.start).total_seconds() > 7 * 86400:
            raise ValueError("a window is at most 7 days")
        return self


class ReenableRequest(_Confirmable):
    handler: str = Field(pattern=_HANDLER)


class ResendRequest(_Confirmable):
    handler: str = Field(pattern=_HANDLER, description="Whose Subscription gets the resource.")
    reference: str = Field(pattern=_REFERENCE, description="Type/id of the resource.")
    interaction: Literal["create", "update"] = "update"


class ActionResult(BaseModel):
    action: str
    status: Literal["preview", "done"]
    affected: int = Field(description="Events (or resources) the action touches or touched.")
    detail: str | None = None
    action_id: int | None = Field(default=None, description="The audit record (when done).")
