"""Verifying the access tokens Medplum issues, locally, against Medplum's published keys.

Partners, ops users and researchers present a Medplum access token; the service checks it without
a round trip to Medplum per request:

- the signature, against the key set at ``<base>/.well-known/jwks.json`` (cached; fetched again
  when a token names a key id the cache does not hold, at most once per ``refresh_interval``);
- the algorithm, from an allow-list of asymmetric ones (ES256, RS256): ``none`` and the HMAC
  family are refused before any key is looked at, so a token "signed" with the public key as an
  HMAC secret never verifies;
- the issuer (Medplum's base URL unless configured), expiry and not-before with a small leeway,
  and the audience (Medplum puts the client id in ``aud``) against the caller's list.

``PyJWKClient`` fetches keys with blocking ``urllib``: fetches run in a worker thread, never on
the event loop. Failures raise :class:`TokenRejected` with a stable code (never the token).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKClientError

if TYPE_CHECKING:
    from collections.abc import Collection

ALLOWED_ALGORITHMS: Final = ("ES256", "RS256")


class Refusal(StrEnum):
    """Why a token was refused: stable codes, safe to log and to return."""

    MISSING = "token_missing"
    MALFORMED = "token_malformed"
    ALGORITHM = "token_algorithm"
    SIGNATURE = "token_signature"
    ISSUER = "token_issuer"
    AUDIENCE = "token_audience"
    EXPIRED = "token_expired"
    NOT_YET_VALID = "token_not_yet_valid"
    KEY_UNKNOWN = "token_key_unknown"
    KEYS_UNAVAILABLE = "token_keys_unavailable"


class TokenRejected(Exception):
    """The token is not acceptable; ``code`` says why (stable, safe to log and to return)."""

    def __init__(self, code: Refusal) -> None:
        super().__init__(code.value)
        self.code = code.value


class KeySetUnavailable(TokenRejected):
    """Medplum's key set could not be fetched: a dependency failure, not the caller's fault."""

    def __init__(self) -> None:
        super().__init__(Refusal.KEYS_UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified Medplum access token: who presented it and for which client."""

    token: str
    subject: str
    client_id: str
    profile: str
    login_id: str | None
    scopes: frozenset[str]
    issued_at: int | None
    expires_at: int

    @property
    def profile_type(self) -> str:
        """``Practitioner``, ``ClientApplication``, ... from ``profile``."""
        return self.profile.split("/", 1)[0]


def jwks_url_for(base_url: str) -> str:
    return base_url.rstrip("/") + "/.well-known/jwks.json"


class AccessTokenVerifier:
    """Verifies Medplum access tokens against a cached JWKS. Safe to share between requests."""

    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        leeway_seconds: float = 30.0,
        refresh_interval: float = 60.0,
        fetch_timeout: float = 5.0,
        jwks_client: PyJWKClient | None = None,
    ) -> None:
        self.issuer = issuer
        self.leeway_seconds = leeway_seconds
        self.refresh_interval = refresh_interval
        self._client = jwks_client or PyJWKClient(
            jwks_url, cache_keys=True, cache_jwk_set=True, lifespan=3600, timeout=fetch_timeout
        )
        self._keys: dict[str, PyJWK] = {}
        self._last_fetch = float("-inf")
        self._lock = threading.Lock()

    async def verify(self, token: str | None, *, audiences: Collection[str]) -> AccessToken:
        """The verified token, or :class:`TokenRejected`. ``audiences``: the client ids accepted."""
        if not token:
            raise TokenRejected(Refusal.MISSING)
        header = _header(token)
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise TokenRejected(Refusal.ALGORITHM)
        key_id = header.get("kid")
        if not isinstance(key_id, str) or not key_id:
            raise TokenRejected(Refusal.KEY_UNKNOWN)
        key = self._keys.get(key_id)
        if key is None:
            key = await asyncio.to_thread(self._fetch_key, key_id)
        if key.algorithm_name != algorithm:
            # A key of one family never verifies a token that names another algorithm.
            raise TokenRejected(Refusal.ALGORITHM)
        claims = self._decode(token, key, algorithm, audiences)
        return _access_token(token, claims)

    def _fetch_key(self, key_id: str) -> PyJWK:
        with self._lock:
            cached = self._keys.get(key_id)
            if cached is not None:
                return cached
            now = time.monotonic()
            if now - self._last_fetch < self.refresh_interval and self._keys:
                # An unknown key id soon after a fetch: do not let callers drive fetches.
                raise TokenRejected(Refusal.KEY_UNKNOWN)
            try:
                key_set = self._client.get_jwk_set(refresh=True)
            except PyJWKClientError as error:
                raise KeySetUnavailable from error
            self._last_fetch = now
            self._keys = {key.key_id: key for key in key_set.keys if key.key_id}
            found = self._keys.get(key_id)
            if found is None:
                raise TokenRejected(Refusal.KEY_UNKNOWN)
            return found

    def _decode(
        self, token: str, key: PyJWK, algorithm: str, audiences: Collection[str]
    ) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=list(audiences) or None,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "sub"], "verify_aud": True},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenRejected(Refusal.EXPIRED) from error
        except jwt.ImmatureSignatureError as error:
            raise TokenRejected(Refusal.NOT_YET_VALID) from error
        except jwt.InvalidIssuerError as error:
            raise TokenRejected(Refusal.ISSUER) from error
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as error:
            code = Refusal.AUDIENCE if _about_audience(error) else Refusal.MALFORMED
            raise TokenRejected(code) from error
        except jwt.InvalidSignatureError as error:
            raise TokenRejected(Refusal.SIGNATURE) from error
        except jwt.InvalidAlgorithmError as error:
            raise TokenRejected(Refusal.ALGORITHM) from error
        except jwt.PyJWTError as error:
            raise TokenRejected(Refusal.MALFORMED) from error


def _about_audience(error: jwt.PyJWTError) -> bool:
    if isinstance(error, jwt.InvalidAudienceError):
        return True
    return isinstance(error, jwt.MissingRequiredClaimError) and error.claim == "aud"


def _header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise TokenRejected(Refusal.MALFORMED) from error


def _access_token(token: str, claims: dict[str, Any]) -> AccessToken:
    audience = claims.get("aud")
    client_id = claims.get("client_id") or (
        audience if isinstance(audience, str) else (audience[0] if audience else None)
    )
    subject = claims.get("sub")
    profile = claims.get("profile")
    expires_at = claims.get("exp")
    if not isinstance(subject, str) or not isinstance(client_id, str):
        raise TokenRejected(Refusal.MALFORMED)
    if not isinstance(profile, str) or "/" not in profile:
        # Medplum's access tokens name the caller's profile; its ID tokens (same key, same
        # audience) do not, and are not credentials for an API.
        raise TokenRejected(Refusal.MALFORMED)
    if not isinstance(expires_at, int):
        raise TokenRejected(Refusal.MALFORMED)
    scope = claims.get("scope")
    login_id = claims.get("login_id")
    issued_at = claims.get("iat")
    return AccessToken(
        token=token,
        subject=subject,
        client_id=client_id,
        profile=profile,
        login_id=login_id if isinstance(login_id, str) else None,
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        issued_at=issued_at if isinstance(issued_at, int) else None,
        expires_at=expires_at,
    )
