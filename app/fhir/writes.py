"""A write the service plans to send to Medplum (pure): the resource and the condition that
makes it idempotent (a conditional create) or safe against a concurrent edit (a version-guarded
update)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.fhir.resource_json import JSONObject


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    method: Literal["POST", "PUT"]
    resource: JSONObject
    full_url: str | None = None  # a urn:uuid other writes of the same transaction refer to
    if_none_exist: str | None = None  # conditional create
    if_match_version: str | None = None  # guarded update (PUT)
    # An AuditEvent sent whatever STARVIT_MEDPLUM_AUDIT_EVENTS says (an action with no
    # Provenance of its own, such as an escalation).
    audit_required: bool = False


def strip_meta(resource: JSONObject) -> JSONObject:
    """Drop server-managed meta (versionId, lastUpdated, author...) but keep the tags."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    stripped = {k: v for k, v in resource.items() if k != "meta"}
    if isinstance(tags, list):
        stripped["meta"] = {"tag": tags}
    return stripped
