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

    # --- Observability ---
    otel_exporter: Literal["none", "otlp", "console"] = "none"
    otel_endpoint: str | None = None
    service_name: str = "starvit"

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
        "medplum_allowed_hosts", "clinician_role_codes", "trusted_proxies", mode="before"
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
