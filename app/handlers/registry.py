"""The one registry of handlers, built where the app is wired (:mod:`app.wiring`) and read by the
receiver (which handler names it accepts), Subscription generation, the reconciliation sweep,
the worker's dispatch and its schedule."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.handlers.protocol import Handler

# Medplum splits each channel header on ":" (a second one cuts the value), and the name is also
# a job lock and a code: a handler name is a plain lower-case token.
HANDLER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class HandlerRegistry:
    def __init__(self, handlers: Iterable[Handler]) -> None:
        self._handlers: dict[str, Handler] = {}
        for handler in handlers:
            if not HANDLER_NAME.match(handler.name):
                raise ValueError(f"{handler.name!r}: a handler name is a-z, 0-9 and '-'")
            if handler.name in self._handlers:
                raise ValueError(f"two handlers are named {handler.name!r}")
            self._handlers[handler.name] = handler

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def subscribed(self) -> list[Handler]:
        """Handlers with a Subscription: the names the receiver accepts."""
        return [h for h in self._handlers.values() if h.subscription is not None]

    def subscribed_names(self) -> frozenset[str]:
        return frozenset(h.name for h in self.subscribed())

    def swept(self) -> list[Handler]:
        return [h for h in self._handlers.values() if h.sweep is not None]

    def scheduled(self) -> list[Handler]:
        return [h for h in self._handlers.values() if h.schedule is not None]
