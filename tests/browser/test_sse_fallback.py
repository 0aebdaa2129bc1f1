"""The demo page behind a proxy that blocks WebSockets (issue 15): combroker.js falls back to SSE
by itself, says so, and still receives triggers.

The block is real and at the network: the page's browser context goes through
``WebSocketBlockingProxy`` (tests/browser/blockingproxy.py), an HTTP proxy that forwards plain
HTTP (the page, the scripts, ``/demo/trigger``, the ``/sse/`` stream) and answers the CONNECT a
browser sends for a ``ws://`` connection with 403, as corporate proxies that break WebSockets
do. The page's own WebSocket code runs unchanged and fails as it would there. (Playwright sends
loopback traffic through a context's proxy: it adds ``<-loopback>`` to Chromium's bypass list.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.blockingproxy import WebSocketBlockingProxy
from tests.browser.conftest import RUNBROKER_ARGV, TIMEOUT_MS
from tests.browser.test_demo import CHAT1, NEWS, connect_as, entries, post_trigger, subscribe_to
from tests.harness import BrokerProcess

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under ./test.sh) with the reason
    expect = None

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["live", "history"])
def demo_broker(request: pytest.FixtureRequest, broker_factory: Any) -> BrokerProcess:
    """conftest's demo broker; with "history" the news room keeps one, so its deliveries carry
    event ids (positions) and the client reopens its stream with the last one."""
    history = [{"room": NEWS, "size": 100, "ttl": 600}] if request.param == "history" else []
    return broker_factory(argv=RUNBROKER_ARGV, start_timeout=60, name="runbroker",
                          BROKER_HISTORY=json.dumps(history))


def sse_requests(proxy: WebSocketBlockingProxy) -> list[str]:
    """The event stream requests that went through the proxy."""
    return [line for line in proxy.forwarded if urlsplit(line.split(" ")[1]).path == "/sse/"]


@pytest.fixture
def blocked_page(browser: Any, demo_broker: BrokerProcess) -> Iterator[tuple[Any, WebSocketBlockingProxy]]:
    """The demo page in a context whose every connection goes through the blocking proxy."""
    with WebSocketBlockingProxy() as proxy:
        context = browser.new_context(proxy={"server": proxy.url},
                                      viewport={"width": 1280, "height": 860})
        try:
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.errors = []
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            page.goto(demo_broker.base_url + "/")
            yield page, proxy
        finally:
            context.close()


def test_demo_page_receives_triggers_over_sse_when_websockets_are_blocked(
        blocked_page: tuple[Any, WebSocketBlockingProxy], demo_broker: BrokerProcess,
        trigger_token: str, request: pytest.FixtureRequest, artifacts_dir: Any,
        unique: str) -> None:
    page, proxy = blocked_page
    connect_as(page, "alice")

    # the WebSocket was tried and refused by the proxy; the page says it uses SSE
    assert any(line.startswith("CONNECT ") for line in proxy.refused), proxy.refused
    transport = page.get_by_test_id("transport")
    expect(transport).to_have_attribute("data-transport", "sse")
    expect(transport).to_have_text("sse (receive only)")
    expect(page.get_by_test_id("state")).to_contain_text("over sse")
    expect(entries(page, "system", "receiving over SSE")).to_have_count(1)
    assert sse_requests(proxy), proxy.forwarded

    # a subscription reopens the stream; a trigger posted from the page arrives once
    news_id = subscribe_to(page, NEWS)
    post_trigger(page, NEWS, {"text": f"sse-1-{unique}"})
    expect(entries(page, "publish", f"sse-1-{unique}")).to_have_count(1)

    # a second subscription reopens it again: both receive, each trigger once
    chat_id = subscribe_to(page, CHAT1)
    post_trigger(page, CHAT1, {"text": f"chat-{unique}"})
    post_trigger(page, NEWS, {"text": f"sse-2-{unique}"})
    expect(entries(page, "publish", f"chat-{unique}")).to_contain_text(f"#{chat_id}")
    expect(entries(page, "publish", f"sse-2-{unique}")).to_contain_text(f"#{news_id}")
    expect(entries(page, "publish", f"sse-2-{unique}")).to_have_count(1)
    expect(entries(page, "publish", f"sse-1-{unique}")).to_have_count(1)
    assert len(sse_requests(proxy)) >= 3, proxy.forwarded  # the first, one reopen per subscribe
    resumed = [line for line in sse_requests(proxy) if "lastEventId=" in line]
    if request.node.callspec.params["demo_broker"] == "history":
        assert resumed, proxy.forwarded  # the reopen named the news subscription's position
    else:
        assert not resumed, proxy.forwarded

    # SSE only receives: a direct message is refused by name, not lost
    page.fill("#to", "/agent/bob")
    page.fill("#text", f"dm-{unique}")
    page.click("#send")
    expect(page.get_by_test_id("send-result")).to_have_text("unsupported-transport")

    # unsubscribing reopens without it: the next news trigger is not shown (the chat one after
    # it is the barrier)
    page.locator(f"[data-testid=subscription][data-request-id='{news_id}']"
                 ).get_by_test_id("unsubscribe").click()
    expect(page.locator("[data-testid=subscription]")).to_have_count(1)
    expect(entries(page, "system", "unsubscribed")).to_have_count(1)
    post_trigger(page, NEWS, {"text": f"sse-3-{unique}"})
    post_trigger(page, CHAT1, {"text": f"chat-after-{unique}"})
    expect(entries(page, "publish", f"chat-after-{unique}")).to_have_count(1)
    expect(page.get_by_test_id("log")).not_to_contain_text(f"sse-3-{unique}")

    # every reopen took over from the stream before it: no close, no reconnect
    expect(page.get_by_test_id("reconnects")).to_have_text("0")
    expect(page.locator("[data-testid=log-entry]").filter(has_text="closed")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "demo-over-sse.png"), full_page=True)

    # the backend disconnects alice: the stream's last event, `event: close` 4010, is final
    r = httpx.post(f"{demo_broker.base_url}/api/disconnect", json={"login": "alice"},
                   headers={"Authorization": f"Bearer {trigger_token}"})
    assert r.status_code == 200, r.text
    state = page.get_by_test_id("state")
    expect(state).to_have_attribute("data-close-code", "4010")
    expect(state).to_have_text("closed 4010 kicked")
    assert page.errors == []
