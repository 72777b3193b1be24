"""Browser tests: a real uvicorn serving the ASGI app (HTTP and websockets) in a thread,
a real worker, and Debian's Chromium driven by Playwright."""

import os
import re
import shutil
import socket
import threading
import time

import pytest
from playwright.sync_api import expect

CHROMIUM = os.environ.get("LANEWAY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

NO_CHROMIUM = "no Chromium"
INSTALL_HINT = "install it with `sudo apt-get install -y chromium` (or set LANEWAY_CHROMIUM to its path)"


def pytest_terminal_summary(terminalreporter):
    """One line saying how to get the browser tests that were skipped, so nobody skips them silently."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(NO_CHROMIUM)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} browser tests skipped: {NO_CHROMIUM} — {INSTALL_HINT}", yellow=True
        )


# The sync Playwright API runs an event loop in this thread while the tests use the ORM.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


# Module scope: the sync Playwright API keeps an event loop on this thread while it runs,
# which async_to_sync in later (websocket) tests must not find.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium for the browser tests (.ci/run installs Debian's chromium).")
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_server_url(transactional_db):
    import uvicorn

    from console.asgi import application

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def log_in(page, base: str, username: str, next_path: str) -> None:
    """Sign in through the login form (password `<username>-password-1`, as make_user sets) and land on next_path."""
    page.goto(f"{base}/login/?next={next_path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"{username}-password-1")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(next_path) + "$"))
