"""Who may see the ops dashboard: sign-in through Medplum, the ops role, sessions, CSRF.

* **Sign-in**: the OAuth authorization code with PKCE (S256) against Medplum. ``/ops/login``
  keeps the state and the code verifier in a short-lived signed cookie and sends the browser to
  Medplum's ``/oauth2/authorize``; Medplum signs the user in on its own page and sends the
  browser back to ``/ops/callback`` with a one-time code, which the service redeems with the
  verifier.
* **Role**: Medplum says who the user is (``GET /auth/me`` with the user's token): ops are users
  (``Practitioner`` profiles) whose ProjectMembership carries one of the AccessPolicies named in
  ``STARVIT_OPS_ACCESS_POLICIES`` (by default ``AccessPolicy/ops-policy``). Clinicians,
  partners, researchers and patients are refused (403).
* **Session**: a cookie signed with ``STARVIT_OPS_SESSION_SECRET`` (itsdangerous), HttpOnly,
  SameSite=Lax, Secure on https, expiring with the Medplum token at the latest. It holds the
  profile reference, the Login id, the CSRF token and the user's Medplum access token (the
  actions Medplum itself authorises, such as ``$resend``, run as the user).
* **CSRF**: every action carries the session's CSRF token (a form field, or the
  ``X-CSRF-Token`` header on the JSON API), compared in constant time; a foreign ``Origin`` is
  refused as well.
* **API clients** may instead send ``Authorization: Bearer <Medplum access token>`` issued to the
  ops app: the token's audience must be the ops app and Medplum must accept it; the same role
  rule applies. Such requests carry no ambient credential, so no CSRF token is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.integrations.medplum import MedplumError
from app.integrations.medplum.tokens import (
    AccessTokenVerifier,
    KeySetUnavailable,
    TokenRejected,
)
from app.integrations.medplum.user_sign_in import (
    Membership,
    UserSignIn,
    authorize_url,
    pkce_pair,
)
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from app.settings import Settings

log = get_logger("app.ops.auth")

SESSION_COOKIE = "starvit_ops_session"
FLOW_COOKIE = "starvit_ops_signin"
FLOW_SECONDS = 600
CALLBACK_PATH = "/ops/callback"
BEARER_CACHE_SECONDS = 60.0

type Refusal = Literal[
    "not_signed_in",
    "sign_in_expired",
    "state_mismatch",
    "code_refused",
    "medplum_unavailable",
    "not_ops",
    "wrong_audience",
]


class SignInRefused(Exception):
    def __init__(self, reason: Refusal, status_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class OpsSession:
    profile: str
    login_id: str | None
    csrf: str
    access_token: str = field(repr=False)
    expires_at: float
    via: Literal["cookie", "bearer"] = "cookie"


def _policy_ref(entry: str) -> str:
    return entry if "/" in entry else f"AccessPolicy/{entry}"


def is_ops(membership: Membership, settings: Settings) -> bool:
    """Ops are people (a Practitioner profile) whose membership carries an ops AccessPolicy."""
    if not (membership.profile or "").startswith("Practitioner/"):
        return False
    wanted = {_policy_ref(entry) for entry in settings.ops_access_policies}
    return bool(wanted & membership.policies)


class FixedWindowLimiter:
    """Requests per client per minute on the public sign-in routes (per process)."""

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._counts: dict[str, tuple[int, int]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        window = math.floor((now or time.time()) / 60)
        start, count = self._counts.get(client, (window, 0))
        if start != window:
            start, count = window, 0
        if client not in self._counts and len(self._counts) >= self.max_clients:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        self._counts[client] = (start, count + 1)
        return count + 1 <= self.per_minute


class OpsAuth:
    def __init__(
        self,
        settings: Settings,
        secret: str | None,
        verifier: AccessTokenVerifier,
        sign_in: UserSignIn | None = None,
    ) -> None:
        self.settings = settings
        self._verifier = verifier
        # Without a session secret there are no sessions (the pages' sign-in is off); API
        # clients with a Medplum token are still served.
        self.sessions_enabled = bool(secret)
        key = secret or secrets.token_urlsafe(32)
        self._sessions = URLSafeTimedSerializer(key, salt="starvit-ops-session")
        self._flows = URLSafeTimedSerializer(key, salt="starvit-ops-sign-in")
        self._sign_in = sign_in or UserSignIn(
            settings.medplum_base_url, allowed_hosts=tuple(settings.medplum_allowed_hosts)
        )
        self._bearers: dict[str, tuple[float, OpsSession | SignInRefused]] = {}
        self.limiter = FixedWindowLimiter(30)

    name = "ops_auth"

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        await self._sign_in.aclose()

    # --- sign-in ------------------------------------------------------------------------------

    def redirect_uri(self, request_base: str) -> str:
        base = self.settings.ops_public_url or request_base
        return base.rstrip("/") + CALLBACK_PATH

    @property
    def secure_cookies(self) -> bool:
        return (self.settings.ops_public_url or "").startswith("https://")

    def begin(self, request_base: str, next_path: str) -> tuple[str, str]:
        """(where to send the browser, the signed flow cookie)."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        flow = self._flows.dumps({"s": state, "v": verifier, "n": safe_next(next_path)})
        url = authorize_url(
            self.settings.medplum_base_url,
            client_id=self.settings.ops_client_id,
            redirect_uri=self.redirect_uri(request_base),
            state=state,
            code_challenge=challenge,
        )
        return url, flow

    async def complete(
        self, request_base: str, code: str, state: str, flow_cookie: str | None
    ) -> tuple[OpsSession, str]:
        """Redeem the code; (the session, where to go next). Refuses non-ops users."""
        if not flow_cookie:
            raise SignInRefused("sign_in_expired", 400)
        try:
            flow = self._flows.loads(flow_cookie, max_age=FLOW_SECONDS)
        except BadSignature:
            raise SignInRefused("sign_in_expired", 400) from None
        if not isinstance(flow, dict) or not hmac.compare_digest(str(flow.get("s")), state):  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            raise SignInRefused("state_mismatch", 400)
        try:
            grant = await self._sign_in.exchange_code(
                client_id=self.settings.ops_client_id,
                code=code,
                code_verifier=str(flow.get("v")),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
                redirect_uri=self.redirect_uri(request_base),
            )
        except MedplumError as error:
            raise _refusal(error) from None
        session = await self._session_for(grant.access_token, via="cookie")
        return session, str(flow.get("n") or "/ops/")  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]

    async def _session_for(self, token: str, *, via: Literal["cookie", "bearer"]) -> OpsSession:
        # Verified here (signature against Medplum's keys, issuer, lifetime, and an audience
        # of the ops app only), then Medplum says who the user is (and whether the Login
        # still stands: /auth/me answers 401 to a revoked one).
        try:
            verified = await self._verifier.verify(token, audiences=(self.settings.ops_client_id,))
        except KeySetUnavailable:
            raise SignInRefused("medplum_unavailable", 503) from None
        except TokenRejected as rejected:
            reason: Refusal = (
                "wrong_audience" if rejected.code == "token_audience" else "not_signed_in"
            )
            raise SignInRefused(reason, 401) from None
        try:
            membership = await self._sign_in.me(token)
        except MedplumError as error:
            raise _refusal(error) from None
        if not is_ops(membership, self.settings) or membership.profile != verified.profile:
            log.warning(
                "ops_sign_in_refused", profile_type=(membership.profile or "?").split("/")[0]
            )
            raise SignInRefused("not_ops", 403)
        expires = min(
            float(verified.expires_at), time.time() + self.settings.ops_session_hours * 3600
        )
        return OpsSession(
            profile=verified.profile,
            login_id=verified.login_id,
            csrf=secrets.token_urlsafe(24),
            access_token=token,
            expires_at=expires,
            via=via,
        )

    async def bearer(self, token: str) -> OpsSession:
        """The ops identity of an API client's Medplum token (cached for a minute)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._bearers.get(key)
        if cached is not None and now - cached[0] < BEARER_CACHE_SECONDS:
            outcome = cached[1]
        else:
            try:
                outcome = await self._session_for(token, via="bearer")
            except SignInRefused as refused:
                if refused.reason == "medplum_unavailable":
                    raise
                outcome = refused
            if len(self._bearers) > 10_000:
                self._bearers.clear()
            self._bearers[key] = (now, outcome)
        if isinstance(outcome, SignInRefused):
            raise outcome
        if outcome.expires_at < time.time():
            raise SignInRefused("sign_in_expired", 401)
        return outcome

    # --- the session cookie ---------------------------------------------------------------------

    def dump_session(self, session: OpsSession) -> str:
        return self._sessions.dumps(
            {
                "p": session.profile,
                "l": session.login_id,
                "c": session.csrf,
                "t": session.access_token,
                "e": session.expires_at,
            }
        )

    def load_session(self, cookie: str | None) -> OpsSession | None:
        if not cookie or not self.sessions_enabled:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.settings.ops_session_hours * 3600)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        expires = data.get("e")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if not isinstance(expires, int | float) or expires < time.time():
            return None
        return OpsSession(
            profile=str(data.get("p")),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            login_id=data.get("l") if isinstance(data.get("l"), str) else None,  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            csrf=str(data.get("c")),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            access_token=str(data.get("t")),  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
            expires_at=float(expires),
        )

    def cookie_args(self, max_age: int) -> dict[str, object]:
        return {
            "max_age": max_age,
            "httponly": True,
            "samesite": "lax",
            "secure": self.secure_cookies,
            "path": "/",
        }


def csrf_matches(session: OpsSession, supplied: str | None) -> bool:
    if session.via == "bearer":
        return True
    return bool(supplied) and hmac.compare_digest(session.csrf, supplied or "")


def same_origin(origin: str | None, request_base: str) -> bool:
    """A browser's ``Origin`` must be the dashboard's own (absent: not a cross-site browser
    request: the CSRF token decides)."""
    if not origin or origin == "null":
        return origin is None
    want = urlsplit(request_base)
    got = urlsplit(origin)
    return (got.scheme, got.netloc) == (want.scheme, want.netloc)


def safe_next(path: str | None) -> str:
    """Only a path of the dashboard itself (no open redirect)."""
    if path and path.startswith("/ops/") and not path.startswith("//") and "\\" not in path:
        return path[:512]
    return "/ops/"


def _refusal(error: MedplumError) -> SignInRefused:
    if error.retryable or error.status_code is None or error.status_code >= 500:
        return SignInRefused("medplum_unavailable", 503)
    if error.status_code == 401:
        return SignInRefused("not_signed_in", 401)
    return SignInRefused("code_refused", 400)
