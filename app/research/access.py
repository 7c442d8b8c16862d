"""Who may read the research aggregates, and how often.

The researcher role is configuration, not a Medplum AccessPolicy lookup: the service does not
ask Medplum per request, and a researcher needs no FHIR access at all. A caller holds the role
when its verified token's ``profile`` is listed in ``STARVIT_RESEARCH_PROFILES`` (a person,
e.g. ``Practitioner/<id>``), or when it is a ClientApplication acting as itself
(``profile = ClientApplication/<client id>``) listed in ``STARVIT_RESEARCH_CLIENT_IDS``. The
token must have been issued to one of ``STARVIT_RESEARCH_AUDIENCES`` (or to a listed client)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.integrations.medplum.tokens import AccessToken
from app.settings import Settings


def audiences(settings: Settings) -> frozenset[str]:
    return frozenset(settings.research_audiences) | frozenset(settings.research_client_ids)


def is_researcher(token: AccessToken, settings: Settings) -> bool:
    if token.profile in settings.research_profiles:
        return True
    kind, _, ident = token.profile.partition("/")
    return (
        kind == "ClientApplication"
        and ident == token.client_id
        and token.client_id in settings.research_client_ids
    )


@dataclass
class SubjectRateLimit:
    """Requests per caller per fixed minute, in this process (the research API is small and
    authenticated; this keeps one researcher's script from monopolising the analytics store)."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict[str, tuple[int, int]])

    def allow(self, subject: str) -> tuple[bool, int]:
        """Whether this request may run, and the seconds until the window resets."""
        now = self.clock()
        window = int(now // 60)
        start, count = self._windows.get(subject, (window, 0))
        if start != window:
            start, count = window, 0
        if len(self._windows) > 10_000:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        self._windows[subject] = (start, count + 1)
        return count < self.per_minute, 60 - int(now % 60)
