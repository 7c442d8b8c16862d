"""The partner bundle API against the Medplum stand-in and a real PostgreSQL: writes as the
partner with Provenance and AuditEvent, idempotency (replay, reuse, in flight, crash), the
tenant boundary and what a partner may not write (403), validation with entry details (400,
413, 422), dry runs, and no posted value in logs or the service's tables."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql

from app.integrations.medplum import MedplumClient
from app.observability.tracing import configure_tracing
from devtools.devserver import SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, DevServer
from tests.conftest import LogCapture, settings_for_tests
from tests.integration.partner_support import (
    BETA,
    bundle,
    client_token,
    partner_app,
    patient_entry,
    post_headers,
    registry_file,
    running,
    urn,
    weight_entry,
)
from tests.integration.pipeline_support import fhir_client

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_quota_window")]

URL = "/v1/bundles"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registry_file(
        tmp_path_factory.mktemp("registry"), partner_acme={"batch_chunk_entries": 2}
    )


@pytest.fixture
async def api(
    module_devserver: DevServer, module_database: str, registry: Path
) -> AsyncIterator[httpx.AsyncClient]:
    app = partner_app(module_devserver.base_url, module_database, registry)
    async with running(app) as http:
        yield http


@pytest.fixture
async def acme(module_devserver: DevServer) -> str:
    return await client_token(module_devserver.base_url)


@pytest.fixture
async def service(module_devserver: DevServer) -> AsyncIterator[MedplumClient]:
    async with fhir_client(
        module_devserver.base_url, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET
    ) as medplum:
        yield medplum


def _json(value: object) -> Any:
    """A resource read back, for indexing in assertions."""
    return value


def _rows(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return list(conn.execute(sql, params).fetchall())  # pyright: ignore[reportArgumentType]


async def test_a_transaction_is_written_as_the_partner_with_provenance_and_audit(
    api: httpx.AsyncClient, acme: str, service: MedplumClient, module_database: str
) -> None:
    marker = uuid.uuid4().hex
    patient_url = urn()
    body = bundle([patient_entry(patient_url, marker), weight_entry(urn(), patient_url)])

    answer = await api.post(URL, json=body, headers=post_headers(acme, f"key-{marker}"))

    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert outcome["status"] == "completed"
    assert [e["action"] for e in outcome["entries"]] == ["created", "created"]
    patient_ref = outcome["entries"][0]["reference"]
    observation_ref = outcome["entries"][1]["reference"]
    assert answer.headers["RateLimit-Policy"].startswith('"partner";q=')
    assert answer.headers["RateLimit"].startswith('"partner";r=')
    # Written as the partner: Medplum records the partner as the author.
    written = await service.search(
        "Observation", {"_id": observation_ref.split("/")[1]}, extended=True
    )
    assert (
        _json(written.resources[0])["meta"]["author"]["reference"]
        == "ClientApplication/partner-acme"
    )
    assert _json(written.resources[0])["subject"]["reference"] == patient_ref
    # The service added an identifier from the fullUrl so that the create was conditional.
    provenance = await service.search("Provenance", {"target": observation_ref})
    assert len(provenance.resources) == 1
    agents = [a["who"]["reference"] for a in _json(provenance.resources[0])["agent"]]
    assert agents == ["ClientApplication/partner-acme", f"ClientApplication/{SERVICE_CLIENT_ID}"]
    audit = await service.search(
        "AuditEvent", {"_tag": f"urn:starvit:partner-bundle|audit-{outcome['id']}"}
    )
    assert len(audit.resources) == 1
    event = _json(audit.resources[0])
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0]["code"] == "transaction"
    assert event["outcome"] == "0"
    assert event["agent"][0]["who"]["reference"] == "ClientApplication/partner-acme"
    details = {d["type"]: d["valueString"] for d in event["entity"][1]["detail"]}
    assert details == {"Observation": "1", "Patient": "1"}
    rows = _rows(
        module_database,
        "SELECT client_id, status_code, counts, bundle_type FROM starvit.partner_audit "
        "WHERE bundle_id = %s",
        outcome["id"],
    )
    assert rows == [("partner-acme", 200, {"Observation": 1, "Patient": 1}, "transaction")]


async def test_a_replay_answers_the_same_outcome_and_writes_nothing(
    api: httpx.AsyncClient, acme: str, service: MedplumClient, module_devserver: DevServer
) -> None:
    marker = uuid.uuid4().hex
    patient_url = urn()
    body = bundle([patient_entry(patient_url, marker), weight_entry(urn(), patient_url)])
    headers = post_headers(acme, f"replay-{marker}")

    first = await api.post(URL, json=body, headers=headers)
    again = await api.post(URL, json=body, headers=headers)
    fetched = await api.get(f"{URL}/{first.json()['id']}", headers=post_headers(acme))
    other_body = await api.post(
        URL, json=bundle([patient_entry(urn(), marker + "x")]), headers=headers
    )

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert fetched.status_code == 200
    assert fetched.json() == first.json()
    beta = await client_token(module_devserver.base_url, BETA)
    not_theirs = await api.get(f"{URL}/{first.json()['id']}", headers=post_headers(beta))
    assert not_theirs.status_code == 404
    patients = await service.search("Patient", {"identifier": f"urn:test:partner-mrn|{marker}"})
    assert len(patients.resources) == 1
    assert other_body.status_code == 422
    assert other_body.json()["error_code"] == "idempotency_key_reused"


async def test_a_retry_after_a_crash_between_write_and_outcome_matches_instead_of_writing(
    api: httpx.AsyncClient, acme: str, service: MedplumClient, module_database: str
) -> None:
    marker = uuid.uuid4().hex
    patient_url = urn()
    body = bundle([patient_entry(patient_url, marker), weight_entry(urn(), patient_url)])
    key = f"crash-{marker}"
    first = await api.post(URL, json=body, headers=post_headers(acme, key))
    assert first.status_code == 200
    # As if the process had died after Medplum's write and before the outcome was stored:
    # the key is still running, and long enough ago to be taken over.
    with psycopg.connect(module_database) as conn:
        conn.execute(
            "UPDATE starvit.partner_requests_idempotency SET state = 'running', outcome = NULL, "
            "status_code = NULL, updated_at = now() - interval '1 hour' WHERE key = %s",
            (key,),
        )

    retried = await api.post(URL, json=body, headers=post_headers(acme, key))

    assert retried.status_code == 200, retried.text
    assert [e["action"] for e in retried.json()["entries"]] == ["matched", "matched"]
    assert [e["reference"] for e in retried.json()["entries"]] == [
        e["reference"] for e in first.json()["entries"]
    ]
    observations = await service.search(
        "Observation", {"subject": first.json()["entries"][0]["reference"]}
    )
    assert len(observations.resources) == 1


async def test_the_same_key_while_the_first_request_runs_is_409(
    api: httpx.AsyncClient, acme: str, module_database: str
) -> None:
    key = f"inflight-{uuid.uuid4().hex}"
    body = bundle([patient_entry(urn(), key)])
    with psycopg.connect(module_database) as conn:
        conn.execute(
            "INSERT INTO starvit.partner_requests_idempotency (client_id, key, fingerprint, "
            "bundle_id, state, expires_at) VALUES ('partner-acme', %s, %s, %s, 'running', "
            "now() + interval '1 day')",
            (key, _fingerprint(json.dumps(body).encode()), uuid.uuid4()),
        )

    answer = await api.post(URL, content=json.dumps(body), headers=post_headers(acme, key))

    assert answer.status_code == 409
    assert answer.json()["error_code"] == "idempotency_key_in_use"
    assert answer.headers["Retry-After"] == "1"


def _fingerprint(body: bytes) -> str:
    from app.partners.service import request_fingerprint  # noqa: PLC0415

    return request_fingerprint(body, dry_run=False)


async def test_a_missing_key_is_400_and_a_wrong_content_type_415(
    api: httpx.AsyncClient, acme: str
) -> None:
    body = bundle([patient_entry(urn(), uuid.uuid4().hex)])
    missing = await api.post(URL, json=body, headers=post_headers(acme))
    wrong_type = await api.post(
        URL,
        content=json.dumps(body),
        headers={**post_headers(acme, "k-type"), "Content-Type": "text/plain"},
    )
    assert missing.status_code == 400
    assert missing.json()["error_code"] == "idempotency_key_missing"
    assert wrong_type.status_code == 415


@pytest.mark.parametrize(
    ("entry", "code", "path"),
    [
        (
            {
                "resource": {"resourceType": "Task", "status": "requested", "intent": "proposal"},
                "request": {"method": "POST", "url": "Task"},
            },
            "resource_type_forbidden",
            "Task",
        ),
        (
            {
                "resource": {
                    "resourceType": "Provenance",
                    "recorded": "2026-01-01T00:00:00Z",
                    "target": [{"reference": "Patient/x"}],
                    "agent": [{"who": {"reference": "Practitioner/x"}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            },
            "resource_type_forbidden",
            "Provenance",
        ),
        (
            {
                "resource": {
                    "resourceType": "Patient",
                    "meta": {"author": {"reference": "Practitioner/clinician-alice"}},
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            "element_forbidden",
            "Patient.meta.author",
        ),
        (
            {
                "resource": {
                    "resourceType": "PractitionerRole",
                    "practitioner": {"reference": "Practitioner/clinician-alice"},
                    "code": [
                        {"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}]}
                    ],
                },
                "request": {"method": "POST", "url": "PractitionerRole"},
            },
            "clinician_role_forbidden",
            "PractitionerRole.code",
        ),
        (
            weight_entry("urn:uuid:6f1c4c2e-0000-4000-8000-000000000001", "Patient/beta-patient"),
            "reference_outside_tenant",
            "Observation.subject.reference",
        ),
    ],
)
async def test_what_a_partner_may_not_write_is_403_naming_the_entry(
    api: httpx.AsyncClient, acme: str, entry: dict[str, object], code: str, path: str
) -> None:
    entry = {"fullUrl": "urn:uuid:6f1c4c2e-0000-4000-8000-00000000000f", **entry}
    body = bundle([patient_entry(urn(), uuid.uuid4().hex), entry], "batch")

    answer = await api.post(URL, json=body, headers=post_headers(acme, uuid.uuid4().hex))

    assert answer.status_code == 403, answer.text
    envelope = answer.json()
    assert envelope["error_code"] == "entry_forbidden"
    assert {"index": 1, "fullUrl": entry["fullUrl"], "path": path, "code": code} in envelope[
        "details"
    ]["entries"]


async def test_a_partner_of_another_tenant_cannot_reach_this_one(
    api: httpx.AsyncClient, module_devserver: DevServer, acme: str
) -> None:
    created = await api.post(
        URL,
        json=bundle([patient_entry(urn(), uuid.uuid4().hex)]),
        headers=post_headers(acme, uuid.uuid4().hex),
    )
    acme_patient = created.json()["entries"][0]["reference"]
    beta = await client_token(module_devserver.base_url, BETA)

    answer = await api.post(
        URL,
        json=bundle([weight_entry(urn(), acme_patient)]),
        headers=post_headers(beta, uuid.uuid4().hex),
    )

    assert answer.status_code == 403
    assert answer.json()["details"]["entries"][0]["code"] == "reference_outside_tenant"


async def test_invalid_entries_are_422_with_index_fullurl_path_and_code(
    api: httpx.AsyncClient, acme: str
) -> None:
    patient_url = urn()
    wrong_unit = weight_entry(urn(), patient_url, value=72.5, unit="cm")
    not_ucum = weight_entry(urn(), patient_url, unit="kilograms")
    future = weight_entry(urn(), patient_url, effectiveDateTime="2999-01-01T00:00:00Z")
    body = bundle(
        [patient_entry(patient_url, uuid.uuid4().hex), wrong_unit, not_ucum, future], "batch"
    )

    answer = await api.post(URL, json=body, headers=post_headers(acme, uuid.uuid4().hex))

    assert answer.status_code == 422, answer.text
    envelope = answer.json()
    assert envelope["error_code"] == "entry_invalid"
    entries = envelope["details"]["entries"]
    assert {
        "index": 1,
        "fullUrl": wrong_unit["fullUrl"],
        "path": "Observation.valueQuantity.code",
        "code": "unit_wrong_for_code",
    } in entries
    assert {
        "index": 2,
        "fullUrl": not_ucum["fullUrl"],
        "path": "Observation.valueQuantity.code",
        "code": "unit_invalid",
    } in entries
    assert {
        "index": 3,
        "fullUrl": future["fullUrl"],
        "path": "Observation.effectiveDateTime",
        "code": "date_in_future",
    } in entries
    assert "72.5" not in answer.text


async def test_a_binding_only_medplum_checks_is_422_from_validate(
    api: httpx.AsyncClient, acme: str
) -> None:
    patient_url = urn()
    bogus = weight_entry(urn(), patient_url, status="bogus")
    body = bundle([patient_entry(patient_url, uuid.uuid4().hex), bogus])

    answer = await api.post(URL, json=body, headers=post_headers(acme, uuid.uuid4().hex))

    assert answer.status_code == 422, answer.text
    entry = answer.json()["details"]["entries"][0]
    assert entry["index"] == 1
    assert entry["code"] == "fhir_invalid"
    assert entry["path"].startswith("Observation.status")


async def test_malformed_oversized_and_wrong_type_bundles(
    api: httpx.AsyncClient, module_devserver: DevServer, acme: str
) -> None:
    beta = await client_token(module_devserver.base_url, BETA)
    malformed = await api.post(
        URL, content=b'{"resourceType": "Bundle", ', headers=post_headers(acme, "malformed-1")
    )
    searchset = await api.post(
        URL,
        json={"resourceType": "Bundle", "type": "searchset", "entry": []},
        headers=post_headers(acme, uuid.uuid4().hex),
    )
    # partner-beta may post 200,000 bytes at most.
    big = bundle([patient_entry(urn(), "x" * 250_000)])
    oversized = await api.post(URL, json=big, headers=post_headers(beta, uuid.uuid4().hex))
    transaction = bundle([patient_entry(urn(), uuid.uuid4().hex) for _ in range(9)])
    too_long = await api.post(URL, json=transaction, headers=post_headers(acme, uuid.uuid4().hex))

    assert malformed.status_code == 400
    assert malformed.json()["error_code"] == "malformed_body"
    assert searchset.status_code == 422
    assert searchset.json()["error_code"] == "bundle_type_unsupported"
    assert oversized.status_code == 413
    assert oversized.json()["details"] == {"limit_bytes": 200_000}
    assert too_long.status_code == 422
    assert too_long.json()["error_code"] == "transaction_too_large"


async def test_a_batch_is_split_and_a_dry_run_says_what_would_happen(
    api: httpx.AsyncClient, acme: str, service: MedplumClient
) -> None:
    markers = [uuid.uuid4().hex for _ in range(3)]
    patient_url = urn()
    body = bundle(
        [
            patient_entry(patient_url, markers[0]),
            weight_entry(urn(), patient_url),
            weight_entry(urn(), patient_url, value=73.0),
        ],
        "batch",
    )
    dry = await api.post(
        URL + "?dry_run=true", json=body, headers=post_headers(acme, uuid.uuid4().hex)
    )
    posted = await api.post(URL, json=body, headers=post_headers(acme, uuid.uuid4().hex))
    dry_again = await api.post(
        URL + "?dry_run=true", json=body, headers=post_headers(acme, uuid.uuid4().hex)
    )

    assert dry.status_code == 200
    assert dry.json()["status"] == "dry_run"
    assert [e["action"] for e in dry.json()["entries"]] == ["would_create"] * 3
    # chunks of two entries (the test registry): the third entry's reference to the patient
    # created by the first chunk was rewritten.
    assert posted.status_code == 200, posted.text
    entries = posted.json()["entries"]
    assert [e["action"] for e in entries] == ["created"] * 3
    third = await service.read("Observation", entries[2]["reference"].split("/")[1])
    assert _json(third.resource)["subject"]["reference"] == entries[0]["reference"]
    assert [e["action"] for e in dry_again.json()["entries"]] == ["would_match"] * 3


async def test_no_posted_value_reaches_logs_spans_or_the_services_tables(
    module_devserver: DevServer,
    module_database: str,
    registry: Path,
    acme: str,
    logs: LogCapture,
) -> None:
    spans = InMemorySpanExporter()
    configure_tracing(settings_for_tests(), extra_processor=SimpleSpanProcessor(spans))
    app = partner_app(module_devserver.base_url, module_database, registry)
    logs.install()
    canary = "Zqxcanary" + uuid.uuid4().hex[:8]
    patient_url = urn()
    good = bundle(
        [
            patient_entry(patient_url, canary, name=[{"family": canary, "given": [canary]}]),
            weight_entry(urn(), patient_url, note=[{"text": canary}]),
        ]
    )
    bad = bundle([patient_entry(urn(), canary, birthDate=f"{canary}")], "batch")
    async with running(app) as api:
        answers = [
            await api.post(URL, json=good, headers=post_headers(acme, uuid.uuid4().hex)),
            await api.post(URL, json=bad, headers=post_headers(acme, uuid.uuid4().hex)),
        ]

    assert [a.status_code for a in answers] == [200, 422]
    assert canary not in answers[1].text
    assert canary not in logs.text
    finished = spans.get_finished_spans()
    assert any(span.name.startswith("POST /v1/bundles") for span in finished)
    for span in finished:
        text = span.name + json.dumps(dict(span.attributes or {}), default=str)
        assert canary not in text, span.name
    with psycopg.connect(module_database) as conn:
        tables = [
            str(row[0])
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'starvit'"
            )
        ]
        for table in tables:
            dump = conn.execute(
                sql.SQL("SELECT t::text FROM starvit.{} t").format(sql.Identifier(table))
            ).fetchall()
            assert not any(canary in str(row[0]) for row in dump), table


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    capture.install()
    yield capture
    from app.observability.logging import configure_logging  # noqa: PLC0415

    configure_logging()


async def _fault(devserver: DevServer, **fault: object) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(devserver.base_url + "_devserver/fault", json=fault)
        answer.raise_for_status()


async def test_medplum_down_is_503_and_the_same_key_can_be_sent_again(
    api: httpx.AsyncClient, acme: str, module_devserver: DevServer
) -> None:
    body = bundle([patient_entry(urn(), uuid.uuid4().hex)])
    key = uuid.uuid4().hex
    # The first bundle request ($validate) goes through; the forwarded write and its retry fail.
    await _fault(
        module_devserver, status=503, count=2, skip=1, method="POST", pathPattern="^/fhir/R4/?$"
    )
    down = await api.post(URL, json=body, headers=post_headers(acme, key))
    await _fault(
        module_devserver, status=501, count=1, skip=1, method="POST", pathPattern="^/fhir/R4/?$"
    )
    odd = await api.post(URL, json=body, headers=post_headers(acme, key))
    again = await api.post(URL, json=body, headers=post_headers(acme, key))

    assert down.status_code == 503, down.text
    assert down.json()["error_code"] == "dependency_unavailable"
    assert down.headers["Retry-After"] == "5"
    assert odd.status_code == 502, odd.text
    assert odd.json()["error_code"] == "medplum_unexpected_answer"
    assert again.status_code == 200, again.text
    assert again.json()["entries"][0]["action"] == "created"


async def test_a_refusal_is_audited_in_medplum_and_in_the_database(
    api: httpx.AsyncClient, acme: str, service: MedplumClient, module_database: str
) -> None:
    task = {
        "fullUrl": urn(),
        "resource": {"resourceType": "Task", "status": "requested", "intent": "proposal"},
        "request": {"method": "POST", "url": "Task"},
    }
    refused = await api.post(URL, json=bundle([task]), headers=post_headers(acme, uuid.uuid4().hex))
    assert refused.status_code == 403
    rows = _rows(
        module_database,
        "SELECT bundle_id, status_code, error_code, counts FROM starvit.partner_audit "
        "WHERE correlation_id = %s",
        refused.json()["correlation_id"],
    )
    assert len(rows) == 1
    bundle_id, status_code, error_code, counts = rows[0]
    assert (status_code, error_code) == (403, "entry_forbidden")
    assert counts == {}  # the refused entry was never parsed into a write
    audit = await service.search(
        "AuditEvent", {"_tag": f"urn:starvit:partner-bundle|audit-{bundle_id}"}
    )
    assert [_json(event)["outcome"] for event in audit.resources] == ["4"]
    assert _json(audit.resources[0])["outcomeDesc"] == "entry_forbidden"


async def test_updates_and_conditional_references_stay_inside_the_tenant(
    api: httpx.AsyncClient, acme: str, service: MedplumClient
) -> None:
    marker = uuid.uuid4().hex
    created = await api.post(
        URL,
        json=bundle([patient_entry(urn(), marker)]),
        headers=post_headers(acme, uuid.uuid4().hex),
    )
    patient = created.json()["entries"][0]["reference"]
    by_identifier = f"Patient?identifier=urn:test:partner-mrn|{marker}"
    update = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "Patient",
            "id": patient.split("/")[1],
            "identifier": [{"system": "urn:test:partner-mrn", "value": marker}],
            "gender": "male",
        },
        "request": {"method": "PUT", "url": patient},
    }
    other_tenant = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {"resourceType": "Patient", "id": "beta-patient", "gender": "male"},
        "request": {"method": "PUT", "url": "Patient/beta-patient"},
    }

    updated = await api.post(
        URL,
        json=bundle([update, weight_entry(urn(), by_identifier)]),
        headers=post_headers(acme, uuid.uuid4().hex),
    )
    refused = await api.post(
        URL, json=bundle([other_tenant]), headers=post_headers(acme, uuid.uuid4().hex)
    )

    assert updated.status_code == 200, updated.text
    assert [e["action"] for e in updated.json()["entries"]] == ["updated", "created"]
    observation = updated.json()["entries"][1]["reference"].split("/")[1]
    written = await service.read("Observation", observation)
    # The conditional reference was resolved, within the tenant, to the one matching patient.
    assert _json(written.resource)["subject"]["reference"] == patient
    assert refused.status_code == 403
    assert refused.json()["details"]["entries"] == [
        {
            "index": 0,
            "fullUrl": other_tenant["fullUrl"],
            "path": "Patient.id",
            "code": "update_target_outside_tenant",
        }
    ]
