"""Per-Subscription secrets (one derivation, used by sync and the receiver), the worker's
confirmation of a delete before it occupies the ``deleted`` key, and the refusal counts."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from app.events import jobs
from app.events.rejections import RejectionCounter
from app.events.repository import CHECKING_DELETE_PREFIX, PENDING_DELETE_VERSION
from app.events.signature import (
    handler_signature_matches,
    subscription_secret,
)
from app.integrations.medplum import MedplumNotFound

BODY = b"{}"


def test_the_derived_secret_is_hmac_of_the_handler_name() -> None:
    expected = hmac.new(b"configured", b"starvit-subscription:bmi", hashlib.sha256).hexdigest()
    assert subscription_secret("configured", "bmi") == expected
    assert subscription_secret("configured", "bmi") != subscription_secret("configured", "egfr")
    assert subscription_secret("configured", "bmi") != subscription_secret("other", "bmi")


def _signed(handler: str, configured: str) -> str:
    key = subscription_secret(configured, handler).encode()
    return hmac.new(key, BODY, hashlib.sha256).hexdigest()


def test_a_delete_signed_for_one_handler_does_not_verify_for_another() -> None:
    # Every delete body is "{}": with one shared secret one captured delete would verify for
    # every handler; with derived secrets it verifies only for its own.
    configured = (b"new", b"old")
    signature = _signed("bmi", "old")
    assert handler_signature_matches(BODY, signature, configured, "bmi")
    assert not handler_signature_matches(BODY, signature, configured, "obesity")
    assert not handler_signature_matches(BODY, signature, (b"new",), "bmi")


# --- the worker's delete confirmation ---------------------------------------------------


@dataclass
class FakeRepo:
    holder_exists: bool = False
    calls: list[tuple[str, int]] = field(default_factory=list[tuple[str, int]])

    async def begin_delete_check(self, event_id: int) -> None:
        self.calls.append(("begin", event_id))

    async def confirm_delete(self, event_id: int) -> bool:
        self.calls.append(("confirm", event_id))
        return not self.holder_exists


@dataclass
class FakeMedplum:
    gone: bool
    reads: list[str] = field(default_factory=list[str])

    async def read(self, resource_type: str, resource_id: str) -> object:
        self.reads.append(f"{resource_type}/{resource_id}")
        if self.gone:
            raise MedplumNotFound("gone", status_code=410)
        return object()


def worker(repo: FakeRepo, medplum: FakeMedplum) -> jobs.WorkerState:
    return cast("jobs.WorkerState", cast("Any", type("W", (), {"repo": repo, "medplum": medplum})))


async def test_a_delete_of_a_live_resource_takes_no_key_and_has_no_effect() -> None:
    repo, medplum = FakeRepo(), FakeMedplum(gone=False)
    outcome = await jobs.confirm_delete(
        worker(repo, medplum), 7, PENDING_DELETE_VERSION, "Observation/o-1"
    )
    assert outcome == "delete_not_confirmed"
    # The pending key was released before Medplum was asked, the deleted key never taken.
    assert repo.calls == [("begin", 7)]
    assert medplum.reads == ["Observation/o-1"]


async def test_a_confirmed_delete_takes_the_key_and_is_processed() -> None:
    repo, medplum = FakeRepo(), FakeMedplum(gone=True)
    outcome = await jobs.confirm_delete(
        worker(repo, medplum), 7, PENDING_DELETE_VERSION, "Observation/o-1"
    )
    assert outcome is None
    assert repo.calls == [("begin", 7), ("confirm", 7)]


async def test_a_second_delivery_of_a_confirmed_delete_is_a_duplicate() -> None:
    repo, medplum = FakeRepo(holder_exists=True), FakeMedplum(gone=True)
    outcome = await jobs.confirm_delete(
        worker(repo, medplum), 8, f"{CHECKING_DELETE_PREFIX}8", "Observation/o-1"
    )
    assert outcome == "duplicate"
    # A retry of a check in progress does not touch the pending key again.
    assert repo.calls == [("confirm", 8)]


# --- refusal counts ---------------------------------------------------------------------


async def test_refusals_are_counted_per_handler_reason_and_minute_and_survive_a_failed_flush() -> (
    None
):
    now = [125.0]
    counter = RejectionCounter(frozenset({"bmi"}), clock=lambda: now[0])
    counter.count("bad_signature", "bmi")
    counter.count("bad_signature", "bmi")
    counter.count("unknown_handler", "made-up\x00name")
    assert counter.snapshot() == {
        ("bmi", "bad_signature", 120): 2,
        ("-", "unknown_handler", 120): 1,
    }

    async def broken(_: object) -> None:
        raise OSError

    with pytest.raises(OSError):
        await counter.flush(broken)
    flushed: list[object] = []

    async def sink(counts: object) -> None:
        flushed.append(counts)

    assert await counter.flush(sink) == 3
    assert counter.snapshot() == {}
    assert len(flushed) == 1
