"""The scripted clinician's pure parts: PKCE, JWT claims, task rows and the rendered table."""

from __future__ import annotations

import base64
import hashlib
import json

from app.fhir.resource_json import JSONObject
from devtools.clinician import (
    TaskRow,
    describe,
    human_name,
    jwt_claims,
    pkce_pair,
    render_rows,
    task_row,
)

TASK: JSONObject = {
    "resourceType": "Task",
    "id": "t1",
    "meta": {"versionId": "v7"},
    "status": "requested",
    "intent": "proposal",
    "priority": "urgent",
    "code": {"text": "Confirm BMI 31.2 (obesity class I)"},
    "description": "Weight 90 kg and height 170 cm give a BMI of 31.2.",
    "for": {"reference": "Patient/p1"},
    "focus": {"reference": "Observation/o1"},
    "restriction": {"period": {"end": "2030-01-02T10:00:00Z"}},
}


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == digest.decode()
    assert pkce_pair()[0] != verifier


def test_jwt_claims_reads_the_payload() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"profile": "Practitioner/x"}).encode()).rstrip(
        b"="
    )
    assert jwt_claims(f"e30.{payload.decode()}.sig") == {"profile": "Practitioner/x"}
    assert jwt_claims("not-a-jwt") == {}


def test_human_name_prefers_official_and_text() -> None:
    assert human_name(
        {"name": [{"given": ["Zana914"], "family": "Gusikowski974", "prefix": ["Mrs."]}]}
    ) == ("Mrs. Zana914 Gusikowski974")
    assert (
        human_name({"name": [{"use": "maiden", "family": "A"}, {"use": "official", "text": "B C"}]})
        == "B C"
    )
    assert human_name({}) is None


def test_task_row_reads_what_the_provider_app_shows() -> None:
    row = task_row(TASK, {"Patient/p1": "Ada Lovelace"})
    assert row == TaskRow(
        id="t1",
        title="Confirm BMI 31.2 (obesity class I)",
        patient="Ada Lovelace",
        patient_reference="Patient/p1",
        priority="urgent",
        due="2030-01-02T10:00:00Z",
        rationale="Weight 90 kg and height 170 cm give a BMI of 31.2.",
        focus="Observation/o1",
        version="v7",
        status="requested",
    )
    bare = task_row({"resourceType": "Task", "id": "t2", "status": "ready"}, {})
    assert (bare.title, bare.patient, bare.priority, bare.due) == (
        "(untitled task)",
        "(no patient)",
        "routine",
        None,
    )


def test_render_rows_is_a_fixed_width_table_with_rationale() -> None:
    rows = [
        task_row(TASK, {"Patient/p1": "Ada Lovelace"}),
        task_row(
            {
                **TASK,
                "id": "t2",
                "priority": "routine",
                "code": {"text": "x" * 150},
                "description": None,
            },
            {},
        ),
    ]
    text = render_rows(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["Title", "Patient", "Priority", "Due"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "Confirm BMI 31.2 (obesity class I)" in lines[2]
    assert "Ada Lovelace" in lines[2]
    assert lines[2].rstrip().endswith("2030-01-02")
    assert lines[3].startswith("    why: Weight 90 kg")
    assert "…" in lines[4]  # the long title is clipped
    assert "Patient/p1" in lines[4]
    # columns line up: Due starts at the same offset in every row
    offset = lines[0].index("Due")
    assert lines[2][offset:] == "2030-01-02"
    assert lines[4][offset:] == "2030-01-02"
    assert all(len(line) <= 100 for line in lines)
    assert render_rows([]) == "No pending review tasks."


def test_describe_summarises_a_resource() -> None:
    line = describe(
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "preliminary",
            "code": {"coding": [{"code": "85354-9", "display": "Blood pressure panel"}]},
            "component": [
                {"code": {"text": "Systolic"}, "valueQuantity": {"value": 150, "unit": "mm[Hg]"}},
                {"code": {"text": "Diastolic"}, "valueQuantity": {"value": 95, "unit": "mm[Hg]"}},
            ],
            "effectiveDateTime": "2020-05-01",
        }
    )
    assert line == (
        "Observation/o1 status=preliminary code=85354-9 Blood pressure panel "
        "value=Systolic 150 mm[Hg]; Diastolic 95 mm[Hg] at 2020-05-01"
    )
