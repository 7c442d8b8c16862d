"""The service's FHIR identity: the identifier systems, tags and extension URLs everything it
writes carries, and the deterministic keys derived from them (pure).

Identifiers are deterministic (handler, version, patient, slot, evidence versions), so a
replayed or re-delivered event writes nothing new: every write is conditional on them.
"""

from __future__ import annotations

import hashlib
import uuid

from app.fhir.resource_json import JSONObject

# The base of every identifier system, code system and extension the service defines (a URL it
# owns; FHIR only requires it to be unique).
IDENTIFIER_BASE = "https://fhir.starvit.health"
PROPOSAL_SYSTEM = f"{IDENTIFIER_BASE}/sid/proposal"  # Observation / ServiceRequest / CarePlan
TASK_SYSTEM = f"{IDENTIFIER_BASE}/sid/review-task"
PROVENANCE_SYSTEM = f"{IDENTIFIER_BASE}/sid/provenance"
BOT_DEVICE_SYSTEM = f"{IDENTIFIER_BASE}/sid/bot"
TASK_CODE_SYSTEM = f"{IDENTIFIER_BASE}/CodeSystem/review-task"
STATUS_REASON_SYSTEM = f"{IDENTIFIER_BASE}/CodeSystem/status-reason"
HANDLER_CODE_SYSTEM = f"{IDENTIFIER_BASE}/CodeSystem/handler"
SUPERSEDED_BY_URL = f"{IDENTIFIER_BASE}/StructureDefinition/superseded-by"
BOT_VERSION_URL = f"{IDENTIFIER_BASE}/StructureDefinition/bot-version"
# On a review Task: the clinical time (effective time) of the newest evidence of its suggestion,
# so that a late-arriving older result never supersedes a suggestion from newer evidence.
EVIDENCE_TIME_URL = f"{IDENTIFIER_BASE}/StructureDefinition/evidence-time"
TAG_SYSTEM = f"{IDENTIFIER_BASE}/CodeSystem/tags"
TAG_CODE = "starvit-generated"
RUN_SYSTEM = f"{IDENTIFIER_BASE}/sid/run"
UUID_NAMESPACE = uuid.UUID("9f0c3a55-8e1e-4a33-9a57-3e3f0e0c7a10")


def tag() -> JSONObject:
    """The tag on everything the service writes (Subscriptions exclude it; the review
    Subscription selects the service's Tasks by it)."""
    return {"system": TAG_SYSTEM, "code": TAG_CODE}


def task_code(bot: str, slot: str) -> str:
    return f"{bot}.{slot}"


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def urn(key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(UUID_NAMESPACE, key)}"
