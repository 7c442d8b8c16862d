"""Screenshots of the ops dashboard under load, taken during ``make bench``.

A receiver and worker with the dashboard on, a stream of body weights written at a steady rate;
while they are being processed, Debian's Chromium (driven by Playwright) signs in as the seeded
ops user through the stand-in's sign-in page and photographs the dashboard; once the queue has
drained, once more. The full run writes ``docs/ops-dashboard-under-load.png`` and
``docs/ops-dashboard-drained.png``. ``--quick`` takes none (it must stay a smoke test of
seconds; the browser test, ``tests/browser/``, drives the same pages).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from app.integrations.medplum import MedplumClient, MedplumClientConfig
from benchmarks.e2e import DEVSERVER_EXTRA_ENV, _counts, _populate, _sync, _wait_until, _write
from benchmarks.servers import Postgres, close_stack
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET, PROJECT_ROOT, DevServer
from devtools.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
DOCS = PROJECT_ROOT / "docs"
# The seeded ops user of the stand-in (development credentials, devserver/README.md).
OPS_EMAIL = "olivia.ops@starvit.example"
OPS_PASSWORD = "olivia-dev-password"  # noqa: S105 - published development seed value
OPS_ENV = {
    "STARVIT_OPS_SESSION_SECRET": "bench-ops-session-secret",
    "STARVIT_SWEEP_INTERVAL_SECONDS": "0",
}


async def _register_redirect(medplum_base: str, receiver_base: str) -> None:
    config = MedplumClientConfig(
        base_url=medplum_base, client_id=ADMIN_CLIENT_ID, client_secret=ADMIN_CLIENT_SECRET
    )
    async with MedplumClient(config) as admin:
        current = (await admin.read("ClientApplication", "starvit-ops")).resource
        redirect = receiver_base + "/ops/callback"
        await admin.update(
            {**current, "redirectUri": redirect, "redirectUris": [redirect]}, idempotent=True
        )


def _photograph(receiver_base: str, medplum_base: str, shots: list[tuple[str, Path]]) -> None:
    """Sign in once, then for each (moment, file): wait for the moment, screenshot."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=args
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(receiver_base + "/ops/")
            page.wait_for_url(medplum_base + "**")
            page.get_by_label("Email").fill(OPS_EMAIL)
            page.get_by_label("Password").fill(OPS_PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(receiver_base + "/ops/")
            for _, path in shots:
                page.goto(receiver_base + "/ops/")
                page.screenshot(path=str(path), full_page=True)
                if path is not shots[-1][1]:
                    _ready.wait(timeout=300)
        finally:
            browser.close()


_ready = threading.Event()


def run(pg: Postgres, *, quick: bool) -> dict[str, Any]:
    """The dashboard photographed under load and after it; the files and what was measured."""
    if quick:
        return {"skipped": "quick run"}
    if not CHROMIUM.exists():
        return {"skipped": "chromium missing (make chromium installs it)"}
    out = DOCS
    observations, rate, patients = 600, 15.0, 60
    under_load = out / "ops-dashboard-under-load.png"
    drained_file = out / "ops-dashboard-drained.png"
    _ready.clear()
    with (
        pg.fresh_database("opsshots") as database_url,
        DevServer.start(
            env={"SUBSCRIPTION_RETRY_BASE_MS": "1000", **DEVSERVER_EXTRA_ENV}
        ) as devserver,
    ):
        stack = Stack(devserver.base_url, database_url, extra_env=OPS_ENV)
        try:
            stack.start_receiver(workers=1)
            asyncio.run(_register_redirect(devserver.base_url, stack.receiver_base))
            chosen = asyncio.run(_populate(devserver.base_url, patients))
            asyncio.run(_sync(stack, devserver, database_url))
            stack.start_worker()
            config = {
                "base_url": devserver.base_url,
                "patients": chosen,
                "count": observations,
                "rate": rate,
            }
            writer = threading.Thread(target=_write, args=(config,), daemon=True)
            writer.start()
            # Under load: a third of the stream written, the worker busy.
            _wait_until(lambda: _counts(database_url)[1] >= observations * 2 // 3, 120)
            shooter = threading.Thread(
                target=_photograph,
                args=(
                    stack.receiver_base,
                    devserver.base_url,
                    [("under load", under_load), ("drained", drained_file)],
                ),
            )
            started = time.monotonic()
            shooter.start()
            writer.join(timeout=600)
            drained = _wait_until(lambda: _counts(database_url)[0] >= observations * 2, 240)
            time.sleep(16)  # one refresh of the per-minute figures
            _ready.set()
            shooter.join(timeout=120)
            processed, recorded = _counts(database_url)
        finally:
            close_stack(stack)
    return {
        "files": [str(p) for p in (under_load, drained_file) if p.exists()],
        "observations": observations,
        "events_recorded": recorded,
        "events_processed": processed,
        "drained": drained,
        "seconds": round(time.monotonic() - started, 1),
    }
