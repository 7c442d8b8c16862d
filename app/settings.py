"""One settings object for the whole service, read from the environment (prefix ``STARVIT_``)
and an optional ``.env`` file.

Invalid configuration must stop the process with a message that names the variable, never a
stack trace: :func:`load_settings` turns pydantic's errors into :class:`ConfigurationError`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "STARVIT_"


class ConfigurationError(Exception):
    """Raised when the environment does not describe a runnable service."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- PostgreSQL (non-PHI state only: event keys, jobs, watermarks, Subscription health) ---
    # Empty means "start the embedded PostgreSQL in embedded_pg_dir".
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("STARVIT_DATABASE_URL", "DATABASE_URL")
    )
    embedded_pg_dir: Path = Path("var/pgdata")
    db_pool_max_size: int = Field(default=10, ge=1, le=200)

    # --- Medplum ---
    medplum_base_url: str = "http://127.0.0.1:8103/"
    medplum_client_id: str = "starvit-service"
    medplum_client_secret: SecretStr | None = None
    # Extra hosts (host or host:port) the service may call besides medplum_base_url's host.
    medplum_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    medplum_connect_timeout: float = Field(default=5.0, gt=0)
    medplum_read_timeout: float = Field(default=30.0, gt=0)
    medplum_max_retry_wait: float = Field(default=30.0, gt=0)
    # The project's `transaction-bundles` feature: when off, writes are sent as a batch of
    # conditional creates that heal on retry instead of one atomic transaction.
    medplum_transactions: bool = True
    # Inbound Medplum access tokens (partners, ops users, researchers) are verified locally
    # against <medplum_base_url>/.well-known/jwks.json. The issuer defaults to the base URL
    # (Medplum's default `iss`); clock skew tolerated on `exp`/`nbf`, in seconds.
    medplum_token_issuer: str | None = None
    medplum_token_leeway_seconds: float = Field(default=30.0, ge=0, le=300)

    # --- Rest-hook receiver ---
    # Several active secrets allow rotation; an empty one is refused at start.
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list[SecretStr])
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Failed-signature requests allowed per client address per minute before 429 (abuse control;
    # genuine Medplum deliveries are signed and never counted). The counter is shared by every
    # receiver process through PostgreSQL (starvit.signature_failures).
    bad_signature_limit_per_minute: int = Field(default=60, ge=1)
    # Proxies (IP addresses or CIDR networks) whose X-Forwarded-For is believed: the client a
    # limit applies to is then the address the nearest trusted proxy reports. Empty: the peer
    # address is the client, and X-Forwarded-For is ignored (anyone can send it).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    # The whole request body must arrive within this many seconds of the request head (a body
    # trickled a byte at a time would otherwise hold a connection and a task indefinitely).
    body_read_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Processed event keys older than this are deleted by the worker's housekeeping; failed
    # ones (the dead letter) and queued ones stay. Never shorter than the Task expiry: a delete
    # finds its patient through the key of the resource's earlier version.
    event_key_retention_days: int = Field(default=30, ge=1, le=3650)
    # Public URL Medplum posts to (written into the generated Subscriptions).
    receiver_url: str = "http://127.0.0.1:8000/v1/medplum/notifications"
    # Medplum's `subscription-max-attempts` on every generated Subscription: the retries of one
    # event after its first POST (Medplum's default is 4, hard cap 19). The backoff starts at
    # 20 s and doubles (capped at 8 h), so 4 retries give up after about 5 minutes, while 12
    # ride out roughly a day of receiver outage (20 s x (2^11 - 1) + 8 h, about 19 h) before an
    # event is dropped and left to the reconciliation sweep.
    subscription_max_attempts: int = Field(default=12, ge=1, le=19)

    # --- Worker ---
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    job_max_attempts: int = Field(default=8, ge=1, le=50)
    # 0 turns the worker's periodic sweep off (run `starvit sweep` from a scheduler instead).
    sweep_interval_seconds: int = Field(default=60, ge=0)
    # How far back the very first sweep of a bot looks (later sweeps start at the watermark).
    sweep_initial_lookback_hours: int = Field(default=24, ge=1)
    task_due_days: int = Field(default=7, ge=1)
    task_expiry_days: int = Field(default=30, ge=1)
    # Urgent suggestions (hypertensive crisis, an AKI-like creatinine rise) are due in hours,
    # never expire, and are escalated once overdue: to this reference (a PractitionerRole,
    # CareTeam, Group or Organization; empty: the Task is raised to priority "stat" only).
    urgent_task_due_hours: int = Field(default=4, ge=1, le=168)
    escalation_target: str = ""
    # Per protocol ("<bot>.<slot>" -> days): how long a rejected suggestion stays snoozed,
    # overriding the protocol's declared period (JSON, e.g. {"obesity.weight-management": 365}).
    suggestion_snooze_days: dict[str, int] = Field(default_factory=dict)
    # Who counts as a clinician for approving or rejecting suggestions: a Practitioner with an
    # active PractitionerRole carrying one of these codes (system|code). SNOMED CT 158965000
    # "Medical practitioner" is the provider app's "Doctor" performer type.
    clinician_role_codes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "http://snomed.info/sct|158965000",
            "http://terminology.hl7.org/CodeSystem/practitioner-role|doctor",
        ]
    )

    # --- Clinician decisions: who may decide which suggestion ---
    # "project": any clinician of the project may decide any review Task (a small practice).
    # "related": only a clinician related to the Task's patient: the Task's owner (as assigned
    # before the decision, not by the decider), the patient's general practitioner, or a
    # participant of an active CareTeam of the patient.
    decision_scope: Literal["project", "related"] = "project"

    # --- Reliability: never stopping silently (docs/backend/ASYNC_JOBS_ETL.md) ---
    # How long the receiver's intake waits for a database connection before it answers 503 (well
    # under Medplum's 120 s delivery timeout; Medplum redelivers a 503).
    intake_acquire_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    # How often each worker process writes its heartbeat row (starvit.worker_heartbeats).
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    # How long a worker keeps reconnecting to an unreachable database before it gives up and
    # exits non-zero (its supervisor or the platform then restarts it). 0: never give up.
    worker_reconnect_limit_seconds: float = Field(default=600.0, ge=0)
    # A worker whose procrastinate heartbeat is this old is dead: its running jobs go back to
    # the queue (checked every few seconds by every live worker).
    job_stalled_seconds: float = Field(default=10.0, ge=2, le=3600)
    # The first retry of a failed job waits this long, doubling per attempt (capped at 5 min).
    job_retry_base_seconds: float = Field(default=2.0, gt=0, le=300)
    # Dead letters that failed for a transient reason (Medplum unreachable, 5xx, rate limited)
    # are given another chance by the worker on its own: checked every interval (0: never),
    # each one first after `dead_letter_retry_after_seconds` since it failed, doubling per
    # round, at most `dead_letter_max_auto_retries` times; then it stays failed for ops.
    dead_letter_retry_interval_seconds: int = Field(default=300, ge=0)
    dead_letter_retry_after_seconds: float = Field(default=600.0, ge=0)
    dead_letter_max_auto_retries: int = Field(default=6, ge=0, le=50)
    # The sweep reads resources last updated at least this long ago (a write committed late can
    # carry an earlier `_lastUpdated`), at most `sweep_max_pages` pages of `sweep_page_size` per
    # handler and run, and resumes where it stopped.
    sweep_settle_seconds: float = Field(default=30.0, ge=0, le=3600)
    sweep_page_size: int = Field(default=500, ge=10, le=1000)
    sweep_max_pages: int = Field(default=20, ge=1, le=1000)
    # Every Medplum call is abandoned after this many seconds, whatever the socket does (a lost
    # answer costs this, not a stall); the client's retries then apply to safe calls.
    medplum_request_deadline: float = Field(default=20.0, gt=0, le=300)
    # --- Partner bundle API (POST /v1/bundles) ---
    # The partner registry (JSON; docs/PARTNERS.md): client id -> tenant, resource types and
    # interactions, limits. Unset: no partner is registered and every partner request is refused.
    partner_registry: Path | None = None
    # How far in the future a clinical time (effective, issued, recorded...) may lie: clocks of
    # devices and laboratories drift.
    partner_future_tolerance_minutes: int = Field(default=5, ge=0, le=1440)
    # --- Ops dashboard (app/ops) ---
    # Signs the dashboard's session cookies; without it the dashboard's sign-in is off (its
    # pages and /v1/ops answer 503) and /metrics needs the metrics token.
    ops_session_secret: SecretStr | None = None
    # The public app (authorization code + PKCE) ops users sign in to, in Medplum.
    ops_client_id: str = "starvit-ops"
    # The dashboard's public base URL (the OAuth redirect is <url>/ops/callback); empty: the
    # URL the request came to.
    ops_public_url: str | None = None
    # Medplum AccessPolicies (references or ids) whose holders are ops users.
    ops_access_policies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["AccessPolicy/ops-policy"]
    )
    ops_session_hours: int = Field(default=8, ge=1, le=24)
    # A bearer token Prometheus scrapes /metrics with (an ops session works too).
    metrics_token: SecretStr | None = None

    # --- Observability ---
    otel_exporter: Literal["none", "otlp", "console"] = "none"
    otel_endpoint: str | None = None
    service_name: str = "starvit"

    # --- Medplum quota: what each event spends and how fast the workers may spend it ---
    # Per-event AuditEvents in Medplum: "failures" writes one only for an event whose action
    # failed or was refused (outcome 4); a success is recorded by its Provenance and every
    # event's outcome by the events table. "all" writes one per acted-on event (140 points).
    medplum_audit_events: Literal["failures", "all"] = "failures"
    # The share of the FHIR quota window the workers keep in reserve: they slow down when the
    # points left fall under it (0 turns pacing off; a 429 still waits as Medplum says).
    medplum_quota_reserve: float = Field(default=0.1, ge=0, lt=1)
    # Coalescing: events of one patient and handler arriving within this many milliseconds of
    # each other are computed once, on the newest state (0 turns it off).
    coalesce_window_ms: int = Field(default=0, ge=0, le=60_000)
    # Handlers whose result depends on the patient's newest data, not on which of the
    # patient's resources was notified: their events coalesce per patient (see
    # app/events/coalesce.py); every handler's events coalesce per resource.
    coalesce_by_patient: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    # --- Research zone (de-identified; docs/RESEARCH.md) ---
    research_dir: Path = Path("var/research")  # DuckDB file, graph, export files
    research_key_file: Path | None = None  # else STARVIT_RESEARCH_KEY(+_VERSION) from the env
    # The research API accepts Medplum access tokens issued to these client ids (``aud``); the
    # researcher role is held by these Medplum profiles (Practitioner/<id>) and by these
    # ClientApplications acting as themselves.
    research_audiences: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    research_profiles: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    research_client_ids: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    research_requests_per_minute: int = Field(default=60, ge=1, le=10_000)
    research_k: int = Field(default=11, ge=2, le=1000)  # k-anonymity threshold of the report
    research_bigquery_dataset: str | None = None  # <project>.<dataset>: BigQuery, not DuckDB
    research_bigquery_location: str | None = None
    research_bigquery_endpoint: str | None = None  # a local stand-in only
    research_tigergraph_host: str | None = None  # set: TigerGraph, not LadybugDB
    research_tigergraph_graph: str = "starvit_research"
    research_tigergraph_username: str = "starvit_research"
    research_tigergraph_password: SecretStr | None = None
    research_tigergraph_restpp_port: int = Field(default=443, ge=1, le=65535)
    research_tigergraph_gs_port: int = Field(default=443, ge=1, le=65535)

    @field_validator(
        "research_audiences", "research_profiles", "research_client_ids", mode="before"
    )
    @classmethod
    def _parse_research_lists(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _parse_secrets(cls, value: object) -> object:
        items = _split_csv(value)
        if isinstance(items, list):
            checked = cast("list[object]", items)
            for item in checked:
                if isinstance(item, str) and not item.strip():
                    raise ValueError("an empty webhook secret would accept any signature")
            return checked
        return items

    @field_validator("sweep_interval_seconds")
    @classmethod
    def _sweep_interval(cls, value: int) -> int:
        if 0 < value < 5:
            raise ValueError("must be 0 (off) or at least 5 seconds")
        return value

    @field_validator(
        "medplum_allowed_hosts",
        "clinician_role_codes",
        "trusted_proxies",
        "coalesce_by_patient",
        "ops_access_policies",
        mode="before",
    )
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError("each entry must be an IP address or a CIDR network") from None
        return value

    @field_validator("medplum_base_url", "receiver_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("medplum_base_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if urlsplit(value).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URL")
        return value

    # --- Derived views ---
    @property
    def webhook_secret_values(self) -> tuple[bytes, ...]:
        return tuple(secret.get_secret_value().encode() for secret in self.webhook_secrets)

    @property
    def event_key_retention(self) -> int:
        """Days processed event keys are kept: the configured retention, but never less than a
        day beyond the Task expiry (an open suggestion's delete must still find its patient)."""
        return max(self.event_key_retention_days, self.task_expiry_days + 1)

    @property
    def token_issuer(self) -> str:
        """The ``iss`` every accepted Medplum access token must carry."""
        return self.medplum_token_issuer or self.medplum_base_url

    @property
    def service_author(self) -> str:
        """The ``meta.author`` Medplum records on the service's own writes."""
        return f"ClientApplication/{self.medplum_client_id}"

    def require_webhook_secrets(self) -> None:
        if not self.webhook_secrets:
            raise ConfigurationError(
                f"{ENV_PREFIX}WEBHOOK_SECRETS: at least one rest-hook signing secret is required "
                "(comma-separated for rotation)"
            )

    def require_medplum_credentials(self) -> SecretStr:
        if self.medplum_client_secret is None or not self.medplum_client_secret.get_secret_value():
            raise ConfigurationError(
                f"{ENV_PREFIX}MEDPLUM_CLIENT_SECRET: the service's ClientApplication secret is "
                "required to call Medplum"
            )
        return self.medplum_client_secret


def _describe(error: ValidationError) -> str:
    lines: list[str] = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        name = field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, raising :class:`ConfigurationError` with a readable message."""
    try:
        return Settings(**overrides)  # pyright: ignore[reportArgumentType]
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
