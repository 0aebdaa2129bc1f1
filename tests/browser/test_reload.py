"""A page reload keeps its subscriptions and receives what was published during the reload
(issue 15), in a real chromium against ``manage.py runbroker``.

The page subscribes to a history room with combroker.js once it is welcomed, as any page does
on every load. It is reloaded; triggers are posted once the old page's connection is closed
(the broker's ``combroker_connections`` back to 0: its state is saved) and before the new page
can connect (its combroker.js is held back until then). The page and its copy of combroker.js
are served by a small HTTP server of the test on 127.0.0.1 (another port of the same site:
chromium lets only a page from a local address open a WebSocket to 127.0.0.1). After the reload the page has its
subscription back (adopted, not sent again) and got exactly those triggers, once each, in
order, then live ones. Two ways to keep the token: combroker.js's sessionStorage, and the
broker's HttpOnly resume cookie (the page keeping nothing).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browser.conftest import RUNBROKER_ARGV, TIMEOUT_MS
from tests.harness import LOCALHOST, ROOT, BrokerProcess

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under ./test.sh) with the reason
    expect = None

pytestmark = pytest.mark.timeout(120)

CHAT_ANY = {"target": "chat", "customer": "*"}
COMBROKER_JS = ROOT / "broker" / "static" / "combroker" / "combroker.js"

# The page: connect as carol, then subscribe (after the welcome, as a page's own code does on
# every load); `storage=off`: combroker.js keeps no token (the cookie variant).
PAGE = """<!doctype html><html><body data-state="loading"><script type="module">
import { createClient } from "./combroker.js";
const params = new URLSearchParams(location.search);
const room = JSON.parse(params.get("room"));
const options = { token: "carol", pingInterval: 0 };
if (params.get("storage") === "off") options.resumeStorage = null;
const client = createClient(params.get("broker"), options);
window.got = [];
window.client = client;
await client.open();
const sub = client.subscribe(room, (data) => window.got.push(data));
window.sub = sub;
await sub.ready;
document.body.dataset.resumed = String(client.welcome.resumed === true);
document.body.dataset.adopted = String(sub.adopted);
document.body.dataset.state = "subscribed";
</script></body></html>"""


class PageServer:
    """The page and combroker.js on 127.0.0.1, never cached; ``before_client`` runs before
    combroker.js is served (in the server's thread), to hold the new page back."""

    def __init__(self) -> None:
        self.before_client: Callable[[], None] = lambda: None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urllib.parse.urlsplit(self.path).path
                if path == "/combroker.js":
                    server.before_client()
                    body, kind = COMBROKER_JS.read_bytes(), "text/javascript"
                else:
                    body, kind = PAGE.encode(), "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.url = f"http://{LOCALHOST}:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["session-storage", "cookie"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def reload_broker(broker_factory: Any, mode: str) -> BrokerProcess:
    env: dict[str, Any] = {"BROKER_HISTORY": [{"room": CHAT_ANY, "size": 100, "ttl": 60}],
                           "BROKER_RESUME_TTL": "60"}
    if mode == "cookie":
        env["BROKER_RESUME_COOKIE"] = "true"
    return broker_factory(argv=RUNBROKER_ARGV, start_timeout=60, name="runbroker", **env)


def got(page: Any) -> list[Any]:
    return list(page.evaluate("window.got"))


def test_a_reload_keeps_its_subscription_and_gets_what_was_published_meanwhile(
        browser: Any, reload_broker: BrokerProcess, page_server: PageServer, mode: str,
        unique: str) -> None:
    broker = reload_broker
    room = {"target": "chat", "customer": unique}
    query = {"room": json.dumps(room), "broker": broker.ws_url}
    if mode == "cookie":
        query["storage"] = "off"
    posted: list[str] = []

    def post(data: str) -> None:
        r = broker.trigger([room], body={"rooms": [room], "data": data, "history": True})
        assert r.status_code == 202, r.text
        posted.append(data)

    def during_the_reload() -> None:
        # The new page asks for combroker.js: the old page is unloaded by now (its document
        # was replaced), so its connection closes; once the broker has saved its state, post,
        # then let the new page connect.
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while broker.metric("combroker_connections") != 0:
            assert time.monotonic() < deadline, "the old page's connection never closed"
            time.sleep(0.02)
        for n in range(3):
            post(f"during-{n}")

    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_server.url + "?" + urllib.parse.urlencode(query))
        body = page.locator("body")
        expect(body).to_have_attribute("data-state", "subscribed")
        expect(body).to_have_attribute("data-resumed", "false")
        post("before")
        page.wait_for_function("window.got.length === 1")
        assert got(page) == ["before"]

        page_server.before_client = during_the_reload
        page.reload()
        assert posted == ["before", "during-0", "during-1", "during-2"], "not held back"
        page_server.before_client = lambda: None
        expect(body).to_have_attribute("data-state", "subscribed")
        expect(body).to_have_attribute("data-resumed", "true")
        expect(body).to_have_attribute("data-adopted", "true")
        page.wait_for_function("window.got.length >= 3")
        assert got(page) == ["during-0", "during-1", "during-2"]
        # live again, on the one subscription the broker gave back (no second one was made)
        post("after")
        page.wait_for_function("window.got.length >= 4")
        assert got(page) == ["during-0", "during-1", "during-2", "after"]
        assert page.evaluate("window.client.subscriptions.length") == 1
        assert page.evaluate("window.client.unclaimed.size") == 0
        if mode == "cookie":  # the page kept nothing: the token was the cookie's alone
            assert page.evaluate("window.sessionStorage.length") == 0
            assert "combroker_resume" not in page.evaluate("document.cookie")  # HttpOnly
            cookies = {c["name"]: c for c in context.cookies(broker.base_url + "/ws/")}
            assert cookies["combroker_resume"]["httpOnly"] is True
        else:
            assert page.evaluate("window.client.resumeTtl") == 60
            assert page.evaluate("window.client.resumeToken") == page.evaluate(
                "window.client.welcome.resume_token")
        assert errors == []
    finally:
        context.close()
