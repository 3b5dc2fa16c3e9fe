"""Fixtures for the browser tests: a real uvicorn server (API key required) and headless
Chromium driven by Playwright (Debian's /usr/bin/chromium; never `playwright install`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.support import (  # noqa: F401 - pytest finds fixtures by name
    LiveServer,
    demo_dir,
    llm_path,
    web_server,
)

CHROMIUM = os.environ.get("RECSMITH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"headless Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    # lazy: optional: only the browser tests need it
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, web_server: LiveServer):  # noqa: ANN001, ANN201, F811 - playwright objects
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(240_000)  # model answers on a busy CPU take a while
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(web_server.url + "/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
