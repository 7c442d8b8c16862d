"""The ops dashboard in a real browser, against the real receiver, worker, PostgreSQL and Medplum
stand-in: the ops user signs in through Medplum's sign-in page, sees a Subscription switched off
in Medplum turn red, replays a dead letter from its row and sees it processed; a clinician's
sign-in is refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from devtools.devserver import DevServer
from tests.integration.ops_support import CLINICIAN, OPS_ENV, OPS_USER, register_redirect
from tests.integration.pipeline_support import Pipeline, observation, running_pipeline

pytestmark = pytest.mark.integration

SUBSCRIPTION_TAG = "https://fhir.starvit.health/CodeSystem/subscription"
RED = "rgb(180, 35, 24)"


@pytest.fixture(scope="module")
async def pipeline(module_devserver: DevServer, module_database: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(module_devserver, module_database, **OPS_ENV) as running:
        await register_redirect(running.admin, running.stack.receiver_base)
        yield running


async def sign_in(page: Page, pipeline: Pipeline, email: str, password: str) -> None:
    """Open the dashboard; Medplum's sign-in page asks for the user's email and password."""
    await page.goto(pipeline.stack.receiver_base + "/ops/")
    await expect(page).to_have_url(re.compile(re.escape(pipeline.devserver.base_url)))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def dead_letter(pipeline: Pipeline) -> int:
    """A BMI event Medplum refused with 403 (dead-lettered at once); its event id."""
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
    return int(event_id)


async def test_ops_user_sees_a_subscription_turn_red_and_replays_a_dead_letter(
    browser: Browser, pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, pipeline, *OPS_USER)
    await expect(page).to_have_url(pipeline.stack.receiver_base + "/ops/")
    await expect(
        page.get_by_role("heading", name="Subscriptions: is Medplum delivering?")
    ).to_be_visible()
    status = page.locator('tr[data-handler="egfr"] .status')
    await expect(status).to_have_text("active")
    cookies = {c.get("name"): c for c in await context.cookies()}
    session = cookies["starvit_ops_session"]
    assert session.get("httpOnly") is True
    assert session.get("sameSite") == "Lax"

    # Medplum switches the eGFR Subscription off: the dashboard turns its row red.
    [subscription] = await pipeline.search("Subscription", _tag=f"{SUBSCRIPTION_TAG}|egfr")
    await pipeline.admin.update(
        {**subscription, "status": "off", "error": "disabled after failed deliveries"},
        idempotent=True,
    )
    await page.reload()
    await expect(status).to_have_text("off", timeout=20_000)
    await expect(status).to_have_css("background-color", RED)
    await expect(page.locator('tr[data-handler="egfr"]')).to_contain_text(
        "disabled after failed deliveries"
    )

    # Re-enabled from its row, through the confirmation step.
    await page.locator('tr[data-handler="egfr"]').get_by_role("link", name="Re-enable").click()
    await expect(page.get_by_role("heading", name="Re-enable a Subscription")).to_be_visible()
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#notice")).to_contain_text("reenable_subscription")
    await expect(status).to_have_text("active", timeout=20_000)

    # A dead letter: listed with its error code, replayed from its row, processed.
    event_id = await dead_letter(pipeline)
    await page.goto(pipeline.stack.receiver_base + "/ops/")
    row = page.locator(f'tr[data-event="{event_id}"]')
    await expect(row).to_contain_text("medplum_forbidden")
    await expect(page.locator("#dead-letter-count")).to_have_css("color", RED)
    dead_before = int(await page.locator("#dead-letter-count").inner_text())
    await page.screenshot(path=str(tmp_path_factory.mktemp("ops") / "dead-letter.png"))
    await row.get_by_role("link", name="Replay").click()
    await expect(page.locator("#preview")).to_contain_text("1 event")
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#notice")).to_contain_text("replay_dead_letter")
    await pipeline.settled(within=60)
    assert next(e for e in pipeline.events() if e[0] == event_id)[5] == "processed"
    await page.reload()
    await expect(page.locator(f'tr[data-event="{event_id}"]')).to_have_count(0)
    await expect(page.locator("#dead-letter-count")).to_have_text(str(dead_before - 1))
    await context.close()


async def test_a_clinician_is_refused(browser: Browser, pipeline: Pipeline) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    responses: list[int] = []
    page.on(
        "response",
        lambda r: responses.append(r.status) if "/ops/callback" in r.url else None,
    )
    await sign_in(page, pipeline, *CLINICIAN)
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("does not have the ops role")
    assert responses == [403]
    assert "starvit_ops_session" not in {c.get("name") for c in await context.cookies()}
    # Nothing of the dashboard opens afterwards either (with this browser's cookies).
    for path in ("/ops/panels", "/v1/ops/overview"):
        answer = await context.request.get(pipeline.stack.receiver_base + path)
        assert answer.status == 401, path
    await context.close()
