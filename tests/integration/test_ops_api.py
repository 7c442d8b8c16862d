"""The ops dashboard's JSON API and sign-in against the real receiver, worker, PostgreSQL and
Medplum stand-in: who may see it (ops yes, clinicians and researchers no, nobody without a
session or token), what it reports, and its actions (CSRF-checked, previewed, audited)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from devtools.devserver import DevServer
from tests.integration.ops_support import (
    CLINICIAN,
    METRICS_TOKEN,
    OPS_ENV,
    OPS_USER,
    RESEARCHER,
    medplum_token,
    register_redirect,
    session_cookies,
    sign_in_session,
)
from tests.integration.pipeline_support import Pipeline, eventually, observation, running_pipeline

pytestmark = pytest.mark.integration

type Json = dict[str, Any]


@pytest.fixture(scope="module")
async def pipeline(module_devserver: DevServer, module_database: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(module_devserver, module_database, **OPS_ENV) as running:
        await register_redirect(running.admin, running.stack.receiver_base)
        yield running


@pytest.fixture(scope="module")
async def ops_cookies(pipeline: Pipeline) -> dict[str, str]:
    answer = await sign_in_session(pipeline.stack.receiver_base, *OPS_USER)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ops/"
    return session_cookies(answer)


def api(pipeline: Pipeline, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=pipeline.stack.receiver_base, timeout=60, **kwargs)


async def test_nobody_without_a_session_or_token(pipeline: Pipeline) -> None:
    async with api(pipeline) as http:
        for path in ("/v1/ops/overview", "/v1/ops/dead-letters", "/v1/ops/me"):
            answer = await http.get(path)
            assert answer.status_code == 401, path
            body = answer.json()
            assert body["error_code"] == "unauthenticated"
            assert body["correlation_id"]
        forged = await http.get(
            "/v1/ops/overview",
            cookies={"starvit_ops_session": "eyJwIjoiUHJhY3RpdGlvbmVyL3gifQ.x.y"},
        )
        assert forged.status_code == 401
        page = await http.get("/ops/")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/ops/login")
        assert (await http.get("/metrics")).status_code == 401


async def test_the_ops_user_signs_in_with_pkce_and_sees_the_overview(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    async with api(pipeline, cookies=ops_cookies) as http:
        me = (await http.get("/v1/ops/me")).json()
        assert me["profile"] == "Practitioner/ops-olivia"
        assert me["role"] == "ops"
        assert me["csrf_token"]
        answer = await http.get("/v1/ops/overview")
        assert answer.status_code == 200
        overview: Json = answer.json()
    assert overview["medplum_reachable"] is True
    handlers = {h["handler"]: h for h in overview["handlers"]}
    assert {"bmi", "review"} <= set(handlers)
    assert handlers["bmi"]["medplum_status"] == "active"
    assert handlers["bmi"]["healthy"] is True
    assert overview["processing"]["workers"], "the worker's heartbeat"
    assert all(w["alive"] for w in overview["processing"]["workers"])


async def test_a_clinician_and_a_researcher_are_refused(pipeline: Pipeline) -> None:
    for user in (CLINICIAN, RESEARCHER):
        answer = await sign_in_session(pipeline.stack.receiver_base, *user)
        assert answer.status_code == 403
        assert "does not have the ops role" in answer.text
        assert "starvit_ops_session" not in answer.cookies
    redirect = pipeline.stack.receiver_base + "/ops/callback"
    token = await medplum_token(pipeline.devserver.base_url, *CLINICIAN, redirect)
    async with api(pipeline, headers={"Authorization": f"Bearer {token}"}) as http:
        answer = await http.get("/v1/ops/overview")
    assert answer.status_code == 403
    assert answer.json()["error_code"] == "forbidden"


async def test_an_ops_token_works_and_a_foreign_token_does_not(pipeline: Pipeline) -> None:
    redirect = pipeline.stack.receiver_base + "/ops/callback"
    token = await medplum_token(pipeline.devserver.base_url, *OPS_USER, redirect)
    async with api(pipeline, headers={"Authorization": f"Bearer {token}"}) as http:
        answer = await http.get("/v1/ops/overview")
        assert answer.status_code == 200
        assert (await http.get("/metrics")).status_code == 200
    async with api(pipeline, headers={"Authorization": f"Bearer {token}x"}) as http:
        assert (await http.get("/v1/ops/overview")).status_code == 401


async def test_metrics_are_read_from_the_tables(pipeline: Pipeline) -> None:
    async with api(pipeline, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "starvit_queue_depth" in answer.text
    assert 'starvit_worker_heartbeat_age_seconds{worker="' in answer.text


async def _dead_letter(pipeline: Pipeline) -> tuple[int, str]:
    """A BMI event Medplum refused (403: dead-lettered at once); (event id, weight id)."""
    patient = await pipeline.new_patient()
    await pipeline.partner.create(observation(patient, "8302-2", 165, "cm", "2025-01-10T09:00:00Z"))
    await pipeline.settled()
    await pipeline.fault(
        status=403, count=100, method="POST", pathPattern="^/fhir/R4/?$", scope="fhir"
    )
    weight = (
        await pipeline.partner.create(
            observation(patient, "29463-7", 95, "kg", "2025-03-01T09:00:00Z")
        )
    ).resource
    await pipeline.settled(within=60)
    async with httpx.AsyncClient() as http:
        (await http.delete(pipeline.devserver.base_url + "_devserver/fault")).raise_for_status()
    [event_id] = [
        e[0]
        for e in pipeline.events()
        if e[3] == weight["id"] and e[1] == "bmi" and e[5] == "failed"
    ]
    return int(event_id), str(weight["id"])


async def test_replaying_a_dead_letter_needs_csrf_a_confirmation_and_is_audited(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    event_id, _ = await _dead_letter(pipeline)
    async with api(pipeline, cookies=ops_cookies) as http:
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        listed = (await http.get("/v1/ops/dead-letters")).json()["items"]
        assert next(d for d in listed if d["event_id"] == event_id)["error_code"] == (
            "medplum_forbidden"
        )
        body = {"event_id": event_id, "confirm": True}
        refused = await http.post("/v1/ops/actions/replay-dead-letter", json=body)
        assert refused.status_code == 403
        assert refused.json()["details"]["reason"] == "csrf"
        foreign = await http.post(
            "/v1/ops/actions/replay-dead-letter",
            json=body,
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        preview = await http.post(
            "/v1/ops/actions/replay-dead-letter",
            json={"event_id": event_id},
            headers={"X-CSRF-Token": csrf},
        )
        assert preview.json() == {
            "action": "replay_dead_letter",
            "status": "preview",
            "affected": 1,
            "detail": None,
            "action_id": None,
        }
        assert next(e for e in pipeline.events() if e[0] == event_id)[5] == "failed"
        done = await http.post(
            "/v1/ops/actions/replay-dead-letter", json=body, headers={"X-CSRF-Token": csrf}
        )
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "done"
        assert done.json()["affected"] == 1
        await pipeline.settled(within=60)
        assert next(e for e in pipeline.events() if e[0] == event_id)[5] == "processed"
        again = await http.post(
            "/v1/ops/actions/replay-dead-letter", json=body, headers={"X-CSRF-Token": csrf}
        )
        assert again.status_code == 409
        actions = (await http.get("/v1/ops/actions")).json()["items"]
    assert actions[0]["action"] == "replay_dead_letter"
    assert actions[0]["actor"] == "Practitioner/ops-olivia"
    assert actions[0]["target"] == str(event_id)
    assert actions[0]["outcome"] == "done"
    with psycopg.connect(pipeline.database_url) as conn:
        row = conn.execute(
            "SELECT replayed_at IS NOT NULL, replays FROM starvit.event_keys WHERE id = %s",
            (event_id,),
        ).fetchone()
    assert row == (True, 1)


async def test_a_switched_off_subscription_is_reported_and_reenabled(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    [subscription] = await pipeline.search(
        "Subscription", _tag="https://fhir.starvit.health/CodeSystem/subscription|egfr"
    )
    await pipeline.admin.update(
        {**subscription, "status": "off", "error": "switched off by test"}, idempotent=True
    )

    async def egfr() -> Json:
        async with api(pipeline, cookies=ops_cookies) as http:
            overview = (await http.get("/v1/ops/overview")).json()
        return next(h for h in overview["handlers"] if h["handler"] == "egfr")

    seen = await eventually(egfr, lambda h: h["medplum_status"] == "off")
    assert seen["healthy"] is False
    assert seen["medplum_error"] == "switched off by test"
    async with api(pipeline, cookies=ops_cookies) as http:
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        done = await http.post(
            "/v1/ops/actions/reenable-subscription",
            json={"handler": "egfr", "confirm": True},
            headers={"X-CSRF-Token": csrf},
        )
    assert done.status_code == 200, done.text
    assert done.json()["detail"] == "reenabled"
    assert (await pipeline.read(f"Subscription/{subscription['id']}"))["status"] == "active"
    seen = await eventually(egfr, lambda h: h["medplum_status"] == "active")
    assert seen["healthy"] is True


async def test_gaps_and_the_sweep_of_a_window(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    # The hba1c Subscription is off while a result is recorded: Medplum never delivers it.
    [subscription] = await pipeline.search(
        "Subscription", _tag="https://fhir.starvit.health/CodeSystem/subscription|hba1c"
    )
    await pipeline.admin.update({**subscription, "status": "off"}, idempotent=True)
    start = datetime.now(UTC) - timedelta(minutes=1)
    patient = await pipeline.new_patient()
    created = await pipeline.partner.create(
        observation(patient, "4548-4", 7.1, "%", "2025-03-01T09:00:00Z")
    )
    hba1c = created.resource
    await pipeline.settled()
    end = datetime.now(UTC) + timedelta(minutes=1)
    window = {"start": start.isoformat(), "end": end.isoformat(), "handler": "hba1c"}
    async with api(pipeline, cookies=ops_cookies) as http:
        gaps = (await http.get("/v1/ops/gaps", params=window)).json()["gaps"]
        assert [g["handler"] for g in gaps] == ["hba1c"]
        missing = f"Observation/{hba1c['id']}/_history/{created.version_id}"
        assert missing in gaps[0]["missing"]
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        preview = await http.post(
            "/v1/ops/actions/sweep-window", json=window, headers={"X-CSRF-Token": csrf}
        )
        assert preview.json()["status"] == "preview"
        assert preview.json()["affected"] >= 1
        done = await http.post(
            "/v1/ops/actions/sweep-window",
            json={**window, "confirm": True},
            headers={"X-CSRF-Token": csrf},
        )
        assert done.json()["affected"] >= 1
        await pipeline.settled(within=60)
        after = (await http.get("/v1/ops/gaps", params=window)).json()["gaps"]
    assert missing not in after[0]["missing"]
    assert after[0]["recovered_by_sweep"] >= 1
    await pipeline.admin.update(
        {**(await pipeline.read(f"Subscription/{subscription['id']}")), "status": "active"},
        idempotent=True,
    )


async def test_actions_validate_their_input(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    async with api(pipeline, cookies=ops_cookies) as http:
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        now = datetime.now(UTC)
        backwards = {"start": now.isoformat(), "end": (now - timedelta(hours=1)).isoformat()}
        answer = await http.post("/v1/ops/actions/replay-window", json=backwards, headers=headers)
        assert answer.status_code == 422
        assert answer.json()["error_code"] == "validation_error"
        unknown = await http.post(
            "/v1/ops/actions/reenable-subscription", json={"handler": "nope"}, headers=headers
        )
        assert unknown.status_code == 404
        wrong = await http.post(
            "/v1/ops/actions/resend",
            json={"handler": "bmi", "reference": "Patient/x"},
            headers=headers,
        )
        assert wrong.status_code == 422
        missing = await http.post(
            "/v1/ops/actions/replay-dead-letter", json={"event_id": 987654321}, headers=headers
        )
        assert missing.status_code == 404


async def test_replaying_a_window_replays_every_failed_event_in_it(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    event_id, weight_id = await _dead_letter(pipeline)
    failed = {e[0] for e in pipeline.events() if e[3] == weight_id and e[5] == "failed"}
    assert event_id in failed
    assert len(failed) == 2  # the weight notifies bmi and obesity
    now = datetime.now(UTC)
    window = {
        "start": (now - timedelta(minutes=5)).isoformat(),
        "end": (now + timedelta(minutes=1)).isoformat(),
    }
    async with api(pipeline, cookies=ops_cookies) as http:
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        preview = await http.post("/v1/ops/actions/replay-window", json=window, headers=headers)
        assert preview.json()["affected"] >= 2
        done = await http.post(
            "/v1/ops/actions/replay-window", json={**window, "confirm": True}, headers=headers
        )
        assert done.json()["status"] == "done"
        assert done.json()["affected"] >= 2
        await pipeline.settled(within=60)
        dead = (await http.get("/v1/ops/dead-letters")).json()["items"]
    assert not failed & {d["event_id"] for d in dead}
    assert all(e[5] == "processed" for e in pipeline.events() if e[0] in failed)


async def test_resend_asks_medplum_as_the_ops_user_and_is_not_counted_as_health(
    pipeline: Pipeline, ops_cookies: dict[str, str]
) -> None:
    patient = await pipeline.new_patient()
    height = (
        await pipeline.partner.create(
            observation(patient, "8302-2", 170, "cm", "2025-01-10T09:00:00Z")
        )
    ).resource
    await pipeline.settled()
    before = (await pipeline.stats())["notifications"]
    async with api(pipeline, cookies=ops_cookies) as http:
        csrf = (await http.get("/v1/ops/me")).json()["csrf_token"]
        body = {"handler": "bmi", "reference": f"Observation/{height['id']}", "confirm": True}
        done = await http.post("/v1/ops/actions/resend", json=body, headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "done"
        await pipeline.settled()
        after = (await pipeline.stats())["notifications"]
        assert after != before  # Medplum delivered again
        actions = (await http.get("/v1/ops/actions")).json()["items"]

        async def bmi() -> Json:
            overview = (await http.get("/v1/ops/overview")).json()
            return next(h for h in overview["handlers"] if h["handler"] == "bmi")

        # The same version again: a duplicate for the receiver, no new event, no delivery.
        seen = await eventually(bmi, lambda h: h["duplicates_last_hour"] >= 1, within=30)
    assert actions[0]["action"] == "resend"
    assert actions[0]["target"] == f"Observation/{height['id']}"
    assert actions[0]["actor"] == "Practitioner/ops-olivia"
    assert seen["healthy"] is True
    assert len([e for e in pipeline.events() if e[3] == height["id"] and e[1] == "bmi"]) == 1
