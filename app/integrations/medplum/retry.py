"""When and how long to retry a Medplum call (tenacity).

Only operations whose replay cannot duplicate an effect are retried (reads, searches,
conditional creates, version-guarded updates and patches, bundles of such entries); the
caller decides that, this module only decides *when*: on the errors flagged ``retryable``
(network failures and timeouts, 5xx, 409, 429). The wait is the ``t=`` of Medplum's
``RateLimit`` header when the answer carried one (Medplum sends no ``Retry-After``), else an
exponential backoff with jitter; both are capped.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from app.integrations.medplum.errors import MedplumError

type Sleep = Callable[[float], Awaitable[None]]
type RetryObserver = Callable[[MedplumError, int, float], None]

BACKOFF_MULTIPLIER_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, MedplumError) and error.retryable


class RetryPolicy:
    def __init__(
        self,
        *,
        max_attempts: int,
        max_wait_seconds: float,
        sleep: Sleep = asyncio.sleep,
        backoff_multiplier: float = BACKOFF_MULTIPLIER_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.max_wait_seconds = max_wait_seconds
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_multiplier,
            max=min(backoff_max, max_wait_seconds),
            jitter=backoff_multiplier,
        )

    def wait_for(self, error: BaseException | None, attempt_number: int) -> float:
        """Seconds to wait after failed attempt ``attempt_number`` (1-based)."""
        if isinstance(error, MedplumError) and error.retry_after and error.retry_after > 0:
            # A little jitter on top of the reset so a fleet of workers does not hit the
            # reset instant together.
            jitter = self._rng.uniform(0.0, min(1.0, error.retry_after * 0.05))
            return min(error.retry_after + jitter, self.max_wait_seconds)
        state = RetryCallState(retry_object=AsyncRetrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt_number
        return min(self._backoff(state), self.max_wait_seconds)

    def retrying(
        self,
        observer: RetryObserver | None = None,
        *,
        retry_if: Callable[[BaseException], bool] = is_retryable,
    ) -> AsyncRetrying:
        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            return self.wait_for(error, state.attempt_number)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if observer is not None and isinstance(error, MedplumError):
                seconds = state.upcoming_sleep
                observer(error, state.attempt_number, seconds)

        return AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(self.max_attempts),
            wait=wait,
            retry=retry_if_exception(retry_if),
            before_sleep=before_sleep,
            reraise=True,
        )
