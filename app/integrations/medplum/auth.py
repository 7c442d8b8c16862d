"""OAuth2 client credentials for the service's Medplum ClientApplication.

Medplum issues one-hour access tokens with no refresh token; every token request creates a
``Login`` resource and auth routes are limited to 160 requests a minute per IP
(``medplum-facts.md`` §3). So the token is cached, renewed ``refresh_margin_seconds`` before
it expires, and only one renewal is ever in flight: concurrent callers wait on the same lock
and then reuse the fresh token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import jwt

from app.domain.fhir_json import get_number, get_str, loads_object
from app.integrations.medplum.errors import MedplumError, MedplumForbidden, MedplumUnavailable
from app.integrations.medplum.responses import error_for_response, is_success
from app.integrations.medplum.retry import RetryPolicy

type Clock = Callable[[], float]

# Without expires_in or a readable exp claim, assume a short life rather than Medplum's hour.
_FALLBACK_LIFETIME_SECONDS = 60.0
# Never hand out a token in its last seconds: the request still has to reach Medplum.
_EXPIRY_SAFETY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: float
    refresh_at: float
    expires_at: float


class ClientCredentialsTokenProvider:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        token_url: str,
        client_id: str,
        client_secret: str,
        refresh_margin_seconds: float,
        retry_policy: RetryPolicy,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._margin = refresh_margin_seconds
        self._retry = retry_policy
        self._clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self._token_requests = 0

    @property
    def token_requests(self) -> int:
        """Token requests sent to Medplum (including retries), for benchmarks."""
        return self._token_requests

    @property
    def cached_token(self) -> AccessToken | None:
        return self._token

    async def get_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        async with self._lock:
            # Whoever held the lock before us may have renewed it already.
            token = self._token
            now = self._clock()
            if token is not None and now < token.refresh_at:
                return token.value
            try:
                self._token = await self._fetch_with_retries()
            except MedplumError as error:
                if (
                    token is not None
                    and not isinstance(error, MedplumForbidden)
                    and now < token.expires_at - _EXPIRY_SAFETY_SECONDS
                ):
                    # Early renewal failed (Medplum briefly unavailable) but the current
                    # token is still good: keep working with it, renew on the next call.
                    return token.value
                raise
            return self._token.value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (after a 401). With ``token``, only if it is still the
        cached one, so twenty concurrent 401s cause one renewal, not twenty."""
        current = self._token
        if current is not None and (token is None or current.value == token):
            self._token = None

    async def _fetch_with_retries(self) -> AccessToken:
        async for attempt in self._retry.retrying():
            with attempt:
                return await self._fetch(attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _fetch(self, attempt_number: int) -> AccessToken:
        self._token_requests += 1
        started = self._clock()
        try:
            response = await self._http.post(
                self._token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                },
                headers={"Accept": "application/json"},
            )
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum token endpoint unreachable",
                operation="token",
                attempts=attempt_number,
                cause=type(error).__name__,
            ) from None
        if not is_success(response.status_code):
            # The OAuth error body ({"error": "invalid_client", ...}) holds nothing we keep.
            error = error_for_response(
                response, operation="token", resource_type=None, attempts=attempt_number
            )
            if response.status_code == 400:
                raise MedplumForbidden(
                    "Medplum refused the client credentials",
                    status_code=400,
                    operation="token",
                    attempts=attempt_number,
                )
            raise error
        body = loads_object(response.content)
        value = get_str(body, "access_token") if body is not None else None
        if not value:
            raise MedplumError(
                "Medplum token response has no access_token",
                status_code=response.status_code,
                operation="token",
                attempts=attempt_number,
            )
        expires_in = get_number(body, "expires_in") if body is not None else None
        lifetime = expires_in if expires_in and expires_in > 0 else _lifetime_from_claims(value)
        # Renew `margin` early, but never later than half-way through a short-lived token.
        refresh_after = max(lifetime - self._margin, lifetime / 2)
        return AccessToken(
            value=value,
            obtained_at=started,
            refresh_at=started + refresh_after,
            expires_at=started + lifetime,
        )


def _lifetime_from_claims(token: str) -> float:
    """Seconds left according to the JWT ``exp`` (unverified: Medplum verifies it, we only
    schedule the renewal)."""
    try:
        claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return _FALLBACK_LIFETIME_SECONDS
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return max(float(exp) - time.time(), 0.0) or _FALLBACK_LIFETIME_SECONDS
    return _FALLBACK_LIFETIME_SECONDS
