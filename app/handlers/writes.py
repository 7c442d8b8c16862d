"""Sending planned writes to Medplum: one transaction per chunk when the project has the
``transaction-bundles`` feature, otherwise batches in dependency order.

What the writes cost (Medplum's FHIR quota): a plain create, update or delete 100 points, a
conditional create inside a bundle 140 (two searches and the write), and a transaction with
conditional entries runs serialisable (conflicts, retried and charged again by Medplum). So:

* a transaction that carries a version-guarded update (``If-Match``) is idempotent as a whole:
  replayed after it committed, the guard fails (412) and nothing is written twice. Its
  conditional creates are sent as plain creates;
* a handler that has established that its creates are new (the ledger of derived writes, or a
  search it made anyway) asks for plain creates (``plain_creates``);
* AuditEvents follow ``STARVIT_MEDPLUM_AUDIT_EVENTS``: with ``failures`` (the default) only an
  event whose action failed or was refused (outcome 4) gets one; a success is recorded by its
  Provenance (inputs, outputs, bot version) and every event's outcome by the events table. An
  action without a Provenance of its own (an escalation) marks its AuditEvent
  ``audit_required`` and is always audited.

None of this applies to batches (no transaction-bundles feature): entries there can partially
succeed, so every create stays conditional."""

from __future__ import annotations

from dataclasses import replace

from app.fhir.resource_json import JSONObject, iter_references, rewrite_resource
from app.fhir.writes import PlannedWrite
from app.handlers.protocol import HandlerContext, PermanentFailure
from app.integrations.medplum import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    BundleRequest,
    MedplumClient,
)


def to_request(write: PlannedWrite) -> BundleRequest:
    if write.method == "POST":
        return BundleRequest.create(
            write.resource, if_none_exist=write.if_none_exist, full_url=write.full_url
        )
    return BundleRequest.update(
        write.resource, if_match_version=write.if_match_version, full_url=write.full_url
    )


def audited(write: PlannedWrite, policy: str) -> bool:
    """Whether an AuditEvent write is sent under the audit policy (other writes always are)."""
    if write.resource.get("resourceType") != "AuditEvent" or policy == "all":
        return True
    if write.audit_required:
        return True
    return write.resource.get("outcome") != "0"


def plain(write: PlannedWrite) -> PlannedWrite:
    if write.method != "POST" or write.if_none_exist is None:
        return write
    return replace(write, if_none_exist=None)


def guarded(chunk: list[PlannedWrite]) -> bool:
    """A chunk with a version-guarded update cannot commit twice."""
    return any(w.method == "PUT" and w.if_match_version is not None for w in chunk)


def chunk_for_transactions(groups: list[list[PlannedWrite]]) -> list[list[PlannedWrite]]:
    """Pack groups of writes (each must stay together: they reference each other by
    ``urn:uuid``) into transactions Medplum accepts (at most 8 entries with any conditional)."""
    chunks: list[list[PlannedWrite]] = []
    current: list[PlannedWrite] = []
    for group in groups:
        if current and len(current) + len(group) > MAX_CONDITIONAL_TRANSACTION_ENTRIES:
            chunks.append(current)
            current = []
        current = [*current, *group]
    if current:
        chunks.append(current)
    return chunks


class WriteExecutor:
    """Sends planned writes: one transaction per chunk when the project has
    ``transaction-bundles``; otherwise batches in dependency order (proposals, then the Task
    that focuses on them, then the Provenance naming both), every entry conditional or
    version-guarded, so a partial failure heals on retry."""

    def __init__(
        self, medplum: MedplumClient, *, transactions: bool, audit_events: str = "all"
    ) -> None:
        self.medplum = medplum
        self.transactions = transactions
        self.audit_events = audit_events
        self.requests = 0

    async def apply(
        self,
        groups: list[list[PlannedWrite]],
        trace_id: str | None,
        *,
        plain_creates: bool = False,
    ) -> int:
        groups = [[w for w in g if audited(w, self.audit_events)] for g in groups]
        groups = [g for g in groups if g]
        if not groups:
            return 0
        if self.transactions:
            for chunk in chunk_for_transactions(groups):
                if plain_creates or guarded(chunk):
                    chunk = [plain(w) for w in chunk]  # noqa: PLW2901
                self.requests += 1
                response = await self.medplum.transaction(
                    [to_request(w) for w in chunk], trace_id=trace_id
                )
                response.raise_for_failed(operation="transaction")
            return sum(len(g) for g in groups)
        return await self._in_dependency_order([w for g in groups for w in g], trace_id)

    async def _in_dependency_order(self, writes: list[PlannedWrite], trace_id: str | None) -> int:
        mapping: dict[str, str] = {}
        remaining: list[PlannedWrite] = list(writes)
        while remaining:
            ready: list[PlannedWrite] = [
                w for w in remaining if urns_in(w.resource) <= mapping.keys()
            ]
            if not ready:
                raise PermanentFailure("unresolvable_references")
            remaining = [w for w in remaining if w not in ready]
            resolved = [
                PlannedWrite(
                    w.method,
                    rewrite_resource(w.resource, mapping),
                    None,  # a batch gives urn:uuid full URLs no meaning
                    w.if_none_exist,
                    w.if_match_version,
                )
                for w in ready
            ]
            self.requests += 1
            response = await self.medplum.batch(
                [to_request(w) for w in resolved], trace_id=trace_id
            )
            response.raise_for_failed(operation="batch")
            for write, entry in zip(ready, response.entries, strict=True):
                if write.full_url and entry.reference:
                    mapping[write.full_url] = entry.reference
        return len(writes)


def urns_in(resource: JSONObject) -> set[str]:
    return {ref for ref in iter_references(resource) if ref.startswith("urn:uuid:")}


def writer_for(context: HandlerContext) -> WriteExecutor:
    """A fresh executor for one event (it counts that event's Medplum requests)."""
    return WriteExecutor(
        context.medplum,
        transactions=context.settings.medplum_transactions,
        audit_events=context.settings.medplum_audit_events,
    )
