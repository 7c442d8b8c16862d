"""A headless Chromium for the page tests: Debian's ``/usr/bin/chromium`` driven by Playwright
(no browser is downloaded; ``make test`` installs the package when it is missing)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

# The stand-in and the database, as the integration tests start them.
from tests.integration.conftest import (  # noqa: F401 - fixtures used by the page tests
    module_database,
    module_devserver,
    postgres_server_url,
)

CHROMIUM = Path(os.environ.get("STARVIT_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    # Chromium's sandbox needs user namespaces that a root process in a container lacks.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=args
        )
        try:
            yield launched
        finally:
            await launched.close()
