"""Connection settings of the Medplum client (the lead maps ``app.settings.Settings`` onto it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MedplumClientConfig:
    """Everything :class:`~app.integrations.medplum.client.MedplumClient` needs to reach Medplum.

    ``base_url`` is the server root (``http://127.0.0.1:8103/``); FHIR lives under ``fhir/R4/``,
    OAuth under ``oauth2/`` and the sign-in under ``auth/``. ``allowed_hosts`` lists extra
    ``host`` or ``host:port`` entries the client may call (a ``host`` without a port means the
    scheme's default port); anything else is refused before a socket opens.
    """

    base_url: str
    client_id: str
    # Empty for a public app (a user signing in with PKCE has no client secret).
    client_secret: str = field(default="", repr=False)
    allowed_hosts: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # The whole of one request (connect, send, wait, read) is abandoned after this many
    # seconds, so an answer that never comes costs this and not a stall (a slow trickle would
    # otherwise renew the read timeout with every chunk).
    request_deadline: float = 20.0
    max_connections: int = 20
    max_attempts: int = 5
    max_retry_wait_seconds: float = 30.0
    # Medplum tokens live one hour, with no refresh token, and every token request creates a
    # Login resource under a 160/min auth rate limit: reuse a token until shortly before expiry.
    token_refresh_margin_seconds: float = 300.0
    trace_id_header: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("MedplumClientConfig.base_url must be an absolute http(s) URL")
        if not self.client_id:
            raise ValueError("MedplumClientConfig.client_id is required")
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.request_deadline <= 0:
            raise ValueError("MedplumClientConfig timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("MedplumClientConfig.max_connections must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("MedplumClientConfig.max_attempts must be at least 1")
        if self.max_retry_wait_seconds < 0 or self.token_refresh_margin_seconds < 0:
            raise ValueError("MedplumClientConfig waits and margins must not be negative")

    @property
    def root_url(self) -> str:
        """``base_url`` with exactly one trailing slash."""
        return self.base_url.rstrip("/") + "/"

    @property
    def fhir_base_url(self) -> str:
        return self.root_url + "fhir/R4/"

    @property
    def token_url(self) -> str:
        return self.root_url + "oauth2/token"
