"""Fixtures of the browser tests: Debian's chromium driven by Python Playwright, and a demo broker.

Playwright never downloads a browser here: it launches the system ``chromium`` (found with
``which chromium``) through ``executable_path``. ./test.sh installs chromium (apt) and the Node
packages of tests/browser (npm), then sets COMBROKER_BROWSER_TESTS=required, which turns a
missing prerequisite into a failure instead of a skip.

Fixtures
--------
chromium_path  session  path of the system chromium
browser        module   a headless chromium (one per test module)
demo_broker    function ``manage.py runbroker`` on a free port: demo users, demo page at /,
                        /demo/trigger, the monitor console at /admin-console
open_page      function ``open_page(user=None, path="/")`` -> a Page in a context of its own,
                        with console errors collected (``page.errors``)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import BrokerProcess

BROWSER_DIR = Path(__file__).resolve().parent
REQUIRED = os.environ.get("COMBROKER_BROWSER_TESTS", "").lower() == "required"

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
# Generous: a loaded 2-core machine. Waits are for conditions, never fixed sleeps.
TIMEOUT_MS = 20_000
RUNBROKER_ARGV = ["{python}", "manage.py", "runbroker", "--port", "{port}", "--tcp-port", "0"]

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures below skip (or fail) with a clear reason
    pass
else:
    expect.set_options(timeout=TIMEOUT_MS)


def missing(reason: str) -> None:
    """Skip, or fail when ./test.sh promised the prerequisites (COMBROKER_BROWSER_TESTS=required)."""
    if REQUIRED:
        pytest.fail(f"browser test prerequisite missing: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        missing("chromium is not installed (./test.sh installs Debian's chromium)")
    return str(path)


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright is not installed (pip install -e '.[test]')")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
                               timeout=60_000)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture
def demo_broker(broker_factory: Any) -> BrokerProcess:
    """``manage.py runbroker``: built-in demo auth (alice, bob, carol, billing, root, guest).
    A short registry TTL makes admin ``stats`` refresh every 0.5 s."""
    return broker_factory(argv=RUNBROKER_ARGV, start_timeout=60, BROKER_REGISTRY_TTL="1.5",
                          name="runbroker")


class PageFactory:
    def __init__(self, browser: Any, broker: BrokerProcess) -> None:
        self.browser = browser
        self.broker = broker
        self.contexts: list[Any] = []

    def __call__(self, path: str = "/", *, viewport: dict[str, int] | None = None,
                 setup: Callable[[Any], None] | None = None) -> Any:
        """A new page in a context of its own; ``setup(context)`` runs before the page loads
        (for ``context.route``)."""
        context = self.browser.new_context(viewport=viewport or {"width": 1280, "height": 860})
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        if setup is not None:
            setup(context)
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.goto(self.broker.base_url + path)
        return page

    def close(self) -> None:
        for c in self.contexts:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass


@pytest.fixture
def open_page(browser: Any, demo_broker: BrokerProcess) -> Iterator[Callable[..., Any]]:
    factory = PageFactory(browser, demo_broker)
    try:
        yield factory
    finally:
        factory.close()
