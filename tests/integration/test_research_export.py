"""The research export end to end: Synthea patients and a PHI canary patient in the Medplum
stand-in → de-identification → DuckDB tables, LadybugDB graph, NDJSON export files, the
export's record in PostgreSQL; then an incremental rerun, and a new key.

A few patients serve most tests; one test takes the whole shipped population."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest
import structlog

from app.integrations.medplum import MedplumClient, MedplumClientConfig, MedplumUnavailable
from app.observability.logging import configure_logging
from app.persistence.database import Database, migrate
from app.research.deid import AllowListDeidentifier, load_policy
from app.research.graph import query_text
from app.research.graph.ladybug import LadybugGraph
from app.research.keys import PseudonymKey
from app.research.repository import ResearchRepository
from app.research.service import (
    ExportSummary,
    ResearchZone,
    condition_prevalence,
    demographics,
    egfr_comorbidity,
    run_export,
)
from app.research.stores.duckdb import DuckDBStore
from app.research.views.runner import load_views
from devtools import synthea
from devtools.devserver import SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, DevServer
from tests.integration.conftest import fresh_database
from tests.integration.pipeline_support import fhir_client

pytestmark = pytest.mark.integration

RAISED_QUOTA = 100_000_000
KEY_1 = PseudonymKey("k1", b"research-key-one-" + b"1" * 32)
KEY_2 = PseudonymKey("k2", b"research-key-two-" + b"2" * 32)

# The PHI canary corpus: every value below is written into Medplum and must not come out.
CANARY = {
    "family": "Zzcanaryfamilyname",
    "given": "Qqcanarygiven",
    "mrn": "MRN-CANARY-7731904",
    "ssn": "999-31-4159",
    "phone": "555-0199-8841",
    "email": "canary.patient@example.invalid",
    "street": "4242 Canarywood Lane",
    "city": "Canaryville",
    "birth_date": "1961-07-23",
    "note": "Zzfreetext patient mentioned her neighbour Canarybert",
    "observation_note": "Zzobsnote drawn at the canary clinic",
    "code_text": "Zzcodetext canary glucose",
}


def canary_patient() -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "http://hospital.example/mrn", "value": CANARY["mrn"]},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": CANARY["ssn"]},
        ],
        "name": [{"family": CANARY["family"], "given": [CANARY["given"]], "text": "x"}],
        "telecom": [
            {"system": "phone", "value": CANARY["phone"]},
            {"system": "email", "value": CANARY["email"]},
        ],
        "gender": "female",
        "birthDate": CANARY["birth_date"],
        "address": [
            {
                "line": [CANARY["street"]],
                "city": CANARY["city"],
                "state": "WY",
                "postalCode": "82301",
            }
        ],
        "text": {"status": "generated", "div": f"<div>{CANARY['family']}</div>"},
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": CANARY["family"] + "mother",
            }
        ],
    }


def canary_observation(patient: str) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}],
            "text": CANARY["code_text"],
        },
        "subject": {"reference": patient, "display": CANARY["family"]},
        "effectiveDateTime": "2024-03-05T08:30:00Z",
        "valueQuantity": {
            "value": 5.4,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        "note": [{"text": CANARY["observation_note"]}],
    }


def canary_condition(patient: str) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "subject": {"reference": patient},
        "onsetDateTime": "2019-11-02",
        "note": [{"text": CANARY["note"]}],
    }


@dataclass
class Standin:
    server: DevServer
    service: MedplumClient
    patients: list[str]
    canary: str
    patient_count: int  # the stand-in's seed has a patient of its own


async def _load(server: DevServer, patients: int | None) -> list[str]:
    async with MedplumClient(synthea.partner_config(server.base_url)) as partner:
        summary = await synthea.load(partner, patients=patients, drop_unsatisfied_profiles=True)
    return [f"Patient/{p}" for p in summary.patient_ids]


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer.start(env={"MEDPLUM_FHIR_QUOTA": str(RAISED_QUOTA)}) as running:
        yield running


@pytest.fixture(scope="module")
async def standin(server: DevServer) -> AsyncIterator[Standin]:
    patients = await _load(server, 3)
    async with fhir_client(server.base_url, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET) as service:
        async with MedplumClient(synthea.partner_config(server.base_url)) as partner:
            created = await partner.create(canary_patient())
            assert created.reference
            await partner.create(canary_observation(created.reference))
            await partner.create(canary_condition(created.reference))
        page = await service.search("Patient", {"_count": 0, "_total": "accurate"})
        assert page.total is not None
        yield Standin(server, service, patients, created.reference, page.total)


@pytest.fixture
async def repository(postgres_server_url: str) -> AsyncIterator[ResearchRepository]:
    with fresh_database(postgres_server_url) as url:
        await migrate(url)
        database = Database(url, max_size=2)
        await database.open()
        try:
            yield ResearchRepository(database.pool)
        finally:
            await database.aclose()


def zone_in(directory: Path) -> ResearchZone:
    return ResearchZone(
        store=DuckDBStore(directory / "research.duckdb"),
        graph=LadybugGraph(directory / "graph.lbdb"),
        views=load_views(),
        export_root=directory / "exports",
    )


def deid(key: PseudonymKey = KEY_1) -> AllowListDeidentifier:
    return AllowListDeidentifier(load_policy(), key)


async def export(
    standin: Standin,
    repository: ResearchRepository,
    zone: ResearchZone,
    key: PseudonymKey = KEY_1,
    **kwargs: object,
) -> ExportSummary:
    return await run_export(
        medplum=standin.service,
        repository=repository,
        zone=zone,
        deidentifier=deid(key),
        page_size=50,
        **kwargs,  # pyright: ignore[reportArgumentType]
    )


def duckdb_text(path: Path) -> str:
    """Every value of every table, as text."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in conn.execute("SHOW TABLES").fetchall()]
        return "\n".join(
            json.dumps(conn.execute(f'SELECT * FROM "{t}"').fetchall(), default=str) for t in tables
        )
    finally:
        conn.close()


def graph_text(graph: LadybugGraph) -> str:
    parts: list[str] = []
    for query in (
        "MATCH (p:Patient) RETURN p.id, p.gender, p.birth_year, p.zip3",
        "MATCH (c:Condition) RETURN c.code, c.system",
        "MATCH (f:Feature) RETURN f.code, f.system",
        "MATCH (p:Patient)-[h:HAS_CONDITION]->(c:Condition) RETURN p.id, c.code, h.onset",
        "MATCH (p:Patient)-[m:MEASURED]->(f:Feature) RETURN p.id, f.code, m.value, m.date",
    ):
        parts.append(json.dumps(graph.run(query, {}).rows, default=str))
    return "\n".join(parts)


def canary_values() -> list[str]:
    values = list(CANARY.values())
    return [*values, CANARY["ssn"].replace("-", ""), CANARY["phone"].replace("-", "")]


async def test_export_files_tables_graph_and_logs_hold_no_phi(
    standin: Standin,
    repository: ResearchRepository,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG")
    zone = zone_in(tmp_path)
    try:
        summary = await export(standin, repository, zone)
        graph = zone.graph
        assert isinstance(graph, LadybugGraph)
        graph_dump = graph_text(graph)
    finally:
        zone.close()
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    captured = capsys.readouterr()
    files = "\n".join(p.read_text() for p in (tmp_path / "exports").rglob("*") if p.is_file())
    tables = duckdb_text(tmp_path / "research.duckdb")
    assert summary.loaded["Patient"] == standin.patient_count == 5
    assert summary.loaded["Condition"] > 0
    assert summary.loaded["Observation"] > 0
    for where, text in {
        "export files": files,
        "DuckDB": tables,
        "graph": graph_dump,
        "logs": captured.out + captured.err,
    }.items():
        for value in canary_values():
            assert value.lower() not in text.lower(), f"{value!r} found in the {where}"
    # the canary's real ids are gone too; only pseudonyms remain
    canary_id = standin.canary.split("/")[1]
    assert canary_id not in files
    assert canary_id not in tables
    # and what is kept is there: the canary's ZIP3 (823 is a restricted area: 000), its
    # state, its birth year collapsed only to a year, the glucose value
    canary_row = (
        duckdb.connect(str(tmp_path / "research.duckdb"), read_only=True)
        .execute("SELECT gender, zip3, state, birth_year FROM patient WHERE zip3 = '000'")
        .fetchall()
    )
    assert canary_row
    assert canary_row[0][:3] == ("female", "000", "WY")
    assert abs(int(canary_row[0][3]) - 1961) <= 1
    manifest = json.loads((summary.export_dir / "manifest.json").read_text())
    assert manifest["key_version"] == "k1"
    assert manifest["config_hash"] == deid().config_hash
    assert manifest["risk"]["patients"] == standin.patient_count
    # every exported resource is labelled
    for line in (summary.export_dir / "Observation.ndjson").read_text().splitlines():
        codes = {s["code"] for s in json.loads(line)["meta"]["security"]}
        assert codes == {"PSEUDED", "REDACTED"}


async def test_a_rerun_fetches_only_what_changed(
    standin: Standin, repository: ResearchRepository, tmp_path: Path
) -> None:
    zone = zone_in(tmp_path)
    try:
        first = await export(standin, repository, zone)
        again = await export(standin, repository, zone)
        assert first.full_refresh
        assert not again.full_refresh
        assert sum(first.fetched.values()) > 50  # several pages
        assert sum(again.fetched.values()) == 0
        patient = standin.patients[0]
        async with MedplumClient(synthea.partner_config(standin.server.base_url)) as partner:
            await partner.create(canary_observation(patient))
        third = await export(standin, repository, zone)
        assert dict(+third.fetched) == {"Observation": 1}
        rows = zone.store.query("SELECT COUNT(*) FROM {observation}")
        expected = first.loaded["Observation"] + 1
        assert rows[0][0] == expected
    finally:
        zone.close()
    records = await repository.exports()
    assert [r.status for r in records] == ["succeeded"] * 3
    assert [r.full_refresh for r in records] == [False, False, True]
    assert {r.key_version for r in records} == {"k1"}
    assert records[0].risk is not None
    assert records[0].risk["patients"] == standin.patient_count


async def test_dates_shift_by_one_amount_per_patient_and_differently_between_patients(
    standin: Standin, repository: ResearchRepository, tmp_path: Path
) -> None:
    zone = zone_in(tmp_path)
    try:
        await export(standin, repository, zone)
    finally:
        zone.close()
    engine = deid()
    shifts: dict[str, set[int]] = {}
    for reference in [*standin.patients, standin.canary]:
        patient_id = reference.split("/")[1]
        original = await standin.service.search_all(
            "Observation", {"subject": reference, "_count": 200}
        )
        exported = {
            json.loads(line)["id"]: json.loads(line)
            for path in (tmp_path / "exports").rglob("Observation.ndjson")
            for line in path.read_text().splitlines()
        }
        pseudonym = engine.pseudonyms.pseudonym("Patient", patient_id)
        found: set[int] = set()
        for resource in original:
            out = exported.get(engine.pseudonyms.pseudonym("Observation", str(resource["id"])))
            if out is None or "effectiveDateTime" not in resource:
                continue
            assert out["subject"]["reference"] == f"Patient/{pseudonym}"
            before = str(resource["effectiveDateTime"])[:10]
            after = str(out["effectiveDateTime"])[:10]
            from datetime import date  # noqa: PLC0415

            found.add((date.fromisoformat(after) - date.fromisoformat(before)).days)
        assert found, reference
        shifts[reference] = found
    assert all(len(s) == 1 for s in shifts.values()), "one shift per patient"
    assert len({next(iter(s)) for s in shifts.values()}) == len(shifts), "differ between patients"
    assert 0 not in {next(iter(s)) for s in shifts.values()}


async def test_pseudonyms_are_stable_under_one_key_and_change_with_the_next(
    standin: Standin, repository: ResearchRepository, tmp_path: Path
) -> None:
    zone = zone_in(tmp_path)
    try:
        await export(standin, repository, zone)
        first = sorted(str(r[0]) for r in zone.store.query("SELECT id FROM {patient}"))
        await export(standin, repository, zone, full=True)
        same = sorted(str(r[0]) for r in zone.store.query("SELECT id FROM {patient}"))
        rotated = await export(standin, repository, zone, key=KEY_2)
        second = sorted(str(r[0]) for r in zone.store.query("SELECT id FROM {patient}"))
    finally:
        zone.close()
    assert first == same
    assert rotated.full_refresh  # a new key starts the target afresh
    assert len(second) == len(first)
    assert not set(second) & set(first)
    records = await repository.exports()
    assert [r.key_version for r in records] == ["k2", "k1", "k1"]


async def test_aggregates_and_the_graph_query_answer_from_the_export(
    standin: Standin, repository: ResearchRepository, tmp_path: Path
) -> None:
    zone = zone_in(tmp_path)
    try:
        await export(standin, repository, zone)
        table = demographics(zone.store)
        cells, population = condition_prevalence(zone.store)
        pairs, withheld = egfr_comorbidity(zone.graph, threshold=1000.0)
    finally:
        zone.close()
    # five patients: every cell and the total are small, so all are withheld
    assert table.total is None
    assert all(c.count in (None, 0) for c in table.cells)
    assert population is None
    assert all(c.count is None for c in cells)
    # the graph answered (pairs exist among patients with any eGFR), all of them small
    assert pairs == []
    assert withheld >= 0


def test_key_material_is_base64_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.research.keys import EnvironmentSecretStore  # noqa: PLC0415

    monkeypatch.setenv("STARVIT_RESEARCH_KEY", base64.b64encode(b"x" * 32).decode())
    monkeypatch.setenv("STARVIT_RESEARCH_KEY_VERSION", "2026-12")
    key = EnvironmentSecretStore().current_key()
    assert key.version == "2026-12"
    assert "x" not in repr(key)


async def test_the_whole_shipped_population_runs_through(
    postgres_server_url: str, tmp_path: Path
) -> None:
    with DevServer.start(env={"MEDPLUM_FHIR_QUOTA": str(RAISED_QUOTA)}) as server:
        patients = await _load(server, None)
        with fresh_database(postgres_server_url) as url:
            await migrate(url)
            database = Database(url, max_size=2)
            await database.open()
            zone = zone_in(tmp_path)
            lines: list[tuple[str, int]] = []

            class Progress:
                def begin(self, resource_type: str, total: int) -> None:
                    lines.append((resource_type, total))

                def advance(self, resource_type: str, count: int) -> None:
                    lines.append((resource_type, count))

                def finish(self, resource_type: str) -> None:
                    del resource_type

            try:
                async with fhir_client(
                    server.base_url, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET
                ) as service:
                    summary = await run_export(
                        medplum=service,
                        repository=ResearchRepository(database.pool),
                        zone=zone,
                        deidentifier=deid(),
                        progress=Progress(),
                    )
                    searches = service.request_count.get("search", 0)
                    again = await run_export(
                        medplum=service,
                        repository=ResearchRepository(database.pool),
                        zone=zone,
                        deidentifier=deid(),
                    )
                    rerun_searches = service.request_count.get("search", 0) - searches
                counts = {
                    name: zone.store.query(f"SELECT COUNT(*) FROM {{{name}}}")[0][0]
                    for name in ("patient", "condition", "observation")
                }
                pairs, withheld = egfr_comorbidity(zone.graph, threshold=60.0)
                raw = zone.graph.run(query_text("egfr_comorbidity"), {"threshold": 60.0})
            finally:
                zone.close()
                await database.aclose()
    assert len(patients) == 20
    expected = {"Patient": 21, "Condition": 0, "Observation": 0}  # + the seed's own patient
    for path in synthea.patient_bundles(synthea.synthea_dir()):
        for resource in synthea.bundle_resources(synthea.read_bundle(path)):
            kind = str(resource.get("resourceType"))
            if kind in ("Condition", "Observation"):
                expected[kind] += 1
    assert dict(+summary.loaded) == expected
    assert counts == {
        "patient": 21,
        "condition": expected["Condition"],
        "observation": expected["Observation"],
    }
    assert sum(again.fetched.values()) == 0
    # a count and ceil(n / 500) pages per type; a count and one empty page on the rerun
    assert searches == 3 + 1 + 1 + (expected["Observation"] + 499) // 500
    assert rerun_searches == 6
    assert ("Observation", expected["Observation"]) in lines  # the progress total
    assert summary.risk is not None
    assert summary.risk.patients == 21
    # the shipped population: 5 patients with an eGFR below 60 share many condition pairs,
    # none held by 11 or more, so the suppressed answer withholds them all
    assert raw.rows
    assert max(int(str(row[2])) for row in raw.rows) <= 5
    assert pairs == []
    assert withheld == len(raw.rows)


async def test_an_interrupted_export_resumes_from_its_last_loaded_page(
    standin: Standin, repository: ResearchRepository, tmp_path: Path
) -> None:
    zone = zone_in(tmp_path)
    config = MedplumClientConfig(
        base_url=standin.server.base_url,
        client_id=SERVICE_CLIENT_ID,
        client_secret=SERVICE_CLIENT_SECRET,
        max_attempts=1,  # no retry: the injected failure ends the export
    )
    total = (await standin.service.search("Observation", {"_count": 0, "_total": "accurate"})).total
    assert total is not None
    assert total > 150
    try:
        async with MedplumClient(config) as once:
            # the count and two pages of 50 Observations succeed, the third page fails
            await _fault(standin.server, status=503, pathPattern="^/fhir/R4/Observation", skip=3)
            with pytest.raises(MedplumUnavailable):
                await run_export(
                    medplum=once,
                    repository=repository,
                    zone=zone,
                    deidentifier=deid(),
                    page_size=50,
                )
        loaded = zone.store.query("SELECT COUNT(*) FROM {observation}")[0][0]
        resumed = await export(standin, repository, zone)
        after = zone.store.query("SELECT COUNT(*) FROM {observation}")[0][0]
    finally:
        zone.close()
        await _clear_faults(standin.server)
    assert loaded == 100
    assert not resumed.full_refresh
    assert resumed.fetched["Observation"] == total - 100
    assert resumed.fetched["Patient"] == 0
    assert after == total
    records = await repository.exports()
    assert [r.status for r in records] == ["succeeded", "failed"]
    assert records[1].error_code == "MedplumUnavailable"


async def _fault(server: DevServer, **spec: object) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.post("_devserver/fault", json={"count": 1, **spec})
        assert answer.status_code == 200


async def _clear_faults(server: DevServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        await http.delete("_devserver/fault")
