"""Invalid configuration stops the service with a message naming the variable, never a trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.settings import ConfigurationError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No developer .env and no STARVIT_* variables from the calling shell.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STARVIT_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.environment == "development"
    assert settings.otel_exporter == "none"
    assert settings.webhook_secrets == []
    assert settings.medplum_base_url == "http://127.0.0.1:8103/"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STARVIT_LOG_LEVEL", "LOUD"),
        ("STARVIT_DB_POOL_MAX_SIZE", "0"),
        ("STARVIT_MAX_BODY_BYTES", "not-a-number"),
        ("STARVIT_MEDPLUM_BASE_URL", "ftp://medplum.example"),
        ("STARVIT_OTEL_EXPORTER", "zipkin"),
        ("STARVIT_MEDPLUM_TRANSACTIONS", "maybe"),
    ],
)
def test_invalid_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    assert variable in message
    assert "Traceback" not in message
    assert caught.value.__cause__ is None


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STARVIT_LOG_LEVEL=DEBUG\nSTARVIT_WEBHOOK_SECRETS=a,b\n")
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.webhook_secret_values == (b"a", b"b")


def test_several_problems_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARVIT_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("STARVIT_WORKER_CONCURRENCY", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "STARVIT_LOG_LEVEL" in message
    assert "STARVIT_WORKER_CONCURRENCY" in message


def test_database_url_must_be_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://db/starvit")
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        load_settings()


def test_database_url_from_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/starvit")
    assert load_settings().database_url == "postgresql://db/starvit"
    monkeypatch.setenv("DATABASE_URL", "")
    assert load_settings().database_url is None


class TestWebhookSecrets:
    def test_comma_separated_for_rotation(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STARVIT_WEBHOOK_SECRETS", "new-secret, old-secret")
        settings = load_settings()
        assert settings.webhook_secret_values == (b"new-secret", b"old-secret")
        settings.require_webhook_secrets()

    def test_empty_secret_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="STARVIT_WEBHOOK_SECRETS"):
            load_settings(webhook_secrets=["s1", "  "])

    def test_blank_variable_leaves_no_secret_and_is_refused_at_start(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("STARVIT_WEBHOOK_SECRETS", " , ")
        settings = load_settings()
        assert settings.webhook_secret_values == ()
        with pytest.raises(ConfigurationError, match="STARVIT_WEBHOOK_SECRETS"):
            settings.require_webhook_secrets()

    def test_secrets_do_not_show_in_repr(self) -> None:
        settings = load_settings(webhook_secrets="very-secret-value", medplum_client_secret="cs")
        assert "very-secret-value" not in repr(settings)
        assert "'cs'" not in repr(settings)


def test_medplum_secret_required_when_calling_medplum() -> None:
    with pytest.raises(ConfigurationError, match="STARVIT_MEDPLUM_CLIENT_SECRET"):
        load_settings().require_medplum_credentials()
    secret = load_settings(medplum_client_secret="x").require_medplum_credentials()
    assert secret.get_secret_value() == "x"


def test_medplum_base_url_gets_trailing_slash() -> None:
    assert load_settings(medplum_base_url="https://api.medplum.com").medplum_base_url == (
        "https://api.medplum.com/"
    )


def test_allowed_hosts_from_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARVIT_MEDPLUM_ALLOWED_HOSTS", "storage.example:443, cdn.example")
    assert load_settings().medplum_allowed_hosts == ["storage.example:443", "cdn.example"]


def test_the_sweep_interval_is_off_or_at_least_five_seconds() -> None:
    assert load_settings(sweep_interval_seconds=0).sweep_interval_seconds == 0
    assert load_settings(sweep_interval_seconds=5).sweep_interval_seconds == 5
    with pytest.raises(ConfigurationError, match="STARVIT_SWEEP_INTERVAL_SECONDS"):
        load_settings(sweep_interval_seconds=3)
