"""Splitting Synthea-style bundles into chunks Medplum accepts (``devtools.synthea``).

Synthetic bundles only: sizes near the 1 MB limit, conditional entries, forward references and
cycles. A simulated server assigns ids chunk by chunk, the way the loader learns them from each
transaction response, to check that every reference ends up pointing at a created resource."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    dumps,
    get_object,
    get_objects,
    get_str,
    iter_references,
    rewrite_references,
)
from app.integrations.medplum import MAX_JSON_BODY_BYTES
from devtools import synthea
from devtools.synthea import (
    BundleSplitError,
    Chunk,
    SyntheaError,
    is_conditional_entry,
    split_bundle,
)

_ids = itertools.count(1)


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def entry(
    resource: JSONObject, *, full_url: str | None = None, if_none_exist: str | None = None
) -> JSONObject:
    request: JSONObject = {"method": "POST", "url": str(resource["resourceType"])}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url or urn(), "resource": resource, "request": request}


def patient_bundle(
    observations: int, *, padding: int = 0, bundle_type: str = "transaction"
) -> JSONObject:
    """Patient, an Encounter, ``observations`` Observations (each ``padding`` bytes of text),
    and a Provenance targeting everything (as Synthea ends its bundles)."""
    patient_url, encounter_url = urn(), urn()
    entries = [
        entry({"resourceType": "Patient", "name": [{"family": "Test"}]}, full_url=patient_url),
        entry(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "subject": {"reference": patient_url},
                "participant": [
                    {
                        "individual": {
                            "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1"
                        }
                    }
                ],
            },
            full_url=encounter_url,
        ),
    ]
    for i in range(observations):
        entries.append(
            entry(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": f"obs {i}"},
                    "subject": {"reference": patient_url},
                    "encounter": {"reference": encounter_url},
                    "note": [{"text": "x" * padding}],
                }
            )
        )
    entries.append(
        entry(
            {
                "resourceType": "Provenance",
                "target": [{"reference": str(e["fullUrl"])} for e in entries],
                "recorded": "2021-07-10T00:00:00Z",
            }
        )
    )
    return make_bundle(entries, bundle_type)


def make_bundle(entries: list[JSONObject], bundle_type: str = "transaction") -> JSONObject:
    return {"resourceType": "Bundle", "type": bundle_type, "entry": list[JSONValue](entries)}


def entry_count(bundle: JSONObject) -> int:
    return len(get_objects(bundle, "entry"))


def simulate_load(
    chunks: list[Chunk], resolved: dict[str, str] | None = None
) -> tuple[dict[str, str], list[JSONObject]]:
    """Post the chunks to an imaginary server: rewrite with what is known, check the body, then
    learn the ids of the chunk's entries. Returns the urn map and the stored resources."""
    known = dict(resolved or {})
    stored: list[JSONObject] = []
    for chunk in chunks:
        posted = [rewrite_references(e, known) for e in chunk.entries]
        body = dumps({"resourceType": "Bundle", "type": chunk.bundle_type, "entry": posted})
        assert len(body) < MAX_JSON_BODY_BYTES
        assert len(body) <= chunk.estimated_bytes
        in_chunk: dict[str, str] = {}
        for e in posted:
            assert isinstance(e, dict)
            resource = get_object(e, "resource")
            assert resource is not None
            in_chunk[str(e["fullUrl"])] = f"{resource['resourceType']}/srv-{next(_ids)}"
        for e in posted:
            assert isinstance(e, dict)
            # the server rewrites references to entries of the same chunk
            final = rewrite_references(e, in_chunk)
            assert isinstance(final, dict)
            resource = get_object(final, "resource")
            assert resource is not None
            stored.append(resource)
        known.update(in_chunk)
    return known, stored


def test_a_small_bundle_is_one_chunk_with_entries_in_their_order() -> None:
    bundle = patient_bundle(5)
    chunks = split_bundle(bundle)
    assert len(chunks) == 1
    assert chunks[0].positions == tuple(range(8))
    assert not chunks[0].conditional


def test_every_chunk_stays_under_the_limit_and_references_resolve() -> None:
    bundle = patient_bundle(300, padding=10_000)  # about 3 MB
    assert len(dumps(bundle)) > 3 * MAX_JSON_BODY_BYTES - 200_000
    chunks = split_bundle(
        bundle,
        resolved={"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1": "Practitioner/p1"},
    )
    assert len(chunks) >= 4
    assert all(c.estimated_bytes < synthea.DEFAULT_MAX_CHUNK_BYTES for c in chunks)
    positions = [p for c in chunks for p in c.positions]
    assert sorted(positions) == list(range(entry_count(bundle)))
    urns, stored = simulate_load(chunks)
    assert len(stored) == 303
    for resource in stored:
        for reference in iter_references(resource):
            assert not reference.startswith("urn:uuid:")
            assert "?" not in reference
    # the Provenance (last chunk) points at every created resource
    provenance = stored[-1]
    assert provenance["resourceType"] == "Provenance"
    targets = {get_str(t, "reference") for t in get_objects(provenance, "target")}
    assert targets == {v for k, v in urns.items() if not v.startswith("Provenance/")}


def test_a_chunk_with_a_conditional_entry_has_at_most_8_entries() -> None:
    entries = [
        entry(
            {"resourceType": "Practitioner", "identifier": [{"system": "npi", "value": str(i)}]},
            if_none_exist=f"identifier=npi|{i}",
        )
        for i in range(20)
    ]
    plain = [
        entry({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
        for _ in range(30)
    ]
    bundle: JSONObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [*plain, *entries],
    }
    chunks = split_bundle(bundle)
    for chunk in chunks:
        if any(is_conditional_entry(e) for e in chunk.entries):
            assert chunk.conditional
            assert len(chunk) <= 8
    assert sum(len(c) for c in chunks) == 50
    # the 30 plain entries travel together; the 20 conditional ones in chunks of 8
    assert [len(c) for c in chunks] == [30, 8, 8, 4]


def test_a_batch_is_not_held_to_the_conditional_transaction_limit() -> None:
    entries = [
        entry({"resourceType": "Organization", "name": str(i)}, if_none_exist=f"identifier=org|{i}")
        for i in range(40)
    ]
    chunks = split_bundle({"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert [len(c) for c in chunks] == [40]


def test_at_most_50_updates_per_transaction_chunk() -> None:
    entries: list[JSONObject] = [
        {
            "resource": {"resourceType": "Patient", "id": f"p{i}"},
            "request": {"method": "PUT", "url": f"Patient/p{i}"},
        }
        for i in range(120)
    ]
    chunks = split_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert [len(c) for c in chunks] == [50, 50, 20]


def test_a_forward_reference_moves_the_referenced_entry_first() -> None:
    report_url, obs_url, patient_url = urn(), urn(), urn()
    entries = [
        entry({"resourceType": "Patient"}, full_url=patient_url),
        entry(
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "result": [{"reference": obs_url}],
            },
            full_url=report_url,
        ),
        entry(
            {
                "resourceType": "Observation",
                "subject": {"reference": patient_url},
                "note": [{"text": "y" * 500}],
            },
            full_url=obs_url,
        ),
    ]
    bundle = make_bundle(entries)
    chunks = split_bundle(bundle, max_bytes=900)  # one entry a chunk
    order = [p for c in chunks for p in c.positions]
    assert order == [0, 2, 1]
    _, stored = simulate_load(chunks)
    report = next(r for r in stored if r["resourceType"] == "DiagnosticReport")
    result = get_str(get_objects(report, "result")[0], "reference")
    assert result is not None
    assert result.startswith("Observation/srv-")


def test_a_reference_cycle_stays_in_one_chunk() -> None:
    a, b = urn(), urn()
    entries = [
        entry({"resourceType": "Observation", "note": [{"text": "z" * 300}]}) for _ in range(3)
    ]
    entries += [
        entry({"resourceType": "Observation", "hasMember": [{"reference": b}]}, full_url=a),
        entry({"resourceType": "Observation", "derivedFrom": [{"reference": a}]}, full_url=b),
    ]
    chunks = split_bundle(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}, max_bytes=800
    )
    together = [c for c in chunks if 3 in c.positions]
    assert len(together) == 1
    assert 4 in together[0].positions
    _, stored = simulate_load(chunks)
    for resource in stored:
        assert not any(r.startswith("urn:") for r in iter_references(resource))


def test_an_unknown_urn_reference_is_refused() -> None:
    bundle: JSONObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry({"resourceType": "Observation", "subject": {"reference": urn()}})],
    }
    with pytest.raises(BundleSplitError, match=r"entry 0 \(Observation\)"):
        split_bundle(bundle)


def test_a_urn_created_by_an_earlier_bundle_is_rewritten_at_once() -> None:
    earlier = urn()
    bundle: JSONObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry({"resourceType": "Observation", "performer": [{"reference": earlier}]})],
    }
    chunks = split_bundle(bundle, resolved={earlier: "Practitioner/abc"})
    resource = get_object(chunks[0].entries[0], "resource")
    assert resource is not None
    assert list(iter_references(resource)) == ["Practitioner/abc"]


def test_an_entry_too_large_for_any_chunk_is_refused() -> None:
    bundle: JSONObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry({"resourceType": "Observation", "note": [{"text": "x" * 1_000_000}]})],
    }
    with pytest.raises(BundleSplitError, match="does not fit"):
        split_bundle(bundle)


def test_rewriting_touches_only_reference_members() -> None:
    target = urn()
    resource: JSONObject = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": target}],
        "context": {"encounter": [{"reference": target}]},
    }
    rewritten = rewrite_references(resource, {target: "Encounter/e1"})
    assert rewritten == {
        "resourceType": "DocumentReference",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": target}],
        "context": {"encounter": [{"reference": "Encounter/e1"}]},
    }
    assert resource["context"] == {"encounter": [{"reference": target}]}  # input untouched


def test_conditional_entries_are_recognised() -> None:
    assert is_conditional_entry(
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|b"}}
    )
    assert is_conditional_entry({"request": {"method": "PUT", "url": "Patient?identifier=a|b"}})
    assert is_conditional_entry({"request": {"method": "DELETE", "url": "Patient?identifier=a|b"}})
    assert not is_conditional_entry({"request": {"method": "POST", "url": "Patient"}})
    assert not is_conditional_entry({"request": {"method": "PUT", "url": "Patient/1"}})
    assert synthea.is_conditional_reference(
        "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9"
    )
    assert not synthea.is_conditional_reference("Practitioner/9")


# --- files -------------------------------------------------------------------------------------


def test_synthea_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STARVIT_SYNTHEA_DIR", str(tmp_path))
    assert synthea.synthea_dir() == tmp_path


def test_a_missing_synthea_dir_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STARVIT_SYNTHEA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SyntheaError, match="STARVIT_SYNTHEA_DIR"):
        synthea.synthea_dir()


def test_the_default_dir_is_shared_data_next_to_the_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STARVIT_SYNTHEA_DIR", raising=False)
    expected = Path(synthea.__file__).resolve().parents[1].parent / "shared" / "data" / "synthea"
    if expected.is_dir():
        assert synthea.synthea_dir() == expected
    else:
        with pytest.raises(SyntheaError):
            synthea.synthea_dir()


def test_support_bundles_come_first_then_sorted_patients(tmp_path: Path) -> None:
    for name in (
        "b-patient.json",
        "0-practitionerInformation1.json",
        "a-patient.json",
        "0-hospitalInformation1.json",
        "notes.md",
    ):
        (tmp_path / name).write_text("{}")
    files = [p.name for p in synthea.bundle_files(tmp_path)]
    assert files == [
        "0-hospitalInformation1.json",
        "0-practitionerInformation1.json",
        "a-patient.json",
        "b-patient.json",
    ]
    assert [p.name for p in synthea.bundle_files(tmp_path, patients=1)][-1] == "a-patient.json"
    assert len(synthea.bundle_files(tmp_path, patients=1)) == 3
    assert [p.name for p in synthea.bundle_files(tmp_path, only=["b-"], include_support=False)] == [
        "b-patient.json"
    ]
    with pytest.raises(SyntheaError, match="starts with"):
        synthea.bundle_files(tmp_path, only=["zzz"])


def test_real_bundles_split_within_limits() -> None:
    """Every real Synthea patient bundle, split with its conditional references stubbed."""
    try:
        directory = synthea.synthea_dir()
    except SyntheaError:
        pytest.skip("Synthea data not available")
    for path in synthea.patient_bundles(directory)[:3]:
        bundle = synthea.read_bundle(path)
        stub = {
            ref: f"{ref.split('?')[0]}/{'0' * 36}"
            for ref in iter_references(bundle)
            if synthea.is_conditional_reference(ref)
        }
        chunks = split_bundle(bundle, resolved=stub)
        urns, stored = simulate_load(chunks, stub)
        assert len(stored) == entry_count(bundle)
        for resource in stored:
            assert all(not r.startswith("urn:") and "?" not in r for r in iter_references(resource))
        assert get_str(stored[0], "resourceType") == "Patient"
        assert urns
