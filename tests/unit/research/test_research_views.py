"""The SQL-on-FHIR v2 runner on the features the shipped views use."""

from __future__ import annotations

from datetime import date

import pytest

from app.research.views.runner import ViewDefinitionError, load_views, parse_view


def test_select_foreach_or_null_where_and_constants() -> None:
    view = parse_view(
        {
            "resourceType": "ViewDefinition",
            "name": "obs",
            "resource": "Observation",
            "constant": [{"name": "loinc", "valueString": "http://loinc.org"}],
            "where": [{"path": "status = 'final'"}],
            "select": [
                {
                    "column": [
                        {"name": "id", "path": "getResourceKey()"},
                        {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                        {"name": "when", "path": "effectiveDateTime", "type": "date"},
                    ]
                },
                {
                    "forEachOrNull": "code.coding.where(system = %loinc)",
                    "column": [{"name": "code", "path": "code"}],
                },
                {
                    "forEach": "component",
                    "column": [{"name": "value", "path": "valueQuantity.value", "type": "decimal"}],
                },
            ],
        }
    )
    base = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T03:04:05Z",
        "component": [{"valueQuantity": {"value": 120}}, {"valueQuantity": {"value": 80}}],
    }
    rows = view.run(
        [
            {
                **base,
                "id": "a",
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            },
            {**base, "id": "b", "code": {"coding": [{"system": "urn:other", "code": "x"}]}},
            {**base, "id": "c", "status": "preliminary"},
            {**base, "id": "d", "component": []},
            {"resourceType": "Patient", "id": "p1"},
        ]
    )
    assert rows == [
        {"id": "a", "patient": "p1", "when": date(2024, 1, 2), "code": "85354-9", "value": 120.0},
        {"id": "a", "patient": "p1", "when": date(2024, 1, 2), "code": "85354-9", "value": 80.0},
        {"id": "b", "patient": "p1", "when": date(2024, 1, 2), "code": None, "value": 120.0},
        {"id": "b", "patient": "p1", "when": date(2024, 1, 2), "code": None, "value": 80.0},
    ]


def test_unsupported_features_and_ambiguous_columns_are_refused() -> None:
    with pytest.raises(ViewDefinitionError, match="unionAll"):
        parse_view({"name": "v", "resource": "Patient", "select": [{"unionAll": [], "column": []}]})
    view = parse_view(
        {
            "name": "v",
            "resource": "Patient",
            "select": [
                {"column": [{"name": "id", "path": "id"}, {"name": "n", "path": "name.family"}]}
            ],
        }
    )
    with pytest.raises(ViewDefinitionError, match="several values"):
        view.run(
            [{"resourceType": "Patient", "id": "x", "name": [{"family": "a"}, {"family": "b"}]}]
        )


def test_the_shipped_views_load_and_start_with_the_resource_key() -> None:
    views = {v.name: v for v in load_views()}
    assert set(views) == {
        "patient",
        "observation",
        "observation_component",
        "condition",
        "derived_metric",
    }
    assert all(v.columns[0] == ("id", "string") for v in views.values())
    derived = views["derived_metric"].run(
        [
            {
                "resourceType": "Observation",
                "id": "m1",
                "meta": {
                    "tag": [
                        {
                            "system": "https://fhir.starvit.health/CodeSystem/tags",
                            "code": "starvit-generated",
                        }
                    ]
                },
                "status": "preliminary",
                "code": {"coding": [{"code": "62238-1"}]},
                "subject": {"reference": "Patient/p"},
                "device": {
                    "identifier": {
                        "system": "https://fhir.starvit.health/sid/bot",
                        "value": "egfr@2.0.0",
                    }
                },
                "valueQuantity": {"value": 48, "code": "mL/min/{1.73_m2}"},
            }
        ]
    )
    assert derived[0]["bot"] == "egfr@2.0.0"
    assert derived[0]["value"] == 48.0


def test_a_bots_result_survives_de_identification_into_the_derived_metric_view() -> None:
    from app.botkit.identifiers import BOT_DEVICE_SYSTEM, PROPOSAL_SYSTEM, tag  # noqa: PLC0415
    from app.research.deid import AllowListDeidentifier, Deidentified, load_policy  # noqa: PLC0415
    from app.research.keys import PseudonymKey  # noqa: PLC0415

    # the shape app.botkit.resources.observation writes
    proposal = {
        "resourceType": "Observation",
        "id": "egfr-1",
        "meta": {"tag": [tag()]},
        "identifier": [{"system": PROPOSAL_SYSTEM, "value": "key-1"}],
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1", "display": "eGFR"}]},
        "subject": {"reference": "Patient/p-7"},
        "effectiveDateTime": "2025-02-03T10:00:00+00:00",
        "derivedFrom": [{"reference": "Observation/creatinine-1"}],
        "device": {
            "type": "Device",
            "identifier": {"system": BOT_DEVICE_SYSTEM, "value": "egfr@2.1.0"},
            "display": "Starvit bot egfr 2.1.0",
        },
        "valueQuantity": {
            "value": 52,
            "unit": "mL/min/{1.73_m2}",
            "system": "http://unitsofmeasure.org",
            "code": "mL/min/{1.73_m2}",
        },
        "interpretation": [{"text": "G3a"}],
    }
    engine = AllowListDeidentifier(load_policy(), PseudonymKey("v1", b"k" * 32))
    outcome = engine.deidentify(proposal)
    assert isinstance(outcome, Deidentified)
    views = {v.name: v for v in load_views()}
    rows = views["derived_metric"].run([outcome.resource])
    assert views["observation"].run([outcome.resource]) == []  # not counted as a measurement
    assert len(rows) == 1
    row = rows[0]
    assert row["bot"] == "egfr@2.1.0"
    assert row["status"] == "preliminary"
    assert row["value"] == 52.0
    assert row["patient_id"] == engine.pseudonyms.pseudonym("Patient", "p-7")
    assert "identifier" not in outcome.resource
    assert outcome.resource["derivedFrom"] == [
        {"reference": f"Observation/{engine.pseudonyms.pseudonym('Observation', 'creatinine-1')}"}
    ]
