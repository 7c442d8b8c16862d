"""The Synthea loader's writer through the partner API answers in Medplum's shapes, so the
loader's handling of refused entries works the same through the service."""

from __future__ import annotations

from app.integrations.medplum import MedplumBadRequest, MedplumForbidden, MedplumUnavailable
from devtools.partner_api import _error, _response  # pyright: ignore[reportPrivateUsage]


def test_an_outcome_becomes_a_bundle_response() -> None:
    response = _response(
        "transaction",
        {
            "entries": [
                {"index": 0, "action": "created", "status": 201, "reference": "Patient/p1"},
                {"index": 1, "action": "matched", "status": 200, "reference": "Observation/o1"},
                {
                    "index": 2,
                    "action": "failed",
                    "status": 429,
                    "error_code": "medplum_throttled",
                    "path": "Observation",
                },
            ]
        },
    )
    assert [(e.status_code, e.reference, e.created) for e in response.entries] == [
        (201, "Patient/p1", True),
        (200, "Observation/o1", False),
        (429, None, False),
    ]
    failed = response.entries[2].outcome
    assert failed is not None
    assert failed.codes == ("throttled",)


def test_refusals_become_medplums_errors_with_the_entries_paths() -> None:
    invalid = _error(
        422,
        {
            "error_code": "entry_invalid",
            "details": {
                "entries": [{"index": 3, "path": "Observation.component", "code": "fhir_invalid"}]
            },
        },
    )
    assert isinstance(invalid, MedplumBadRequest)
    assert invalid.operation_outcome is not None
    assert invalid.operation_outcome.issues[0].expression == ("Observation.component",)
    assert isinstance(_error(403, {"error_code": "entry_forbidden"}), MedplumForbidden)
    assert isinstance(_error(503, {"error_code": "dependency_unavailable"}), MedplumUnavailable)
