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
