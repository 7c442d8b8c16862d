"""What the write executor spends of Medplum's quota: AuditEvents only for failures (unless
configured otherwise), plain creates where a transaction cannot commit twice, conditional
creates wherever entries can partially succeed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from app.fhir.writes import PlannedWrite
from app.handlers.protocol import HandlerContext
from app.handlers.writes import WriteExecutor, writer_for
from tests.conftest import settings_for_tests
from tests.unit.handlers.test_writes import (
    AUDIT,
    CANCEL,
    OBSERVATION,
    PROVENANCE,
    TASK,
    FakeMedplum,
    resource_types,
)

if TYPE_CHECKING:
    from app.integrations.medplum import MedplumClient

FAILED_AUDIT = PlannedWrite("POST", {"resourceType": "AuditEvent", "outcome": "4"})


def executor(medplum: FakeMedplum, *, transactions: bool = True, audit: str) -> WriteExecutor:
    return WriteExecutor(
        cast("MedplumClient", medplum), transactions=transactions, audit_events=audit
    )


async def test_a_successful_events_audit_event_is_not_sent_under_failures() -> None:
    medplum = FakeMedplum()
    written = await executor(medplum, audit="failures").apply(
        [[OBSERVATION, TASK, PROVENANCE], [AUDIT]], None
    )
    assert written == 3
    assert resource_types(medplum.calls[0]) == ["Observation", "Task", "Provenance"]


async def test_a_failed_or_refused_action_keeps_its_audit_event() -> None:
    medplum = FakeMedplum()
    await executor(medplum, audit="failures").apply([[CANCEL], [FAILED_AUDIT]], None)
    assert resource_types(medplum.calls[0]) == ["Task", "AuditEvent"]


async def test_a_required_audit_event_is_sent_under_failures() -> None:
    """An escalation has no Provenance: its successful AuditEvent is its only record."""
    medplum = FakeMedplum()
    required = PlannedWrite(
        "POST",
        {"resourceType": "AuditEvent", "outcome": "0"},
        if_none_exist="_tag=run|k",
        audit_required=True,
    )
    await executor(medplum, audit="failures").apply([[CANCEL, required]], None)
    assert resource_types(medplum.calls[0]) == ["Task", "AuditEvent"]


async def test_an_audit_event_alone_that_is_dropped_sends_nothing() -> None:
    medplum = FakeMedplum()
    assert await executor(medplum, audit="failures").apply([[AUDIT]], None) == 0
    assert medplum.calls == []


async def test_all_keeps_every_audit_event() -> None:
    medplum = FakeMedplum()
    await executor(medplum, audit="all").apply([[OBSERVATION, TASK], [AUDIT]], None)
    assert resource_types(medplum.calls[0]) == ["Observation", "Task", "AuditEvent"]


async def test_a_version_guarded_transaction_sends_plain_creates() -> None:
    medplum = FakeMedplum()
    await executor(medplum, audit="all").apply([[CANCEL, PROVENANCE, OBSERVATION]], None)
    [call] = medplum.calls
    assert [e.if_none_exist for e in call.entries] == [None, None, None]
    assert call.entries[0].if_match == 'W/"3"', "the guard itself stays"


async def test_without_a_guard_creates_stay_conditional_unless_asked() -> None:
    medplum = FakeMedplum()
    writer = executor(medplum, audit="all")
    await writer.apply([[OBSERVATION, TASK]], None)
    assert [e.if_none_exist for e in medplum.calls[0].entries] == [
        OBSERVATION.if_none_exist,
        TASK.if_none_exist,
    ]
    await writer.apply([[OBSERVATION, TASK]], None, plain_creates=True)
    assert [e.if_none_exist for e in medplum.calls[1].entries] == [None, None]


async def test_batches_keep_conditional_creates_even_when_asked() -> None:
    medplum = FakeMedplum()
    await executor(medplum, transactions=False, audit="all").apply(
        [[OBSERVATION]], None, plain_creates=True
    )
    assert medplum.calls[0].entries[0].if_none_exist == OBSERVATION.if_none_exist


def test_the_audit_policy_follows_the_settings() -> None:
    for policy in ("failures", "all"):
        context = HandlerContext(
            medplum=cast("MedplumClient", FakeMedplum()),
            settings=settings_for_tests(medplum_audit_events=policy),
            clock=lambda: datetime(2025, 1, 1, tzinfo=UTC),
        )
        assert writer_for(context).audit_events == policy
