"""Sending planned writes to Medplum: transactions of at most eight entries that never split a
group of writes referring to each other, or (without the ``transaction-bundles`` feature)
batches in dependency order with the ``urn:uuid`` references replaced by what Medplum created."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.fhir.resource_json import JSONObject, JSONValue
from app.fhir.writes import PlannedWrite
from app.handlers.protocol import HandlerContext, PermanentFailure
from app.handlers.writes import WriteExecutor, chunk_for_transactions, writer_for
from app.integrations.medplum import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    BundleRequest,
    BundleResponse,
    MedplumBadRequest,
    MedplumForbidden,
    MedplumPreconditionFailed,
)
from app.integrations.medplum.results import parse_bundle_response
from tests.conftest import settings_for_tests

if TYPE_CHECKING:
    from app.integrations.medplum import MedplumClient

OBSERVATION = PlannedWrite(
    "POST",
    {
        "resourceType": "Observation",
        "status": "preliminary",
        "subject": {"reference": "Patient/p1"},
    },
    full_url="urn:uuid:obs",
    if_none_exist="identifier=https://example.org/proposal|k1",
)
TASK = PlannedWrite(
    "POST",
    {
        "resourceType": "Task",
        "status": "requested",
        "focus": {"reference": "urn:uuid:obs"},
        "for": {"reference": "Patient/p1"},
    },
    full_url="urn:uuid:task",
    if_none_exist="identifier=https://example.org/task|k1",
)
PROVENANCE = PlannedWrite(
    "POST",
    {
        "resourceType": "Provenance",
        "target": [{"reference": "urn:uuid:obs"}, {"reference": "urn:uuid:task"}],
    },
)
AUDIT = PlannedWrite("POST", {"resourceType": "AuditEvent", "outcome": "0"})
CANCEL = PlannedWrite(
    "PUT", {"resourceType": "Task", "id": "old-1", "status": "cancelled"}, if_match_version="3"
)


@dataclass
class Call:
    kind: str  # "transaction" or "batch"
    entries: list[BundleRequest]
    trace_id: str | None


def created(request: BundleRequest, number: int) -> JSONObject:
    resource_type = request.url.split("?")[0].split("/")[0]
    return {
        "response": {
            "status": "201 Created",
            "location": f"{resource_type}/new-{number}/_history/1",
        }
    }


def refused(status: str) -> JSONObject:
    return {
        "response": {
            "status": status,
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "forbidden"}],
            },
        }
    }


type Answer = Callable[[BundleRequest, int], JSONObject]


@dataclass
class FakeMedplum:
    """Answers every batch/transaction entry with ``answer`` (by default: created, with a new
    id) and records what was sent."""

    answer: Answer = created
    calls: list[Call] = field(default_factory=list[Call])
    entries_answered: int = 0

    async def transaction(
        self, entries: Sequence[BundleRequest], *, trace_id: str | None = None
    ) -> BundleResponse:
        return self._answer("transaction", entries, trace_id)

    async def batch(
        self, entries: Sequence[BundleRequest], *, trace_id: str | None = None
    ) -> BundleResponse:
        return self._answer("batch", entries, trace_id)

    def _answer(
        self, kind: str, entries: Sequence[BundleRequest], trace_id: str | None
    ) -> BundleResponse:
        self.calls.append(Call(kind, list(entries), trace_id))
        answers: list[JSONValue] = []
        for request in entries:
            self.entries_answered += 1
            answers.append(self.answer(request, self.entries_answered))
        return parse_bundle_response(
            {"resourceType": "Bundle", "type": f"{kind}-response", "entry": answers}
        )


def executor(medplum: FakeMedplum, *, transactions: bool) -> WriteExecutor:
    return WriteExecutor(cast("MedplumClient", medplum), transactions=transactions)


def resource_types(call: Call) -> list[str]:
    return [str(request.resource["resourceType"]) for request in call.entries if request.resource]


def numbered(group: int, size: int) -> list[PlannedWrite]:
    return [
        PlannedWrite("POST", {"resourceType": "Observation", "id": f"g{group}-w{n}"})
        for n in range(size)
    ]


# ---------------------------------------------------------------------- transactions


async def test_one_transaction_carries_a_group_with_its_urn_references() -> None:
    medplum = FakeMedplum()
    writer = executor(medplum, transactions=True)
    written = await writer.apply([[OBSERVATION, TASK, PROVENANCE], [AUDIT]], "trace-1")
    assert written == 4
    assert writer.requests == 1
    [call] = medplum.calls
    assert call.kind == "transaction"
    assert call.trace_id == "trace-1"
    assert resource_types(call) == ["Observation", "Task", "Provenance", "AuditEvent"]
    # Inside a transaction Medplum resolves the urn:uuid references itself.
    assert [r.full_url for r in call.entries] == ["urn:uuid:obs", "urn:uuid:task", None, None]
    assert call.entries[1].resource == TASK.resource
    assert call.entries[0].if_none_exist == OBSERVATION.if_none_exist


async def test_one_transaction_per_chunk() -> None:
    medplum = FakeMedplum()
    writer = executor(medplum, transactions=True)
    written = await writer.apply([numbered(0, 5), numbered(1, 4), numbered(2, 3)], None)
    assert written == 12
    assert [len(call.entries) for call in medplum.calls] == [5, 7]
    assert all(call.kind == "transaction" for call in medplum.calls)
    assert writer.requests == 2


async def test_nothing_to_write_sends_nothing() -> None:
    medplum = FakeMedplum()
    for transactions in (True, False):
        assert await executor(medplum, transactions=transactions).apply([[], []], None) == 0
    assert medplum.calls == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("403 Forbidden", MedplumForbidden),
        ("400 Bad Request", MedplumBadRequest),
        ("412 Precondition Failed", MedplumPreconditionFailed),
    ],
)
async def test_a_failed_transaction_entry_raises_its_typed_error_and_stops(
    status: str, error: type[Exception]
) -> None:
    def answer(request: BundleRequest, number: int) -> JSONObject:
        return refused(status) if number == 2 else created(request, number)

    medplum = FakeMedplum(answer)
    writer = executor(medplum, transactions=True)
    with pytest.raises(error):
        await writer.apply([numbered(0, 5), numbered(1, 5)], None)
    # The second chunk is not sent after the first failed: the retry starts over.
    assert len(medplum.calls) == 1


# ---------------------------------------------------------------------- batches


async def test_batches_in_dependency_order_with_references_rewritten() -> None:
    medplum = FakeMedplum()
    writer = executor(medplum, transactions=False)
    # Listed against the dependency order on purpose.
    written = await writer.apply([[PROVENANCE, TASK, OBSERVATION], [CANCEL]], "trace-2")
    assert written == 4
    first, second, third = medplum.calls
    assert all(call.kind == "batch" and call.trace_id == "trace-2" for call in medplum.calls)
    assert writer.requests == 3

    assert resource_types(first) == ["Observation", "Task"]
    observation_sent, cancel_sent = first.entries
    assert observation_sent.if_none_exist == OBSERVATION.if_none_exist
    assert (cancel_sent.method, cancel_sent.url, cancel_sent.if_match) == (
        "PUT",
        "Task/old-1",
        'W/"3"',
    )
    observation_ref = "Observation/new-1"

    [task_sent] = second.entries
    assert task_sent.resource is not None
    assert task_sent.resource["focus"] == {"reference": observation_ref}
    assert task_sent.resource["for"] == {"reference": "Patient/p1"}
    assert task_sent.if_none_exist == TASK.if_none_exist

    [provenance_sent] = third.entries
    assert provenance_sent.resource is not None
    assert provenance_sent.resource["target"] == [
        {"reference": observation_ref},
        {"reference": "Task/new-3"},
    ]
    # A batch gives urn:uuid full URLs no meaning, and no urn may reach Medplum.
    for call in medplum.calls:
        for request in call.entries:
            assert request.full_url is None
            assert "urn:uuid:" not in str(request.resource)
    # The planned writes themselves are not changed (a retry plans from them again).
    assert TASK.resource["focus"] == {"reference": "urn:uuid:obs"}


async def test_an_existing_match_of_a_conditional_create_is_referenced() -> None:
    # A retried event: the proposal was created by the first run; the conditional create
    # answers 200 with it, and the Task must point at that one, not at a new resource.
    def answer(request: BundleRequest, number: int) -> JSONObject:
        if request.url == "Observation":
            return {"response": {"status": "200 OK", "location": "Observation/existing-9"}}
        return created(request, number)

    medplum = FakeMedplum(answer)
    await executor(medplum, transactions=False).apply([[OBSERVATION, TASK]], None)
    task_sent = medplum.calls[1].entries[0]
    assert task_sent.resource is not None
    assert task_sent.resource["focus"] == {"reference": "Observation/existing-9"}


async def test_an_unresolvable_urn_is_a_permanent_failure() -> None:
    orphan = PlannedWrite(
        "POST", {"resourceType": "Task", "focus": {"reference": "urn:uuid:nowhere"}}
    )
    medplum = FakeMedplum()
    with pytest.raises(PermanentFailure) as failed:
        await executor(medplum, transactions=False).apply([[OBSERVATION, orphan]], None)
    assert failed.value.error_code == "unresolvable_references"
    # What could be written was; the orphan never reached Medplum.
    assert [resource_types(call) for call in medplum.calls] == [["Observation"]]


async def test_a_failed_batch_entry_stops_before_the_dependants() -> None:
    def answer(request: BundleRequest, number: int) -> JSONObject:
        return refused("403 Forbidden") if request.url == "Task" else created(request, number)

    medplum = FakeMedplum(answer)
    with pytest.raises(MedplumForbidden):
        await executor(medplum, transactions=False).apply([[OBSERVATION, TASK, PROVENANCE]], None)
    assert [resource_types(call) for call in medplum.calls] == [["Observation"], ["Task"]]


def test_the_mode_follows_the_settings() -> None:
    for transactions in (True, False):
        context = HandlerContext(
            medplum=cast("MedplumClient", FakeMedplum()),
            settings=settings_for_tests(medplum_transactions=transactions),
            clock=lambda: datetime(2025, 1, 1, tzinfo=UTC),
        )
        assert writer_for(context).transactions is transactions


# ---------------------------------------------------------------------- chunking


def sizes_of(chunks: list[list[PlannedWrite]]) -> list[int]:
    return [len(chunk) for chunk in chunks]


def test_groups_are_packed_up_to_the_limit() -> None:
    assert MAX_CONDITIONAL_TRANSACTION_ENTRIES == 8  # Medplum's serialisable-transaction limit
    groups = [numbered(0, 3), numbered(1, 3), numbered(2, 3), numbered(3, 2)]
    assert sizes_of(chunk_for_transactions(groups)) == [6, 5]
    assert sizes_of(chunk_for_transactions([numbered(0, 4), numbered(1, 4)])) == [8]


def test_a_group_larger_than_the_limit_is_a_chunk_of_its_own() -> None:
    # It cannot be split (its writes refer to each other) and is sent as it is; nothing else
    # is added to it.
    big = numbered(1, 11)
    chunks = chunk_for_transactions([numbered(0, 2), big, numbered(2, 1)])
    assert chunks == [numbered(0, 2), big, numbered(2, 1)]


def test_no_groups_no_chunks() -> None:
    assert chunk_for_transactions([]) == []


@given(st.lists(st.integers(min_value=1, max_value=12), max_size=25))
def test_chunking_keeps_groups_whole_and_in_order(sizes: list[int]) -> None:
    groups = [numbered(index, size) for index, size in enumerate(sizes)]
    chunks = chunk_for_transactions(groups)
    limit = MAX_CONDITIONAL_TRANSACTION_ENTRIES

    # Every write once, in the planned order.
    assert [w for chunk in chunks for w in chunk] == [w for group in groups for w in group]
    # Each chunk is a run of whole groups.
    position = 0
    boundaries: list[int] = []
    for chunk in chunks:
        assert chunk
        members: list[int] = []
        taken = 0
        while taken < len(chunk):
            members.append(position)
            assert chunk[taken : taken + len(groups[position])] == groups[position]
            taken += len(groups[position])
            position += 1
        boundaries.append(len(members))
        # Within the limit, unless it is a single group that alone exceeds it.
        assert len(chunk) <= limit or (len(members) == 1 and len(groups[members[0]]) > limit)
    assert position == len(groups)
    # Packed greedily: a chunk is closed only when the next group does not fit into it, so
    # no more transactions are sent than needed.
    start = 0
    for chunk, count in zip(chunks[:-1], boundaries, strict=False):
        following = groups[start + count]
        assert len(chunk) + len(following) > limit
        start += count
