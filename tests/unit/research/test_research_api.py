"""``GET /v1/research/...``: researcher role only, suppressed counts, audit, rate limit, errors
in the envelope. Tokens are real ES256 JWTs checked against a JWKS served on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI

from app.research.access import SubjectRateLimit
from app.research.graph import CodeNode, GraphData, HasCondition, Measured, PatientNode
from app.research.graph.ladybug import LadybugGraph
from app.research.stores import StoreState
from app.research.stores.duckdb import DuckDBStore
from app.research.views.runner import load_views
from tests.conftest import LogCapture, Serve
from tests.unit.integrations.test_medplum_tokens import KeyServer, ec_key

RESEARCH_APP = "research-notebook"
RAVI = "Practitioner/researcher-ravi"


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def populate(directory: Path) -> None:
    """30 patients: 14 female and 12 male born in the 1970s, 3 male and 1 female in the 1980s;
    condition A held by 29 of them, B by 15, C by 5."""
    views = {v.name: v for v in load_views()}
    store = DuckDBStore(directory / "research.duckdb")
    store.reset(tuple(views.values()), StoreState("v1", "h"))
    people = (
        [("female", 1972)] * 14 + [("male", 1975)] * 12 + [("male", 1984)] * 3 + [("female", 1981)]
    )
    patients = [
        {
            "id": f"p{i}",
            "gender": g,
            "birth_year": y,
            "age_90_or_older": False,
            "deceased": False,
            "zip3": "021",
            "state": "MA",
        }
        for i, (g, y) in enumerate(people)
    ]
    store.replace(views["patient"], [], patients)  # pyright: ignore[reportArgumentType]
    conditions: list[dict[str, Any]] = []
    for i in range(30):
        held = (["A"] if i < 29 else []) + (["B"] if i < 15 else []) + (["C"] if i < 5 else [])
        conditions += [{"id": f"c{i}{c}", "patient_id": f"p{i}", "code": c} for c in held]
    store.replace(views["condition"], [], conditions)
    store.close()
    graph = LadybugGraph(directory / "graph.lbdb")
    graph.rebuild(
        GraphData(
            patients=[PatientNode(f"p{i}", None, None, None) for i in range(30)],
            conditions=[CodeNode(c, None) for c in "ABC"],
            features=[CodeNode("33914-3", None)],
            has_condition=[
                HasCondition(str(c["patient_id"]), str(c["code"]), None) for c in conditions
            ],
            measured=[Measured(f"p{i}", "33914-3", 40.0, None, None) for i in range(30)],
        )
    )
    graph.close()


def token_for(private: Any, base_url: str, *, profile: str, aud: str = RESEARCH_APP) -> str:
    now = int(time.time())
    claims = {
        "iss": base_url,
        "aud": aud,
        "sub": profile.split("/")[1],
        "client_id": aud,
        "profile": profile,
        "scope": "openid",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, private, algorithm="ES256", headers={"kid": "k1"})


@pytest.fixture
def app(
    key_server: KeyServer, make_app: Callable[..., FastAPI], tmp_path: Path
) -> tuple[FastAPI, Any]:
    populate(tmp_path)
    private, public = ec_key("k1")
    key_server.keys = [public]
    built = make_app(
        medplum_base_url=key_server.base_url,
        research_dir=tmp_path,
        research_audiences=RESEARCH_APP,
        research_profiles=RAVI,
        research_requests_per_minute=5,
    )
    return built, private


async def test_a_researcher_reads_suppressed_demographics(
    app: tuple[FastAPI, Any], key_server: KeyServer, serve: Serve, logs: LogCapture
) -> None:
    built, private = app
    token = token_for(private, key_server.base_url, profile=RAVI)
    async with serve(built) as client:
        answer = await client.get(
            "/v1/research/demographics", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    cells = {tuple(c["key"]): c["count"] for c in body["cells"]}
    # the 1 and the 3 are small; their row neighbours go with them
    assert cells == {
        ("female", "1970s"): None,
        ("female", "1980s"): None,
        ("male", "1970s"): None,
        ("male", "1980s"): None,
    }
    assert body["total"] == 30
    published = [c["count"] for c in body["cells"]] + [
        c["count"] for cs in body["margins"].values() for c in cs
    ]
    assert not any(n is not None and 0 < n < 11 for n in published)
    audit = [e for e in logs.events() if e.get("event") == "research_aggregate_read"]
    assert audit
    assert audit[0]["profile"] == RAVI
    assert audit[0]["aggregate"] == "demographics"


async def test_conditions_hide_small_counts_and_small_complements(
    app: tuple[FastAPI, Any], key_server: KeyServer, serve: Serve
) -> None:
    built, private = app
    token = token_for(private, key_server.base_url, profile=RAVI)
    async with serve(built) as client:
        answer = await client.get(
            "/v1/research/conditions", headers={"Authorization": f"Bearer {token}"}
        )
    body = answer.json()
    assert body["population"] == 30
    # A: 29 of 30 would reveal the one patient without it
    assert {c["key"][0]: c["count"] for c in body["conditions"]} == {"A": None, "B": 15, "C": None}


async def test_the_graph_query_answers_with_small_pairs_withheld(
    app: tuple[FastAPI, Any], key_server: KeyServer, serve: Serve
) -> None:
    built, private = app
    token = token_for(private, key_server.base_url, profile=RAVI)
    async with serve(built) as client:
        answer = await client.get(
            "/v1/research/graph/egfr-comorbidity",
            params={"threshold": 60},
            headers={"Authorization": f"Bearer {token}"},
        )
        bad = await client.get(
            "/v1/research/graph/egfr-comorbidity",
            params={"threshold": 1000},
            headers={"Authorization": f"Bearer {token}"},
        )
    body = answer.json()
    assert body["pairs"] == [{"condition_a": "A", "condition_b": "B", "patients": 15}]
    assert body["withheld_pairs"] == 2  # A-C and B-C: 5 patients each
    assert bad.status_code == 422
    assert bad.json()["error_code"] == "validation_error"


async def test_only_researchers_get_in(
    app: tuple[FastAPI, Any], key_server: KeyServer, serve: Serve
) -> None:
    built, private = app
    clinician = token_for(private, key_server.base_url, profile="Practitioner/clinician-alice")
    foreign = token_for(private, key_server.base_url, profile=RAVI, aud="other-app")
    async with serve(built) as client:
        missing = await client.get("/v1/research/conditions")
        refused = await client.get(
            "/v1/research/conditions", headers={"Authorization": f"Bearer {clinician}"}
        )
        wrong_app = await client.get(
            "/v1/research/conditions", headers={"Authorization": f"Bearer {foreign}"}
        )
    assert missing.status_code == 401
    assert missing.json()["error_code"] == "unauthenticated"
    assert refused.status_code == 403
    assert refused.json()["error_code"] == "forbidden"
    assert "correlation_id" in refused.json()
    assert wrong_app.status_code == 401
    assert wrong_app.json()["details"] == {"reason": "token_audience"}


async def test_a_researcher_is_rate_limited(
    app: tuple[FastAPI, Any], key_server: KeyServer, serve: Serve
) -> None:
    built, private = app
    token = token_for(private, key_server.base_url, profile=RAVI)
    built.state.research_rate_limit = SubjectRateLimit(5, clock=lambda: 6_000_030.0)
    async with serve(built) as client:
        answers = [
            await client.get(
                "/v1/research/conditions", headers={"Authorization": f"Bearer {token}"}
            )
            for _ in range(7)
        ]
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 5 + [429] * 2
    assert answers[-1].json()["error_code"] == "rate_limited"
    assert answers[-1].headers["Retry-After"] == "30"


async def test_without_an_export_the_store_is_unavailable(
    key_server: KeyServer, make_app: Callable[..., FastAPI], tmp_path: Path, serve: Serve
) -> None:
    private, public = ec_key("k1")
    key_server.keys = [public]
    built = make_app(
        medplum_base_url=key_server.base_url,
        research_dir=tmp_path / "empty",
        research_audiences=RESEARCH_APP,
        research_profiles=RAVI,
    )
    token = token_for(private, key_server.base_url, profile=RAVI)
    async with serve(built) as client:
        answer = await client.get(
            "/v1/research/demographics", headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 503
    assert answer.json()["details"] == {"reason": "no_export_yet"}
