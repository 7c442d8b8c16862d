"""Loading real Synthea bundles into the Medplum stand-in as the partner ``partner-acme``.

The stand-in enforces Medplum's FHIR quota (50,000 points a minute per membership unless a test
raises it) and validates declared profiles, so Synthea's blood pressures (core ``bp`` profile)
are refused unless the loader drops that declaration.

* One patient (the smallest bundle with Observations) after the practitioner and hospital
  bundles, split into small chunks on purpose so that references cross chunk boundaries.
* Every shipped patient, with the quota raised (at the default quota the whole population,
  about 1.37 million points, took 29.5 minutes, 28 of them waiting for the window: too long for
  a test), and three patients at the default quota, which must wait for the window at least
  once and never be refused."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str, iter_references
from app.integrations.medplum import BundleRequest, MedplumClient
from devtools import synthea
from devtools.devserver import DevServer
from devtools.synthea import LoadSummary, SyntheaLoadError

pytestmark = pytest.mark.integration

BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
DEFAULT_QUOTA = 50_000
# High enough never to wait, still enforced and reported in RateLimit.
RAISED_QUOTA = 100_000_000


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer.start() as running:
        yield running


def _devserver_post(server: DevServer, path: str, body: dict[str, object] | None = None) -> None:
    answer = httpx.post(server.base_url + f"_devserver/{path}", json=body or {}, timeout=10)
    assert answer.status_code == 200, answer.text


def set_quota(server: DevServer, points_per_minute: int) -> None:
    """The membership's FHIR quota, with every window started afresh."""
    _devserver_post(server, "config", {"fhirQuota": points_per_minute})
    _devserver_post(server, "reset-quota")


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
async def loaded(server: DevServer, partner: MedplumClient) -> Loaded:
    path = smallest_patient_with_observations()
    lines: list[str] = []
    set_quota(server, RAISED_QUOTA)
    # 200 KB chunks: the patient's bundle (about 0.5 MB compact) needs several.
    summary = await synthea.load(
        partner,
        only=[path.name],
        progress=lines.append,
        max_chunk_bytes=200_000,
        drop_unsatisfied_profiles=True,
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
    assert any(line.startswith("Loaded 3 bundles") for line in loaded.lines)
    # no patient data in the progress lines
    resources = [r for e in get_objects(loaded.bundle, "entry") if (r := get_object(e, "resource"))]
    patient = next(r for r in resources if get_str(r, "resourceType") == "Patient")
    family = get_str(get_objects(patient, "name")[0], "family")
    assert family
    assert family not in text


async def test_blood_pressures_lose_only_the_bp_declaration(
    loaded: Loaded, partner: MedplumClient
) -> None:
    declaring = [
        r
        for r in synthea.bundle_resources(loaded.bundle)
        if BP_PROFILE in synthea.declared_profiles(r)
    ]
    assert declaring
    assert loaded.summary.dropped_profiles == {BP_PROFILE: len(declaring)}
    assert any("declaration dropped" in line for line in loaded.lines)
    page = await partner.search("Observation", {"subject": loaded.patient, "code": "85354-9"})
    assert len(page.resources) == len(declaring)
    for resource in page.resources:
        profiles = synthea.declared_profiles(resource)
        assert BP_PROFILE not in profiles
        assert "http://hl7.org/fhir/StructureDefinition/vitalsigns" in profiles
        assert get_objects(resource, "component")


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
    bundle = _synthetic_bundle(status="bogus")
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(bundle))
    with pytest.raises(SyntheaLoadError) as caught:
        await synthea.load(partner, directory=tmp_path, include_support=False)
    message = str(caught.value)
    full_url = get_str(get_objects(bundle, "entry")[1], "fullUrl")
    # Medplum's 400 names a path in the resource, not the entry: the loader finds the entry.
    assert f"chunk 1/1 refused (HTTP 400) at entry 1 (Observation {full_url})" in message
    assert "Observation.status" in message  # where, from the OperationOutcome
    assert "Zzsecret" not in message


async def test_a_bp_declaration_stops_the_load_unless_dropping_is_asked(
    partner: MedplumClient, tmp_path: Path
) -> None:
    path = smallest_patient_with_observations()
    bundle = synthea.read_bundle(path)
    entries = get_objects(bundle, "entry")
    patient = entries[0]
    bp = next(
        e
        for e in entries
        if BP_PROFILE in synthea.declared_profiles(get_object(e, "resource") or {})
    )
    resource = dict(get_object(bp, "resource") or {})
    resource.pop("encounter", None)
    resource["subject"] = {"reference": get_str(patient, "fullUrl")}
    small: JSONObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [patient, {**bp, "resource": resource}],
    }
    (tmp_path / "one-bp.json").write_text(json.dumps(small))
    with pytest.raises(SyntheaLoadError) as caught:
        await synthea.load(partner, directory=tmp_path, include_support=False)
    message = str(caught.value)
    assert f"at entry 1 (Observation {get_str(bp, 'fullUrl')})" in message
    assert "structure at Observation.component" in message
    assert f"does not satisfy its declared {BP_PROFILE}" in message
    assert "--drop-unsatisfied-profiles" in message
    lines: list[str] = []
    summary = await synthea.load(
        partner,
        directory=tmp_path,
        include_support=False,
        drop_unsatisfied_profiles=True,
        progress=lines.append,
    )
    assert summary.created_by_type == {"Patient": 1, "Observation": 1}
    assert summary.dropped_profiles == {BP_PROFILE: 1}
    assert lines[-1].endswith(f"{BP_PROFILE} 1")


async def test_a_rate_limited_chunk_waits_and_is_sent_again(
    server: DevServer, tmp_path: Path
) -> None:
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(_synthetic_bundle()))
    await _fault(
        server, status=429, method="POST", pathPattern="^/fhir/R4/?$", count=1, resetSeconds=7
    )
    waits: list[float] = []

    # The waits are recorded, not slept; the clock (the client's too) moves on as if slept.
    def clock() -> float:
        return time.monotonic() + sum(waits)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    lines: list[str] = []
    config = synthea.partner_config(server.base_url)
    async with MedplumClient(config, clock=clock) as partner:
        summary = await synthea.load(
            partner,
            directory=tmp_path,
            include_support=False,
            progress=lines.append,
            sleep=sleep,
            clock=clock,
        )
    assert waits == [7.5]  # Medplum's reset, and a margin for its rounding
    assert summary.created_by_type == {"Patient": 1, "Observation": 1}
    assert summary.throttled == 1
    assert any("429" in line and "waiting 7.5 s" in line for line in lines)


async def test_without_atomic_transactions_the_failing_entry_is_named(
    server: DevServer, partner: MedplumClient, tmp_path: Path
) -> None:
    """Project feature ``transaction-bundles`` off: Medplum processes the transaction like a
    batch and answers 200 with one failed entry, which the loader reports by position. As on
    Medplum, only a super admin changes ``Project.features`` (a project admin's PATCH answers
    200 and changes nothing): the stand-in's ``/_devserver/project`` plays that part."""
    bundle = _synthetic_bundle(status="bogus")
    (tmp_path / "synthetic-patient.json").write_text(json.dumps(bundle))
    try:
        _devserver_post(server, "project", {"features": []})
        with pytest.raises(SyntheaLoadError) as caught:
            await synthea.load(partner, directory=tmp_path, include_support=False)
    finally:
        _devserver_post(server, "project", {"features": ["transaction-bundles"]})
    message = str(caught.value)
    full_url = get_str(get_objects(bundle, "entry")[1], "fullUrl")
    assert f"chunk 1/1 failed at entry 1 (Observation {full_url}): HTTP 400" in message
    assert "Zzsecret" not in message


# --- the whole population, and the default quota -----------------------------------------------


async def _totals(medplum: MedplumClient, types: list[str]) -> Counter[str]:
    totals = Counter[str]()
    for resource_type in types:
        page = await medplum.search(resource_type, {"_count": 0, "_total": "accurate"})
        assert page.total is not None
        totals[resource_type] = page.total
    return totals


def _expected(paths: list[Path]) -> Counter[str]:
    return Counter(
        str(r.get("resourceType"))
        for path in paths
        for r in synthea.bundle_resources(synthea.read_bundle(path))
    )


async def test_every_shipped_patient_is_loaded_with_profiles_validated(
    tmp_path: Path,
) -> None:
    """All 20 patients (and the support bundles) into a fresh stand-in that validates declared
    profiles and enforces the quota, raised so that the test does not spend half an hour
    waiting for the window (the default-quota test below covers the waiting)."""
    directory = synthea.synthea_dir()
    files = synthea.bundle_files(directory)
    expected = _expected(files)
    declaring_bp = sum(
        1
        for path in files
        for r in synthea.bundle_resources(synthea.read_bundle(path))
        if BP_PROFILE in synthea.declared_profiles(r)
    )
    with DevServer.start(env={"MEDPLUM_FHIR_QUOTA": str(RAISED_QUOTA)}) as fresh:
        async with MedplumClient(synthea.partner_config(fresh.base_url)) as partner:
            before = await _totals(partner, sorted(expected))
            summary = await synthea.load(
                partner,
                drop_unsatisfied_profiles=True,
                checkpoint=tmp_path / "progress.jsonl",
            )
            after = await _totals(partner, sorted(expected))
            again = await synthea.load(
                partner, drop_unsatisfied_profiles=True, checkpoint=tmp_path / "progress.jsonl"
            )
    assert len(summary.patient_ids) == len(synthea.patient_bundles(directory)) == 20
    assert summary.created_by_type == expected
    assert after - before == expected
    assert summary.dropped_profiles == {BP_PROFILE: declaring_bp}
    assert summary.throttled == 0
    # the rerun finds every entry in the checkpoint and posts nothing
    assert again.created == 0
    assert again.resumed == sum(expected.values())
    assert again.patient_ids == summary.patient_ids


async def test_at_the_default_quota_the_loader_waits_for_the_window_and_is_never_refused(
    server: DevServer, partner: MedplumClient, loaded: Loaded
) -> None:
    """Three patients (about 90,000 points with the conditional-reference searches) at
    Medplum's default 50,000 points a minute: at least one wait for the window's reset, no
    429, nothing given up, every resource there. The support bundles come from ``loaded``."""
    assert loaded.summary.patient_ids
    directory = synthea.synthea_dir()
    chosen = sorted(synthea.patient_bundles(directory), key=lambda p: p.stat().st_size)[:3]
    expected = _expected(chosen)
    set_quota(server, DEFAULT_QUOTA)
    try:
        before = await _totals(partner, sorted(expected))
        lines: list[str] = []
        summary = await synthea.load(
            partner,
            only=[p.name for p in chosen],
            include_support=False,
            drop_unsatisfied_profiles=True,
            progress=lines.append,
        )
        after = await _totals(partner, sorted(expected))
    finally:
        set_quota(server, RAISED_QUOTA)
    assert summary.quota_waits >= 1
    assert summary.throttled == 0
    assert any("window to reset" in line for line in lines)
    assert summary.created_by_type == expected
    assert after - before == expected
    assert len(summary.patient_ids) == 3
