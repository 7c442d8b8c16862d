"""Medplum (FHIR R4) client: the only code in the service that opens connections to Medplum."""

from app.domain.fhir_json import JSONArray, JSONObject, JSONScalar, JSONValue
from app.integrations.medplum.client import MAX_JSON_BODY_BYTES, MedplumClient, SearchParams
from app.integrations.medplum.config import MedplumClientConfig
from app.integrations.medplum.errors import (
    MedplumBadRequest,
    MedplumConflict,
    MedplumError,
    MedplumForbidden,
    MedplumNotFound,
    MedplumPreconditionFailed,
    MedplumRateLimited,
    MedplumRequestTooLarge,
    MedplumUnavailable,
    OperationOutcomeSummary,
    OutboundHostNotAllowed,
    OutcomeIssue,
)
from app.integrations.medplum.results import (
    MAX_CONDITIONAL_TRANSACTION_ENTRIES,
    BundleEntryResult,
    BundleRequest,
    BundleResponse,
    CreateResult,
    JsonPatchOperation,
    ResourceResult,
    SearchResult,
)

__all__ = [
    "MAX_CONDITIONAL_TRANSACTION_ENTRIES",
    "MAX_JSON_BODY_BYTES",
    "BundleEntryResult",
    "BundleRequest",
    "BundleResponse",
    "CreateResult",
    "JSONArray",
    "JSONObject",
    "JSONScalar",
    "JSONValue",
    "JsonPatchOperation",
    "MedplumBadRequest",
    "MedplumClient",
    "MedplumClientConfig",
    "MedplumConflict",
    "MedplumError",
    "MedplumForbidden",
    "MedplumNotFound",
    "MedplumPreconditionFailed",
    "MedplumRateLimited",
    "MedplumRequestTooLarge",
    "MedplumUnavailable",
    "OperationOutcomeSummary",
    "OutboundHostNotAllowed",
    "OutcomeIssue",
    "ResourceResult",
    "SearchParams",
    "SearchResult",
]
