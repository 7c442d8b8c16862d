"""Bearer authentication with a Medplum access token, for the domains whose callers sign in with
Medplum (partners, ops users, researchers).

Each domain decides which client ids (``aud``) it accepts and what the caller may do; this module
only turns the ``Authorization`` header into a verified :class:`AccessToken` or a 401 envelope
(503 when Medplum's key set cannot be fetched). The reason a token was refused is logged as a
stable code, never with the token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.api.errors import ApiError, ErrorCode
from app.integrations.medplum.tokens import AccessToken, KeySetUnavailable, TokenRejected
from app.observability.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Collection

    from fastapi import Request

    from app.runtime import Runtime

log = get_logger("app.api.auth")

BEARER_CHALLENGE = 'Bearer realm="starvit"'


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def unauthenticated(code: str) -> ApiError:
    challenge = f'{BEARER_CHALLENGE}, error="invalid_token"' if code != "token_missing" else None
    return ApiError(
        401,
        ErrorCode.UNAUTHENTICATED,
        details={"reason": code},
        headers={"WWW-Authenticate": challenge or BEARER_CHALLENGE},
    )


async def authenticate(
    request: Request, runtime: Runtime, *, audiences: Collection[str]
) -> AccessToken:
    """The caller's verified Medplum access token, issued to one of ``audiences``."""
    try:
        return await runtime.access_tokens().verify(bearer_token(request), audiences=audiences)
    except KeySetUnavailable as error:
        log.warning("token_keys_unavailable")
        raise ApiError(503, ErrorCode.DEPENDENCY_UNAVAILABLE) from error
    except TokenRejected as error:
        log.info("token_rejected", reason=error.code)
        raise unauthenticated(error.code) from error
