"""A person signing in to one of the service's web pages through Medplum: the OAuth
authorization code with PKCE (S256), then who the user is in the project.

The browser is sent to Medplum's ``/oauth2/authorize`` (:func:`authorize_url`); Medplum signs the
user in on its own page and sends the browser back with a one-time ``code``. The service redeems
it with the PKCE verifier it kept (:meth:`UserSignIn.exchange_code`) and asks Medplum, with the
user's own token, for the user's ProjectMembership and effective AccessPolicy
(:meth:`UserSignIn.me`, Medplum's ``GET /auth/me``). Every request goes through the same outbound
allowlist as the FHIR client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx

from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str, loads_object
from app.integrations.medplum.auth import pkce_pair
from app.integrations.medplum.errors import MedplumError, MedplumSignInRefused, MedplumUnavailable
from app.integrations.medplum.responses import error_for_response, is_success
from app.integrations.medplum.transport import AllowlistTransport, OutboundAllowlist

__all__ = ["Grant", "Membership", "UserSignIn", "authorize_url", "pkce_pair"]

_JSON = "application/json"


def authorize_url(
    base_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    scope: str = "openid profile",
) -> str:
    """Where the browser goes to sign in (Medplum redirects it on to its sign-in page)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{base_url.rstrip('/')}/oauth2/authorize?{query}"


@dataclass(frozen=True, slots=True)
class Grant:
    access_token: str = field(repr=False)
    expires_in: int
    profile: str | None


@dataclass(frozen=True, slots=True)
class Membership:
    """Who the signed-in user is in the project, as Medplum's ``/auth/me`` says."""

    profile: str | None  # Practitioner/<id>, Patient/<id>, ...
    membership_id: str | None
    admin: bool
    # The AccessPolicies the effective policy was built from (``accessPolicy.basedOn``) and
    # the ones the membership names directly (``accessPolicy`` and ``access[].policy``).
    policies: frozenset[str]


class UserSignIn:
    def __init__(
        self,
        base_url: str,
        *,
        allowed_hosts: tuple[str, ...] = (),
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        allowlist = OutboundAllowlist(self.base_url, allowed_hosts)
        self._http = httpx.AsyncClient(
            transport=AllowlistTransport(allowlist, transport or httpx.AsyncHTTPTransport()),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def exchange_code(
        self, *, client_id: str, code: str, code_verifier: str, redirect_uri: str
    ) -> Grant:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
        }
        try:
            response = await self._http.post(
                self.base_url + "oauth2/token", data=form, headers={"Accept": _JSON}
            )
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum token endpoint unreachable",
                operation="token",
                cause=type(error).__name__,
            ) from None
        if not is_success(response.status_code):
            error = error_for_response(response, operation="token", resource_type=None, attempts=1)
            if error.retryable:
                raise error
            raise MedplumSignInRefused(
                "Medplum refused the authorization code",
                status_code=response.status_code,
                operation="token",
            )
        body = loads_object(response.content) or {}
        token = get_str(body, "access_token")
        if not token:
            raise MedplumError(
                "Medplum token response has no access_token",
                status_code=response.status_code,
                operation="token",
            )
        expires = body.get("expires_in")
        profile = get_object(body, "profile")
        return Grant(
            access_token=token,
            expires_in=int(expires) if isinstance(expires, int | float) else 3600,
            profile=get_str(profile, "reference") if profile else None,
        )

    async def me(self, access_token: str) -> Membership:
        try:
            response = await self._http.get(
                self.base_url + "auth/me",
                headers={"Accept": _JSON, "Authorization": f"Bearer {access_token}"},
            )
        except httpx.TransportError as error:
            raise MedplumUnavailable(
                "Medplum unreachable", operation="me", cause=type(error).__name__
            ) from None
        if not is_success(response.status_code):
            raise error_for_response(response, operation="me", resource_type=None, attempts=1)
        return membership_of(loads_object(response.content) or {})


def _reference(value: JSONObject | None) -> str | None:
    return get_str(value, "reference") if value else None


def membership_of(me: JSONObject) -> Membership:
    """The parts of ``/auth/me`` that decide a role (the rest, names included, is dropped)."""
    membership = get_object(me, "membership") or {}
    policy = get_object(me, "accessPolicy") or {}
    profile = get_object(me, "profile")
    profile_ref = None
    if profile:
        kind, ident = get_str(profile, "resourceType"), get_str(profile, "id")
        profile_ref = f"{kind}/{ident}" if kind and ident else None
    profile_ref = profile_ref or _reference(get_object(membership, "profile"))
    policies: set[str] = set()
    for based_on in get_objects(policy, "basedOn"):
        if ref := _reference(based_on):
            policies.add(ref)
    if ref := _reference(get_object(membership, "accessPolicy")):
        policies.add(ref)
    for access in get_objects(membership, "access"):
        if ref := _reference(get_object(access, "policy")):
            policies.add(ref)
    return Membership(
        profile=profile_ref,
        membership_id=get_str(membership, "id"),
        admin=membership.get("admin") is True,
        policies=frozenset(policies),
    )
