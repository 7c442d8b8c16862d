"""The client counts FHIR quota points as Medplum charges them (medplum-facts.md §7): what a
bundle entry costs before the answer is known, and what the answer adds or takes away."""

from __future__ import annotations

from app.integrations.medplum import BundleRequest
from app.integrations.medplum.client import _answer_points, _entry_points
from app.integrations.medplum.results import parse_bundle_response


def test_points_per_bundle_entry() -> None:
    assert _entry_points(BundleRequest.read("Patient", "p1")) == 1
    assert _entry_points(BundleRequest.vread("Observation", "o1", "v1")) == 1
    assert _entry_points(BundleRequest("GET", "Task/t1/_history?_count=50")) == 10
    assert _entry_points(BundleRequest("GET", "Task/_history")) == 10
    assert _entry_points(BundleRequest.search("Task", "subject=Patient/p1")) == 20
    assert _entry_points(BundleRequest.create({"resourceType": "Task"})) == 100
    conditional = BundleRequest.create({"resourceType": "Task"}, if_none_exist="identifier=a|b")
    assert _entry_points(conditional) == 140, "two searches and the write, inside a bundle"
    assert (
        _entry_points({"request": {"method": "POST", "url": "Task", "ifNoneExist": "x=y"}}) == 140
    )
    update = BundleRequest.update({"resourceType": "Task", "id": "t1"}, if_match_version="3")
    assert _entry_points(update) == 100


def test_the_answer_adds_included_resources_and_removes_a_matched_write() -> None:
    search = BundleRequest.search("Task", "subject=Patient/p1&_include=Task:focus")
    conditional = BundleRequest.create({"resourceType": "Task"}, if_none_exist="identifier=a|b")
    fresh = BundleRequest.create({"resourceType": "Task"}, if_none_exist="identifier=a|c")
    page = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Task", "id": "t1"}, "search": {"mode": "match"}},
            {
                "resource": {"resourceType": "Observation", "id": "o1"},
                "search": {"mode": "include"},
            },
            {
                "resource": {"resourceType": "Observation", "id": "o2"},
                "search": {"mode": "include"},
            },
        ],
    }
    response = parse_bundle_response(
        {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"resource": page, "response": {"status": "200 OK"}},
                {
                    "resource": {"resourceType": "Task", "id": "t9"},
                    "response": {"status": "200 OK"},
                },
                {
                    "resource": {"resourceType": "Task", "id": "t10"},
                    "response": {"status": "201 Created"},
                },
            ],
        }
    )
    assert _answer_points([search, conditional, fresh], response) == 2 - 100
