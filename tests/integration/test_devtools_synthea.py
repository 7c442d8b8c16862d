"""Loading real Synthea bundles into the Medplum stand-in as the partner ``partner-acme``.

One patient (the smallest bundle with Observations) after the practitioner and hospital
bundles, split into small chunks on purpose so that references cross chunk boundaries."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str, iter_references
from app.integrations.medplum import BundleRequest, MedplumClient, MedplumClientConfig
from devtools import synthea
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, DevServer
from devtools.synthea import LoadSummary, SyntheaLoadError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer.start() as running:
        yield running


def _observation_count(path: Path) -> int:
    bundle = synthea.read_bundle(path)
    return sum(
        1
        for e in get_objects(bundle, "entry")
        if (r := e.get("resource"))
        and isinstance(r, dict)
        and r.get("resourceType") == "Observation"
    )


def smallest_patient_with_observations() -> Path:
    try:
        synthea.synthea_dir()
    except synthea.SyntheaError as error:
        pytest.skip(str(error))
    candidates = sorted(
        synthea.patient_bundles(synthea.synthea_dir()), key=lambda p: p.stat().st_size
    )
    return next(p for p in candidates if _observation_count(p) > 0)


@dataclass
class Loaded:
    summary: LoadSummary
    lines: list[str]
    path: Path
    bundle: JSONObject

    @property
    def patient(self) -> str:
        return f"Patient/{self.summary.patient_ids[0]}"


@pytest.fixture(scope="module")
async def partner(server: DevServer) -> AsyncIterator[MedplumClient]:
    async with MedplumClient(synthea.partner_config(server.base_url)) as client:
        yield client


@pytest.fixture(scope="module")
async def loaded(partner: MedplumClient) -> Loaded:
    path = smallest_patient_with_observations()
    lines: list[str] = []
    # 200 KB chunks: the patient's bundle (about 0.5 MB compact) needs several.
    summary = await synthea.load(
        partner, only=[path.name], progress=lines.append, max_chunk_bytes=200_000
    )
    return Loaded(summary, lines, path, synthea.read_bundle(path))


async def test_the_patient_and_all_its_observations_are_created(
    loaded: Loaded, partner: MedplumClient
) -> None:
    assert len(loaded.summary.patient_ids) == 1
    patient = await partner.read("Patient", loaded.summary.patient_ids[0])
    assert get_str(patient.resource, "resourceType") == "Patient"
    expected = _observation_count(loaded.path)
    page = await partner.search(
        "Observation", {"subject": loaded.patient, "_count": 1, "_total": "accurate"}
    )
    assert page.total == expected
    assert loaded.summary.created_by_type["Observation"] == expected


async def test_every_resource_of_the_bundle_is_created_once(loaded: Loaded) -> None:
    in_bundle = Counter(
        str(r.get("resourceType"))
        for e in get_objects(loaded.bundle, "entry")
        if isinstance(r := e.get("resource"), dict)
    )
    patient_report = loaded.summary.bundles[-1]
    assert patient_report.name == loaded.path.name
    assert patient_report.created == in_bundle
    assert patient_report.existing == 0
    assert patient_report.chunks > 1  # split on purpose
    support = loaded.summary.bundles[:2]
    assert [b.name.split("1625")[0] for b in support] == [
        "0-hospitalInformation",
        "0-practitionerInformation",
    ]
    assert support[0].created == {"Organization": 194, "Location": 194}
    assert support[1].created == {"Practitioner": 195, "PractitionerRole": 195}


async def test_references_point_at_real_resources_across_chunks(
    loaded: Loaded, partner: MedplumClient
) -> None:
    references: set[str] = set()
    seen = 0
    for resource_type in sorted(loaded.summary.bundles[-1].created):
        if resource_type == "Patient":
            continue
        page = await partner.search(resource_type, {"_compartment": loaded.patient, "_count": 1000})
        for resource in page.resources:
            seen += 1
            references.update(iter_references(resource))
    assert seen == sum(loaded.summary.bundles[-1].created.values()) - 1
    assert references
    for reference in references:
        assert not reference.startswith("urn:uuid:"), "an unresolved bundle-local reference"
        assert "?" not in reference, "an unresolved conditional reference"
    # Synthea's conditional references became real Practitioner / Organization / Location ids
    kinds = {r.split("/")[0] for r in references if not r.startswith("#")}
    assert {"Patient", "Encounter", "Practitioner", "Organization", "Location"} <= kinds
    # and every referenced resource exists (one batch of reads)
    readable = sorted(r for r in references if not r.startswith("#"))
    answer = await partner.batch([BundleRequest.read(*r.split("/")) for r in readable])
    assert not answer.failed
    assert len(answer.entries) == len(readable)


async def test_progress_names_bundles_chunks_and_counts(loaded: Loaded) -> None:
    text = "\n".join(loaded.lines)
    assert "0-hospitalInformation" in text
    assert loaded.path.name in text
    assert f"chunk 2/{loaded.summary.bundles[-1].chunks}" in text
    assert f"Patient/{loaded.summary.patient_ids[0]}" in text
    assert loaded.lines[-1].startswith("Loaded 3 bundles")
    # no patient data in the progress lines
    resources = [r for e in get_objects(loaded.bundle, "entry") if (r := get_object(e, "resource"))]
    patient = next(r for r in resources if get_str(r, "resourceType") == "Patient")
    family = get_str(get_objects(patient, "name")[0], "family")
    assert family
    assert family not in text


async def test_loading_the_support_bundles_again_reuses_the_conditional_creates(
    loaded: Loaded, partner: MedplumClient
) -> None:
    summary = await synthea.load(partner, patients=0)
    # Organization, Location and Practitioner entries carry ifNoneExist: found, not duplicated.
    # Synthea's PractitionerRole entries are plain creates, so a second load repeats them.
    assert summary.existing == 194 + 194 + 195
    assert summary.created_by_type == {"PractitionerRole": 195}
    page = await partner.search("Practitioner", {"_count": 0, "_total": "accurate"})
    assert page.total == loaded.summary.created_by_type["Practitioner"] + 4  # + the seeded ones


def _synthetic_bundle(status: str = "final") -> JSONObject:
    patient = "urn:uuid:4b1f6a4e-6b0c-4a47-9f7e-0d5c1c2f3a10"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient,
                "resource": {"resourceType": "Patient", "name": [{"family": "Zzsecretfamily"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:4b1f6a4e-6b0c-4a47-9f7e-0d5c1c2f3a11",
                "resource": {
                    "resourceType": "Observation",
                    "status": status,
                    "code": {"text": "Zzsecretvalue"},
                    "subject": {"reference": patient},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


async def _fault(server: DevServer, **spec: object) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.post("_devserver/fault", json=spec)
        assert answer.status_code == 200


async def test_a_failed_chunk_names_bundle_and_chunk_without_phi(
    server: DevServer, partner: MedplumClient, tmp_path: Path
) -> None:
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(_synthetic_bundle()))
    await _fault(server, status=500, method="POST", pathPattern="^/fhir/R4/?$", count=1)
    with pytest.raises(SyntheaLoadError) as caught:
        await synthea.load(partner, directory=tmp_path, include_support=False)
    message = str(caught.value)
    assert "synthetic-patient.json" in message
    assert "chunk 1/1" in message
    assert "HTTP 500" in message
    assert "Zzsecret" not in message
    assert caught.value.bundle == "synthetic-patient.json"


async def test_an_invalid_entry_is_named_by_position_and_type(
    partner: MedplumClient, tmp_path: Path
) -> None:
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(_synthetic_bundle(status="bogus")))
    with pytest.raises(SyntheaLoadError) as caught:
        await synthea.load(partner, directory=tmp_path, include_support=False)
    message = str(caught.value)
    assert "chunk 1/1" in message
    assert "HTTP 400" in message
    assert "Observation.status" in message  # where, from the OperationOutcome
    assert "Zzsecret" not in message


async def test_a_rate_limited_chunk_waits_and_is_sent_again(
    server: DevServer, partner: MedplumClient, tmp_path: Path
) -> None:
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(_synthetic_bundle()))
    await _fault(
        server, status=429, method="POST", pathPattern="^/fhir/R4/?$", count=1, resetSeconds=7
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    lines: list[str] = []
    summary = await synthea.load(
        partner, directory=tmp_path, include_support=False, progress=lines.append, sleep=sleep
    )
    assert waits == [7.0]
    assert summary.created_by_type == {"Patient": 1, "Observation": 1}
    assert any("rate limited" in line for line in lines)


async def test_without_atomic_transactions_the_failing_entry_is_named(
    server: DevServer, partner: MedplumClient, tmp_path: Path
) -> None:
    """Project feature ``transaction-bundles`` off: Medplum processes the transaction like a
    batch and answers 200 with one failed entry, which the loader reports by position."""
    admin = MedplumClient(
        MedplumClientConfig(
            base_url=server.base_url, client_id=ADMIN_CLIENT_ID, client_secret=ADMIN_CLIENT_SECRET
        )
    )
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(_synthetic_bundle(status="bogus")))
    try:
        await admin.patch("Project", "starvit-dev", [{"op": "remove", "path": "/features"}])
        with pytest.raises(SyntheaLoadError) as caught:
            await synthea.load(partner, directory=tmp_path, include_support=False)
    finally:
        await admin.patch(
            "Project",
            "starvit-dev",
            [{"op": "add", "path": "/features", "value": ["transaction-bundles"]}],
        )
        await admin.aclose()
    message = str(caught.value)
    assert "chunk 1/1 failed at entry 1 (Observation): HTTP 400" in message
    assert "Zzsecret" not in message
