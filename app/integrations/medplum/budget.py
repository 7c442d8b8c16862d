"""One FHIR quota budget shared by every worker, in PostgreSQL (``starvit.medplum_budget``).

Medplum charges each membership points per minute (read 1, search 20, write 100; 50,000 by
default) and reports on every FHIR answer what is left and when the window resets
(``RateLimit: "fhirInteractions";r=<left>;t=<seconds>``). Workers in several processes or on
several machines spend the same budget, so what is left is kept in one row:

* every answer's ``r`` and ``t`` update it (the lower of Medplum's figure and the row's within
  a window, Medplum's in a new one);
* before a request, the client takes the request's points off the row (one atomic statement)
  and, when what is left would fall under the reserve (``STARVIT_MEDPLUM_QUOTA_RESERVE`` of the
  limit), waits for the window's reset instead of sending: the workers slow down *before* the
  quota is spent, and the reserve absorbs requests already on their way;
* a 429 blocks every worker until the reset Medplum named (``t``), exactly as long as Medplum
  says, then each retries.

``quota_status`` is what ops read: the points left, the seconds to the reset, whether workers
are held back, and the age of the oldest event waiting in the queue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from app.observability.logging import get_logger

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from app.integrations.medplum.responses import RateLimitStatus

log = get_logger(__name__)

POLICY = "fhirInteractions"
# A reset more than this far from the recorded one is a new window.
_NEW_WINDOW_SECONDS = 5.0
# More than this many reserves left: far from the limit, no shared bookkeeping per request.
FAR = 3.0
# How often a process far from the limit still reads and writes the shared row.
SYNC_SECONDS = 1.0


class Pacer(Protocol):
    """What the Medplum client asks before a request and tells after its answer."""

    async def before(self, points: int) -> None: ...

    async def observe(self, status: RateLimitStatus | None, *, throttled: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """The shared budget as ops see it (no PHI: counts and seconds)."""

    policy: str
    remaining: int | None  # points left in the window (None before any answer)
    limit: int | None  # the most ever reported left: about the membership's limit
    reset_in_seconds: float | None
    blocked_for_seconds: float  # > 0 after a 429, until Medplum's reset
    queued_events: int
    oldest_queued_age_seconds: float | None


class SharedBudget:
    """The PostgreSQL-backed :class:`Pacer` (see the module's description).

    Far from the reserve (more than ``FAR`` reserves left, as Medplum last reported to this
    process) a request costs no database round trip: the process keeps its own count and
    looks at the shared row at least every ``SYNC_SECONDS`` (another process's 429). Near the
    reserve every request goes through the shared row."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        reserve_fraction: float = 0.1,
        policy: str = POLICY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_wait_seconds: float = 65.0,
    ) -> None:
        self.pool = pool
        self.reserve_fraction = reserve_fraction
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self.max_wait_seconds = max_wait_seconds
        self.waits = 0
        self.waited_seconds = 0.0
        # This process's view: Medplum's last answer and what was sent since.
        self._remaining: int | None = None
        self._ceiling = 0
        self._reset_at = 0.0
        self._debt = 0
        self._blocked_until = 0.0
        self._synced_at = -math.inf
        self._written_at = -math.inf

    def _reserve(self) -> float:
        return self.reserve_fraction * self._ceiling

    def _far(self, points: int, now: float) -> bool:
        if self._remaining is None or now >= self._reset_at or now < self._blocked_until:
            return False
        if now - self._synced_at > SYNC_SECONDS:
            return False
        return self._remaining - self._debt - points > FAR * self._reserve()

    async def before(self, points: int) -> None:
        now = self._clock()
        if now < self._blocked_until:
            await self._wait(self._blocked_until - now, reason="blocked")
            now = self._clock()
        if self._far(points, now):
            self._debt += points
            return
        spent, self._debt = self._debt + points, 0
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                UPDATE starvit.medplum_budget
                   SET remaining = remaining - %s
                 WHERE policy = %s AND reset_at > now()
             RETURNING remaining, ceiling,
                       extract(epoch FROM reset_at - now())::float8,
                       coalesce(extract(epoch FROM blocked_until - now()), 0)::float8
                """,
                (spent, self.policy),
            )
            row = await cursor.fetchone()
        self._synced_at = self._clock()
        if row is None:
            await self._wait_if_blocked()
            return  # no answer seen in this window yet: nothing known to pace by
        remaining, ceiling, reset_in, blocked_for = row
        self._remaining = int(remaining)
        self._ceiling = max(self._ceiling, int(ceiling))
        self._reset_at = now + float(reset_in)
        wait = max(0.0, float(blocked_for))
        self._blocked_until = max(self._blocked_until, now + wait)
        if self.reserve_fraction > 0 and int(remaining) < self._reserve():
            # Spending this would eat into the reserve: wait for the window to reset.
            wait = max(wait, float(reset_in))
        if wait > 0:
            await self._wait(wait, reason="blocked" if blocked_for > 0 else "reserve")

    async def _wait_if_blocked(self) -> None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT extract(epoch FROM blocked_until - now())::float8"
                " FROM starvit.medplum_budget WHERE policy = %s AND blocked_until > now()",
                (self.policy,),
            )
            row = await cursor.fetchone()
        if row is not None and row[0] > 0:
            await self._wait(float(row[0]), reason="blocked")

    async def _wait(self, seconds: float, *, reason: str) -> None:
        seconds = min(seconds, self.max_wait_seconds)
        self.waits += 1
        self.waited_seconds += seconds
        log.info("medplum_quota_wait", reason=reason, wait_seconds=round(seconds, 3))
        await self._sleep(seconds)

    async def observe(self, status: RateLimitStatus | None, *, throttled: bool) -> None:
        policy = status.policy(self.policy) if status is not None else None
        if policy is None:
            return
        now = self._clock()
        reset = max(0.0, policy.reset_seconds)
        new_window = (
            self._remaining is None
            or now >= self._reset_at
            or abs(now + reset - self._reset_at) > _NEW_WINDOW_SECONDS
        )
        self._remaining = policy.remaining
        self._debt = 0
        self._ceiling = max(self._ceiling, policy.remaining)
        if new_window:
            self._reset_at = now + reset
        if throttled:
            self._blocked_until = max(self._blocked_until, now + reset)
        near = policy.remaining <= FAR * self._reserve()
        if not (throttled or new_window or near or now - self._written_at > SYNC_SECONDS):
            return
        self._written_at = now
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO starvit.medplum_budget AS b
                       (policy, remaining, ceiling, reset_at, observed_at, blocked_until)
                VALUES (%(policy)s, %(r)s, %(r)s, now() + make_interval(secs => %(t)s), now(),
                        CASE WHEN %(throttled)s THEN now() + make_interval(secs => %(t)s) END)
                ON CONFLICT (policy) DO UPDATE SET
                    remaining = CASE
                        WHEN b.reset_at <= now()
                          OR abs(extract(epoch FROM EXCLUDED.reset_at - b.reset_at)) > %(gap)s
                        THEN EXCLUDED.remaining
                        ELSE least(b.remaining, EXCLUDED.remaining) END,
                    reset_at = CASE
                        WHEN b.reset_at <= now()
                          OR abs(extract(epoch FROM EXCLUDED.reset_at - b.reset_at)) > %(gap)s
                        THEN EXCLUDED.reset_at ELSE b.reset_at END,
                    ceiling = greatest(b.ceiling, EXCLUDED.remaining),
                    observed_at = now(),
                    blocked_until = CASE
                        WHEN %(throttled)s THEN greatest(b.blocked_until, EXCLUDED.blocked_until)
                        ELSE b.blocked_until END
                """,
                {
                    "policy": self.policy,
                    "r": policy.remaining,
                    "t": reset,
                    "throttled": throttled,
                    "gap": _NEW_WINDOW_SECONDS,
                },
            )


async def quota_status(pool: AsyncConnectionPool, *, policy: str = POLICY) -> QuotaStatus:
    """The shared budget and the queue's age, for ops (the dashboard, ``starvit`` commands)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            """
            SELECT remaining, ceiling,
                   extract(epoch FROM reset_at - now())::float8,
                   coalesce(extract(epoch FROM blocked_until - now()), 0)::float8
              FROM starvit.medplum_budget WHERE policy = %s
            """,
            (policy,),
        )
        budget = await cursor.fetchone()
        cursor = await conn.execute(
            "SELECT count(*), extract(epoch FROM now() - min(received_at))::float8"
            " FROM starvit.event_keys WHERE status = 'queued'"
        )
        queue = await cursor.fetchone()
    queued, oldest = (int(queue[0]), queue[1]) if queue is not None else (0, None)
    if budget is None or budget[2] <= 0:
        # No answer yet, or the window has reset since: the full limit (if known) is left.
        return QuotaStatus(
            policy=policy,
            remaining=int(budget[1]) if budget is not None else None,
            limit=int(budget[1]) if budget is not None else None,
            reset_in_seconds=None,
            blocked_for_seconds=0.0,
            queued_events=queued,
            oldest_queued_age_seconds=oldest,
        )
    return QuotaStatus(
        policy=policy,
        remaining=max(0, int(budget[0])),
        limit=int(budget[1]),
        reset_in_seconds=float(budget[2]),
        blocked_for_seconds=max(0.0, float(budget[3])),
        queued_events=queued,
        oldest_queued_age_seconds=oldest,
    )
