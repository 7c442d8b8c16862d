"""The process-wide runtime: settings plus the long-lived clients (database pool, Medplum
client, event intake), opened in the app's lifespan and closed with it.

Components are optional so that the API can run (and be tested) with only what a given
deployment configures; readiness reports each configured dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from app.integrations.medplum.tokens import AccessTokenVerifier, jwks_url_for

if TYPE_CHECKING:
    from app.events.repository import EventIntake
    from app.handlers.registry import HandlerRegistry
    from app.settings import Settings


class Dependency(Protocol):
    """Something readiness can probe. ``check`` returns None when reachable, else a stable
    error code."""

    name: str

    async def check(self) -> str | None: ...

    async def aclose(self) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    dependencies: list[Dependency] = field(default_factory=list[Dependency])
    intake: EventIntake | None = None
    registry: HandlerRegistry | None = None
    token_verifier: AccessTokenVerifier | None = None

    async def readiness(self) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for dependency in self.dependencies:
            try:
                results[dependency.name] = await dependency.check()
            except Exception:  # a probe must answer, whatever the dependency does
                results[dependency.name] = "check_failed"
        return results

    async def aclose(self) -> None:
        for dependency in reversed(self.dependencies):
            await dependency.aclose()

    def require_registry(self) -> HandlerRegistry:
        if self.registry is None:
            raise RuntimeError("this runtime has no handler registry")
        return self.registry

    def access_tokens(self) -> AccessTokenVerifier:
        """The verifier of inbound Medplum access tokens (built on first use; it fetches
        Medplum's key set only when a token arrives)."""
        if self.token_verifier is None:
            self.token_verifier = AccessTokenVerifier(
                jwks_url=jwks_url_for(self.settings.medplum_base_url),
                issuer=self.settings.token_issuer,
                leeway_seconds=self.settings.medplum_token_leeway_seconds,
            )
        return self.token_verifier

    def require_intake(self) -> EventIntake:
        if self.intake is None:
            raise RuntimeError("this runtime has no event intake (no database configured)")
        return self.intake
