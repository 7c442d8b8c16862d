"""The BigQuery and TigerGraph paths through their real client libraries (google-cloud-bigquery,
pyTigerGraph) against recorded, checked-in request/response fixtures served on loopback.

The input is fixed (synthetic patients with fixed ids, a fixed key and reference date), so
the service sends byte-for-byte the same requests on every run; the replay server fails the
test on any difference. ``STARVIT_RECORD_RESEARCH_FIXTURES=1`` records the fixtures afresh
(see ``research_cloud_stub``)."""

from __future__ import annotations

import os
from datetime import date

import pytest

from app.integrations.bigquery.store import BigQueryStore, bigquery_client
from app.integrations.tigergraph.graph import TigerGraphConfig, TigerGraphStore
from app.research.deid import AllowListDeidentifier, Deidentified, load_policy
from app.research.keys import PseudonymKey
from app.research.risk import EQUIVALENCE_CLASSES_SQL, risk_report
from app.research.service import demographics, egfr_comorbidity, graph_data
from app.research.stores import StoreState
from app.research.views.runner import load_views
from tests.integration.research_cloud_stub import (
    BigQueryResponder,
    TigerGraphResponder,
    fixture_server,
)

pytestmark = pytest.mark.integration

RECORD = os.environ.get("STARVIT_RECORD_RESEARCH_FIXTURES") == "1"
KEY = PseudonymKey("cloud-test", b"cloud-fixture-key-" + b"c" * 32)
TODAY = date(2026, 12, 1)
CKD = "431855005"  # SNOMED CT chronic kidney disease stage 1
HYPERTENSION = "59621000"
DIABETES = "44054006"


def synthetic_resources() -> list[dict[str, object]]:
    """14 patients: 12 with a low eGFR, hypertension and diabetes; every fourth with CKD."""
    resources: list[dict[str, object]] = []
    for i in range(14):
        pid = f"cloud-patient-{i:02d}"
        resources.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"family": f"Cloudfamily{i}"}],
                "gender": "female" if i % 2 else "male",
                "birthDate": f"19{50 + i % 3}-0{1 + i % 9}-1{i % 10}",
                "address": [{"postalCode": "02139", "state": "MA", "city": "Cambridge"}],
            }
        )
        conditions = [HYPERTENSION, DIABETES] if i < 12 else [HYPERTENSION]
        if i % 4 == 0:
            conditions.append(CKD)
        for n, code in enumerate(conditions):
            resources.append(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-c{n}",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "onsetDateTime": f"201{i % 10}-05-0{1 + n}",
                }
            )
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-egfr",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": f"2023-0{1 + i % 9}-15T09:00:00Z",
                "valueQuantity": {
                    "value": 45.0 if i < 12 else 95.0,
                    "unit": "mL/min/{1.73_m2}",
                    "system": "http://unitsofmeasure.org",
                    "code": "mL/min/{1.73_m2}",
                },
                "note": [{"text": f"Cloudfamily{i} fasting"}],
            }
        )
    return resources


def deidentified() -> list[Deidentified]:
    engine = AllowListDeidentifier(load_policy(), KEY, today=TODAY)
    out = [engine.deidentify(r) for r in synthetic_resources()]  # pyright: ignore[reportArgumentType]
    return [o for o in out if isinstance(o, Deidentified)]


def test_bigquery_loads_the_views_into_partitioned_tables_and_answers_the_shared_sql() -> None:
    views = load_views()
    kept = deidentified()
    with fixture_server("bigquery", BigQueryResponder, record=RECORD) as (port, problems):
        client = bigquery_client(
            "starvit-research-test", api_endpoint=f"http://127.0.0.1:{port}", anonymous=True
        )
        store = BigQueryStore(client, "starvit-research-test.research", location="EU")
        try:
            assert store.state() is None  # no export_state table yet: a first, full export
            state = StoreState(KEY.version, load_policy().config_hash)
            store.reset(views, state)
            for view in views:
                resources = [k.resource for k in kept if k.resource_type == view.resource]
                ids = [str(r["id"]) for r in resources]
                store.replace(view, ids, view.run(resources))
            assert store.state() == state
            data = graph_data(store)
            sizes = [int(str(r[0])) for r in store.query(EQUIVALENCE_CLASSES_SQL)]
            table = demographics(store)
        finally:
            store.close()
    assert problems == []
    assert len(data.patients) == 14
    assert {c.code for c in data.conditions} == {CKD, HYPERTENSION, DIABETES}
    assert len(data.measured) == 14
    assert all(m.value in (45.0, 95.0) for m in data.measured)
    assert risk_report(sizes, k=11).patients == 14
    assert table.total == 14  # 14 is publishable; every cell under it is small
    assert all(c.count is None or c.count == 0 or c.count >= 11 for c in table.cells)


def test_bigquery_requests_declare_partitioning_and_carry_no_phi() -> None:
    import json  # noqa: PLC0415

    from tests.integration.research_cloud_stub import FIXTURES  # noqa: PLC0415

    text = (FIXTURES / "bigquery.json").read_text()
    assert "Cloudfamily" not in text
    assert "cloud-patient" not in text
    exchanges = json.loads(text)["exchanges"]
    created = [
        e["request"]["body"]
        for e in exchanges
        if e["request"]["method"] == "POST" and e["request"]["path"].endswith("/tables")
    ]
    partitioning = {b["tableReference"]["tableId"]: b.get("timePartitioning") for b in created}
    assert partitioning["observation"] == {"type": "DAY", "field": "effective_date"}
    assert partitioning["condition"] == {"type": "DAY", "field": "onset_date"}
    assert partitioning["patient"] == {"type": "DAY"}


def test_tigergraph_loads_the_graph_and_runs_the_shared_opencypher_query() -> None:
    views = load_views()
    kept = deidentified()
    # the graph's input comes from the tables: build them in DuckDB here
    from pathlib import Path  # noqa: PLC0415
    from tempfile import TemporaryDirectory  # noqa: PLC0415

    from app.research.stores.duckdb import DuckDBStore  # noqa: PLC0415

    with TemporaryDirectory() as scratch:
        local = DuckDBStore(Path(scratch) / "t.duckdb")
        local.reset(views, StoreState(KEY.version, "x"))
        for view in views:
            resources = [k.resource for k in kept if k.resource_type == view.resource]
            local.replace(view, [str(r["id"]) for r in resources], view.run(resources))
        data = graph_data(local)
        local.close()
    with fixture_server("tigergraph", TigerGraphResponder, record=RECORD) as (port, problems):
        graph = TigerGraphStore(
            TigerGraphConfig(
                host="http://127.0.0.1",
                graph="starvit_research",
                username="starvit_research",
                password="fixture-password",
                restpp_port=port,
                gs_port=port,
            )
        )
        graph.rebuild(data)
        pairs, withheld = egfr_comorbidity(graph, threshold=60.0)
    assert problems == []
    # 12 patients with eGFR 45 share hypertension and diabetes; CKD pairs are small
    assert [(p.condition_a, p.condition_b, p.patients) for p in pairs] == [
        (DIABETES, HYPERTENSION, 12)
    ]
    assert withheld == 2
