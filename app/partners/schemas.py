"""What the partner API answers (the OpenAPI contract). Nothing here carries a value from a
posted resource: entry indexes, resource types, ``Type/id`` references, statuses, codes."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

EntryAction = Literal[
    "created",
    "matched",
    "updated",
    "failed",
    "would_create",
    "would_match",
    "would_update",
    "ambiguous",
]


class BundleEntryOutcome(BaseModel):
    index: int = Field(description="The entry's position in the posted bundle (from 0).")
    resource_type: str
    action: EntryAction = Field(
        description="created: a new resource; matched: a resource with the entry's identifier "
        "already existed (nothing written); updated: a PUT applied; failed: Medplum refused this "
        "entry of a batch; would_create / would_match / would_update / ambiguous: what a dry "
        "run found (ambiguous: several resources carry the identifier, the create would fail)."
    )
    status: int | None = Field(default=None, description="Medplum's status for the entry.")
    reference: str | None = Field(default=None, description="Type/id of the resource.")
    error_code: str | None = Field(default=None, description="Why the entry failed.")
    path: str | None = Field(default=None, description="The element Medplum objected to.")


class BundleOutcome(BaseModel):
    id: uuid.UUID = Field(description="The request's bundle id (GET /v1/bundles/{id}).")
    status: Literal["completed", "partial", "dry_run", "running"] = Field(
        description="completed: every entry written or matched; partial: some entries of a "
        "batch failed (see entries); dry_run: nothing written; running: not finished yet."
    )
    bundle_type: Literal["batch", "transaction"] | None = None
    dry_run: bool = False
    counts: dict[str, int] = Field(
        default_factory=dict[str, int], description="Entries by resource type."
    )
    entries: list[BundleEntryOutcome]


class EntryError(BaseModel):
    """One item of ``details.entries`` in an error envelope."""

    index: int = Field(description="The entry's position (-1: the bundle itself).")
    fullUrl: str | None = Field(default=None, description="The entry's fullUrl as posted.")
    path: str = Field(description="The element, e.g. Observation.valueQuantity.code.")
    code: str = Field(description="Stable code, e.g. unit_wrong_for_code.")
