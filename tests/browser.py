"""Browser fixtures (headless Debian Chromium through Playwright) for the browser tests.

Registered in tests/conftest.py through `pytest_plugins`. The app is served by a werkzeug
server in a thread, so a browser test cannot use the rolled-back `db` fixture: what it
needs is committed and deleted afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.server import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def live_server(app):
    """The session app on a real port, served from a daemon thread."""
    with serve(app) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("RAPPORT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RAPPORT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A page in a fresh browser context: no cookies."""
    context = browser.new_context(base_url=live_server)
    yield context.new_page()
    context.close()


@pytest.fixture
def console_errors(page):
    """What the page reports as errors: CSP violations, script errors, failed loads."""
    errors = []

    def on_console(message):
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    return errors
