"""Where the bearer token of every Medplum request comes from.

:class:`~app.integrations.medplum.client.MedplumClient` asks its :class:`TokenSource` for a token
before each request and, when Medplum answers 401, tells it which token failed
(``invalidate``) and asks again once. The sources:

* :class:`ClientCredentialsTokenProvider`: the service's ClientApplication (OAuth2 client
  credentials), the default.
* :class:`AuthorizationCodeTokenSource`: a user signed in the way the Medplum app does it on a
  real server (``medplum-facts.md`` §7 "Sign-in"): ``POST /auth/login`` with the email, the
  password and a PKCE challenge answers ``{login, code}`` (or, for a user with several
  profiles, ``{login, memberships}``, and ``POST /auth/profile`` picks one), then
  ``POST /oauth2/token`` exchanges the code with ``grant_type=authorization_code`` and the PKCE
  verifier. Built by :class:`PasswordSignIn`.
* :class:`StaticTokenSource`: one fixed token (tests).

Medplum's access tokens live one hour and every token request creates a ``Login`` resource
under a 160 requests a minute auth rate limit (``medplum-facts.md`` §3): tokens are cached,
renewed ``refresh_margin_seconds`` before they expire, and only one renewal is ever in flight:
concurrent callers wait on the same lock and then reuse the fresh token. Every request a source
sends goes through the client's own ``httpx.AsyncClient``, so through its outbound allowlist.

Nothing here puts a password, a token, a code or a verifier into an exception or a log event.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import httpx
import jwt

from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    dumps,
    get_number,
    get_object,
    get_objects,
    get_str,
    loads_object,
)
from app.integrations.medplum.config import MedplumClientConfig
from app.integrations.medplum.errors import (
    MedplumError,
    MedplumForbidden,
    MedplumSignInRefused,
    MedplumUnavailable,
    OperationOutcomeSummary,
    sanitise_diagnostics,
)
from app.integrations.medplum.responses import error_for_response, is_success
from app.integrations.medplum.retry import RetryPolicy

type Clock = Callable[[], float]

# The ``operation`` of every error raised while obtaining a token: the client does not retry
# these a second time (the source has already retried what was worth retrying).
TOKEN_OPERATION = "token"  # noqa: S105 - an operation name, not a credential
SIGN_IN_OPERATION = "sign-in"
AUTH_OPERATIONS = frozenset({TOKEN_OPERATION, SIGN_IN_OPERATION})

# Without expires_in or a readable exp claim, assume a short life rather than Medplum's hour.
_FALLBACK_LIFETIME_SECONDS = 60.0
# Never hand out a token in its last seconds: the request still has to reach Medplum.
_EXPIRY_SAFETY_SECONDS = 10.0
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: float
    refresh_at: float
    expires_at: float


@runtime_checkable
class TokenSource(Protocol):
    """What :class:`~app.integrations.medplum.client.MedplumClient` needs from its credentials."""

    @property
    def token_requests(self) -> int:
        """HTTP requests sent to obtain tokens (retries included), for benchmarks."""
        ...

    async def get_token(self) -> str:
        """A token good for at least the next request."""
        ...

    def invalidate(self, token: str | None = None) -> None:
        """Medplum refused ``token`` (401): forget it if it is still the current one."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TokenContext:
    """What a token source built by the client gets: the client's allowlisted HTTP client (so
    token requests obey the same outbound allowlist and timeouts), its settings, its retry
    policy and its clock."""

    http: httpx.AsyncClient
    config: MedplumClientConfig
    retry_policy: RetryPolicy
    clock: Clock = time.monotonic


type TokenSourceFactory = Callable[[TokenContext], TokenSource]


# --- helpers -----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of a ``code_verifier`` (RFC 7636 §4.2)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` for S256: 64 characters of
    ``[A-Za-z0-9_-]`` (RFC 7636 allows 43 to 128 unreserved characters)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier)


def unverified_claims(token: str) -> JSONObject:
    """The payload of a JWT, read without verifying it. Only for scheduling renewals and for
    showing who signed in: Medplum verifies the token on every request."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        raw = base64.urlsafe_b64decode(payload)
    except ValueError:
        return {}
    return loads_object(raw) or {}


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


def _oauth_error_text(response: httpx.Response) -> str:
    """``invalid_grant: Invalid code`` from an OAuth error body: fixed server texts that say why
    (the request's own values are never echoed in them; sanitised all the same)."""
    body = loads_object(response.content)
    if body is None:
        return ""
    error = get_str(body, "error")
    description = get_str(body, "error_description")
    return ": ".join(sanitise_diagnostics(part) for part in (error, description) if part)


# --- the cache every renewing source shares ----------------------------------------------------


class _RenewingTokenSource:
    """A cached token renewed ``margin`` before it expires (never later than half-way through
    a short-lived one), one renewal at a time. Subclasses say how to obtain a token."""

    def __init__(
        self, *, refresh_margin_seconds: float, retry_policy: RetryPolicy, clock: Clock
    ) -> None:
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
                self._token = await self._obtain()
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

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the Medplum client."""

    async def _obtain(self) -> AccessToken:
        raise NotImplementedError

    def _access_token(self, value: str, expires_in: float | None, started: float) -> AccessToken:
        lifetime = expires_in if expires_in and expires_in > 0 else _lifetime_from_claims(value)
        # Renew `margin` early, but never later than half-way through a short-lived token.
        refresh_after = max(lifetime - self._margin, lifetime / 2)
        return AccessToken(
            value=value,
            obtained_at=started,
            refresh_at=started + refresh_after,
            expires_at=started + lifetime,
        )


# --- client credentials (the service) ----------------------------------------------------------


class ClientCredentialsTokenProvider(_RenewingTokenSource):
    """OAuth2 client credentials for a ClientApplication (the service's identity). Medplum
    gives no refresh token for this grant: a new token is requested before the old expires."""

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
        super().__init__(
            refresh_margin_seconds=refresh_margin_seconds, retry_policy=retry_policy, clock=clock
        )
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret

    async def _obtain(self) -> AccessToken:
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
                headers={"Accept": _JSON},
            )
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum token endpoint unreachable",
                operation=TOKEN_OPERATION,
                attempts=attempt_number,
                cause=type(error).__name__,
            ) from None
        if not is_success(response.status_code):
            # The OAuth error body ({"error": "invalid_client", ...}) holds nothing we keep.
            error = error_for_response(
                response, operation=TOKEN_OPERATION, resource_type=None, attempts=attempt_number
            )
            if response.status_code == 400:
                raise MedplumForbidden(
                    "Medplum refused the client credentials",
                    status_code=400,
                    operation=TOKEN_OPERATION,
                    attempts=attempt_number,
                )
            raise error
        body = loads_object(response.content)
        value = get_str(body, "access_token") if body is not None else None
        if not value:
            raise MedplumError(
                "Medplum token response has no access_token",
                status_code=response.status_code,
                operation=TOKEN_OPERATION,
                attempts=attempt_number,
            )
        expires_in = get_number(body, "expires_in") if body is not None else None
        return self._access_token(value, expires_in, started)


def client_credentials(context: TokenContext) -> ClientCredentialsTokenProvider:
    """The default token source: the client id and secret of the client's configuration."""
    config = context.config
    return ClientCredentialsTokenProvider(
        http=context.http,
        token_url=config.token_url,
        client_id=config.client_id,
        client_secret=config.client_secret,
        refresh_margin_seconds=config.token_refresh_margin_seconds,
        retry_policy=context.retry_policy,
        clock=context.clock,
    )


# --- a signed-in user (authorization code + PKCE) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordSignIn:
    """How a user signs in: pass it as ``MedplumClient(config, token_source=PasswordSignIn(...))``.

    ``client_id`` is the ClientApplication the user signs in to (default: the configuration's
    ``client_id``; a public app has no secret). ``profile`` chooses among several profiles of
    the user (a ProjectMembership id or a profile reference such as ``Practitioner/<id>``);
    without it a user with several profiles cannot sign in. ``scope`` with ``offline_access``
    makes Medplum issue a refresh token, used to renew; without one the source signs in again
    (so it keeps the password in memory for its lifetime).
    """

    email: str
    password: str = field(repr=False)
    client_id: str | None = None
    scope: str = "openid"
    profile: str | None = None
    project_id: str | None = None
    redirect_uri: str | None = None

    def __call__(self, context: TokenContext) -> AuthorizationCodeTokenSource:
        return AuthorizationCodeTokenSource(context, self)


@dataclass(frozen=True, slots=True)
class _Grant:
    """What the last token response said besides the token itself."""

    refresh_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    project: str | None = None
    claims: JSONObject = field(default_factory=dict[str, JSONValue], repr=False)


class AuthorizationCodeTokenSource(_RenewingTokenSource):
    """Tokens of a signed-in user (see the module docstring for the flow). Before a token
    expires it is renewed with the refresh token when Medplum gave one, else by signing in
    again. A refused sign-in raises :class:`MedplumSignInRefused` (not retried); network
    failures, 5xx and 429 restart the whole sign-in (an authorization code is single-use, so a
    half-done exchange is never replayed) within the client's retry policy."""

    def __init__(self, context: TokenContext, sign_in: PasswordSignIn) -> None:
        super().__init__(
            refresh_margin_seconds=context.config.token_refresh_margin_seconds,
            retry_policy=context.retry_policy,
            clock=context.clock,
        )
        self._http = context.http
        self._sign_in = sign_in
        self._client_id = sign_in.client_id or context.config.client_id
        root = context.config.root_url
        self._login_url = root + "auth/login"
        self._profile_url = root + "auth/profile"
        self._token_url = context.config.token_url
        self._grant = _Grant()

    @property
    def profile(self) -> str | None:
        """The signed-in profile (``Practitioner/<id>``), from the token response or claims."""
        return self._grant.profile or get_str(self._grant.claims, "profile")

    @property
    def project(self) -> str | None:
        return self._grant.project

    @property
    def claims(self) -> JSONObject:
        """The current access token's claims (unverified; empty before the first sign-in)."""
        return dict(self._grant.claims)

    async def _obtain(self) -> AccessToken:
        if self._grant.refresh_token:
            try:
                return await self._with_retries(self._refresh)
            except MedplumError as error:
                if error.retryable:
                    raise
                # Refresh token expired or revoked: a fresh sign-in may still work.
                self._grant = _Grant()
        return await self._with_retries(self._sign_in_once)

    async def _with_retries(self, step: Callable[[int], Awaitable[AccessToken]]) -> AccessToken:
        async for attempt in self._retry.retrying():
            with attempt:
                return await step(attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _sign_in_once(self, attempt: int) -> AccessToken:
        verifier, challenge = pkce_pair()
        request: dict[str, object] = {
            "email": self._sign_in.email,
            "password": self._sign_in.password,
            "clientId": self._client_id,
            "scope": self._sign_in.scope,
            "codeChallenge": challenge,
            "codeChallengeMethod": "S256",
        }
        if self._sign_in.project_id:
            request["projectId"] = self._sign_in.project_id
        answer = await self._post_json(self._login_url, request, attempt)
        code = await self._code_of(answer, attempt)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": self._client_id,
        }
        if self._sign_in.redirect_uri:
            form["redirect_uri"] = self._sign_in.redirect_uri
        return await self._request_token(form, attempt, "Medplum refused the authorization code")

    async def _refresh(self, attempt: int) -> AccessToken:
        form = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "refresh_token": self._grant.refresh_token or "",
        }
        return await self._request_token(form, attempt, "Medplum refused the refresh token")

    async def _code_of(self, answer: JSONObject, attempt: int) -> str:
        code = get_str(answer, "code")
        if code:
            return code
        if answer.get("mfaRequired") or answer.get("mfaEnrollRequired"):
            raise MedplumSignInRefused(
                "Medplum asks this user for a second factor (MFA), which this sign-in does not "
                "support",
                operation=SIGN_IN_OPERATION,
                attempts=attempt,
            )
        login = get_str(answer, "login")
        memberships = get_objects(answer, "memberships")
        if login and memberships:
            chosen = await self._post_json(
                self._profile_url,
                {"login": login, "profile": self._choose(memberships, attempt)},
                attempt,
            )
            code = get_str(chosen, "code")
            if code:
                return code
        raise MedplumError(
            "Medplum's sign-in answered without an authorization code",
            status_code=200,
            operation=SIGN_IN_OPERATION,
            attempts=attempt,
        )

    def _choose(self, memberships: list[JSONObject], attempt: int) -> str:
        """The ProjectMembership id to sign in with, among the user's profiles."""
        options: list[tuple[str, str | None]] = []
        for membership in memberships:
            membership_id = get_str(membership, "id")
            profile = get_object(membership, "profile")
            if membership_id:
                options.append((membership_id, get_str(profile, "reference") if profile else None))
        wanted = self._sign_in.profile
        if wanted is not None:
            for membership_id, reference in options:
                if wanted in (membership_id, reference):
                    return membership_id
        elif len(options) == 1:
            return options[0][0]
        shown = ", ".join(reference or membership_id for membership_id, reference in options)
        reason = (
            f"none of the user's {len(options)} profiles is {wanted}"
            if wanted is not None
            else f"the user has {len(options)} profiles; choose one with profile="
        )
        raise MedplumSignInRefused(
            f"Medplum sign-in: {reason} ({shown})", operation=SIGN_IN_OPERATION, attempts=attempt
        )

    async def _post_json(self, url: str, body: Mapping[str, object], attempt: int) -> JSONObject:
        self._token_requests += 1
        try:
            response = await self._http.post(
                url, content=dumps(body), headers={"Content-Type": _JSON, "Accept": _JSON}
            )
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum sign-in unreachable",
                operation=SIGN_IN_OPERATION,
                attempts=attempt,
                cause=type(error).__name__,
            ) from None
        if not is_success(response.status_code):
            error = error_for_response(
                response, operation=SIGN_IN_OPERATION, resource_type=None, attempts=attempt
            )
            if error.retryable:
                raise error
            # "Email or password is invalid", "User not found", ...: Medplum's own words.
            why = _outcome_text(error.operation_outcome)
            raise MedplumSignInRefused(
                "Medplum refused the sign-in" + (f": {why}" if why else ""),
                status_code=response.status_code,
                operation_outcome=error.operation_outcome,
                operation=SIGN_IN_OPERATION,
                attempts=attempt,
            )
        answer = loads_object(response.content)
        if answer is None:
            raise MedplumError(
                "Medplum's sign-in answered without JSON",
                status_code=response.status_code,
                operation=SIGN_IN_OPERATION,
                attempts=attempt,
            )
        return answer

    async def _request_token(self, form: dict[str, str], attempt: int, refused: str) -> AccessToken:
        self._token_requests += 1
        started = self._clock()
        try:
            response = await self._http.post(self._token_url, data=form, headers={"Accept": _JSON})
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum token endpoint unreachable",
                operation=TOKEN_OPERATION,
                attempts=attempt,
                cause=type(error).__name__,
            ) from None
        if not is_success(response.status_code):
            error = error_for_response(
                response, operation=TOKEN_OPERATION, resource_type=None, attempts=attempt
            )
            if error.retryable:
                raise error
            why = _oauth_error_text(response)
            raise MedplumSignInRefused(
                refused + (f" ({why})" if why else ""),
                status_code=response.status_code,
                operation=TOKEN_OPERATION,
                attempts=attempt,
            )
        body = loads_object(response.content) or {}
        value = get_str(body, "access_token")
        if not value:
            raise MedplumError(
                "Medplum token response has no access_token",
                status_code=response.status_code,
                operation=TOKEN_OPERATION,
                attempts=attempt,
            )
        profile = get_object(body, "profile")
        project = get_object(body, "project")
        self._grant = _Grant(
            refresh_token=get_str(body, "refresh_token"),
            profile=get_str(profile, "reference") if profile else None,
            project=get_str(project, "reference") if project else None,
            claims=unverified_claims(value),
        )
        return self._access_token(value, get_number(body, "expires_in"), started)


def _outcome_text(outcome: OperationOutcomeSummary | None) -> str:
    if outcome is None:
        return ""
    return "; ".join(outcome.diagnostics[:3])


# --- a fixed token (tests) ---------------------------------------------------------------------


class StaticTokenSource:
    """One token, never renewed: a 401 surfaces as :class:`MedplumForbidden`."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a static token must not be empty")
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenSource(token=...)"

    @property
    def token_requests(self) -> int:
        return 0

    async def get_token(self) -> str:
        return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Nothing to renew."""

    async def aclose(self) -> None:
        """Nothing to release."""
