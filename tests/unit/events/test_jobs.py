"""The job queue's retry policy: which failures are tried again, how long the worker waits,
and when an event is dead-lettered with which error code."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from procrastinate.jobs import Job

from app.events.jobs import (
    RETRY,
    EventRetry,
    WorkerState,
    error_code_of,
    install_state,
    is_retryable,
)
from app.handlers.protocol import PermanentFailure
from app.integrations.medplum import (
    MedplumBadRequest,
    MedplumConflict,
    MedplumError,
    MedplumForbidden,
    MedplumNotFound,
    MedplumPreconditionFailed,
    MedplumRateLimited,
    MedplumRequestTooLarge,
    MedplumUnavailable,
    OutboundHostNotAllowed,
)
from app.settings import Settings
from tests.conftest import settings_for_tests


def job(attempts: int) -> Job:
    """A job that has already run ``attempts`` times (the current run not counted)."""
    return Job(
        id=1, queue="events", lock=None, queueing_lock=None, task_name="x", attempts=attempts
    )


def all_subclasses(cls: type[MedplumError]) -> Iterator[type[MedplumError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


@pytest.fixture
def max_attempts(request: pytest.FixtureRequest) -> Iterator[int]:
    """A worker whose settings allow ``request.param`` runs of a job."""
    attempts = int(request.param)
    unused = cast("Any", None)
    install_state(
        WorkerState(
            settings_for_tests(job_max_attempts=attempts),
            unused,
            unused,
            unused,
            unused,
            unused,
            unused,
        )
    )
    yield attempts
    install_state(None)


# ---------------------------------------------------------------------- which errors retry

# What each Medplum failure means for the event: a later run can succeed (outage, rate limit,
# concurrent write, someone edited the Task meanwhile) or it cannot (refused, invalid, absent).
MEDPLUM_ERRORS: list[tuple[type[MedplumError], bool]] = [
    (MedplumUnavailable, True),
    (MedplumRateLimited, True),
    (MedplumConflict, True),
    (MedplumPreconditionFailed, True),
    (MedplumNotFound, False),
    (MedplumBadRequest, False),
    (MedplumRequestTooLarge, False),
    (MedplumForbidden, False),
    (OutboundHostNotAllowed, False),
    (MedplumError, False),
]


@pytest.mark.parametrize(
    ("kind", "retried"), MEDPLUM_ERRORS, ids=lambda v: getattr(v, "__name__", "")
)
def test_medplum_errors(kind: type[MedplumError], retried: bool) -> None:
    error = kind("failed", status_code=500)
    assert is_retryable(error) is retried
    assert error_code_of(error) == kind.error_code
    decision = RETRY.get_retry_decision(exception=error, job=job(0))
    assert (decision is not None) is retried


def test_every_medplum_error_follows_its_retryable_flag() -> None:
    # A new MedplumError subclass is classified by its flag; only a 412 is retried without it
    # (re-read and re-plan against the clinician's change).
    for kind in all_subclasses(MedplumError):
        expected = kind.retryable or issubclass(kind, MedplumPreconditionFailed)
        assert is_retryable(kind("failed")) is expected, kind.__name__


def test_a_permanent_failure_is_dead_lettered_at_once_with_its_code() -> None:
    error = PermanentFailure("unresolvable_references")
    assert not is_retryable(error)
    assert error_code_of(error) == "unresolvable_references"
    assert RETRY.get_retry_decision(exception=error, job=job(0)) is None


def test_an_unexpected_error_is_retried_as_an_internal_error() -> None:
    error = ConnectionResetError("database connection dropped")
    assert is_retryable(error)
    assert error_code_of(error) == "internal_error"
    assert RETRY.get_retry_decision(exception=error, job=job(0)) is not None


# ---------------------------------------------------------------------- how long it waits


def test_waits_double_from_the_base_and_are_capped() -> None:
    retry = EventRetry(base_seconds=2, cap_seconds=60)
    error = MedplumUnavailable("down")
    assert [retry.wait_seconds(error, n) for n in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]


def test_the_workers_policy_doubles_up_to_a_cap() -> None:
    error = MedplumUnavailable("down")
    waits = [RETRY.wait_seconds(error, n) for n in range(30)]
    assert waits[0] >= 1
    cap = waits[-1]
    for before, after in itertools.pairwise(waits):
        assert after == min(cap, 2 * before) or (before == after == cap)
    # The cap is reached (no wait grows without bound) and is at most a few minutes.
    assert waits.index(cap) < 29
    assert cap <= 600


def test_a_rate_limit_reset_raises_the_wait_within_the_cap() -> None:
    retry = EventRetry(base_seconds=2, cap_seconds=300)
    assert retry.wait_seconds(MedplumRateLimited("429", retry_after=45), 0) == 45
    # Backoff already longer than the reset: the backoff stands.
    assert retry.wait_seconds(MedplumRateLimited("429", retry_after=3), 5) == 64
    # A reset far away is not waited for beyond the cap.
    assert retry.wait_seconds(MedplumRateLimited("429", retry_after=86_400), 0) == 300


def test_the_decision_carries_the_wait() -> None:
    before = datetime.now(UTC)
    decision = RETRY.get_retry_decision(
        exception=MedplumRateLimited("429", retry_after=45), job=job(0)
    )
    assert decision is not None
    assert decision.retry_at is not None
    delay = decision.retry_at - before
    assert timedelta(seconds=44) <= delay <= timedelta(seconds=47)


# ---------------------------------------------------------------------- when it stops


@pytest.mark.parametrize("max_attempts", [3], indirect=True)
def test_the_last_attempt_gives_no_retry(max_attempts: int) -> None:
    error = MedplumUnavailable("down")
    assert RETRY.max_attempts() == max_attempts
    for done in range(max_attempts - 1):
        assert RETRY.get_retry_decision(exception=error, job=job(done)) is not None
    # The run after ``max_attempts - 1`` earlier ones is the last: the event is dead-lettered.
    assert RETRY.get_retry_decision(exception=error, job=job(max_attempts - 1)) is None


@pytest.mark.parametrize("max_attempts", [1], indirect=True)
def test_one_attempt_means_no_retry_at_all(max_attempts: int) -> None:
    assert max_attempts == 1
    assert RETRY.get_retry_decision(exception=MedplumUnavailable("down"), job=job(0)) is None


def test_without_a_worker_state_the_default_attempts_apply() -> None:
    # Before a worker has installed its settings, the policy still stops: at the default.
    default = Settings.model_construct().job_max_attempts
    assert RETRY.max_attempts() == default
    error = MedplumUnavailable("down")
    assert RETRY.get_retry_decision(exception=error, job=job(default - 2)) is not None
    assert RETRY.get_retry_decision(exception=error, job=job(default - 1)) is None
