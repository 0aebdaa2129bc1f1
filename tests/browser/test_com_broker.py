"""The Communication Broker's JavaScript client API on combroker (PROTOCOL §4.3): the page
/com-broker drives it over the ``stomp`` WebSocket subprotocol with a static-key login.

The page runs combroker's ``com-broker-compat.js`` (the API of the current upstream
``com-broker-1-0.js``: ``connect``, ``subscribe``, ``unsubscribe``, ``send``, and
``onClosed(session, code, reason)``; the older spellings ``connectToServer``, ``suscribe``,
``unsuscribe``, ``sendText`` still work). Set COMBROKER_CB_JS to a copy of the original
com-broker-1-0.js, current or older version, to run the same test with it, unchanged (it is not
part of this repository); Playwright serves it at /static/combroker/vendor/com-broker-1-0.js,
where the page looks for it first. The page tells the two versions apart by their method names
and reads the close callback's arguments accordingly.

Both versions read only the ``error-desc`` header of an ERROR or ACK frame: a wrong application
or profile key must reach ``onError`` as its text (issue 11, items 17 and 18).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import RUNBROKER_ARGV, PageFactory
from tests.harness import BrokerProcess

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under ./test.sh) with the reason
    expect = None

pytestmark = pytest.mark.timeout(120)

APP_KEY = "my_app_secret_key"
PROFILE_KEYS = {"agent": "my_agent_secret_key", "super_agent": "my_super_agent_secret_key",
                "service": "my_service_secret_key", "admin": "my_admin_secret_key"}
ORIGINAL = os.environ.get("COMBROKER_CB_JS")
VENDOR = "**/static/combroker/vendor/com-broker-1-0.js"


@pytest.fixture
def cb_broker(broker_factory: Any) -> BrokerProcess:
    return broker_factory(argv=RUNBROKER_ARGV, start_timeout=60, name="runbroker-cb",
                          BROKER_APP_KEY=APP_KEY, BROKER_PROFILE_KEYS=PROFILE_KEYS)


@pytest.fixture
def cb_page(browser: Any, cb_broker: BrokerProcess) -> Iterator[PageFactory]:
    factory = PageFactory(browser, cb_broker)
    try:
        yield factory
    finally:
        factory.close()


def events(page: Any, kind: str, text: str = "") -> Any:
    return page.locator(f"[data-testid=log-entry][data-kind={kind}]").filter(has_text=text)


@pytest.mark.parametrize("impl", ["compat", "original"])
def test_com_broker_js_api(impl: str, cb_page: PageFactory, artifacts_dir: Path,
                           unique: str) -> None:
    if impl == "original" and not (ORIGINAL and Path(ORIGINAL).is_file()):
        pytest.skip("set COMBROKER_CB_JS to a copy of com-broker-1-0.js to run the original")

    def route(context: Any) -> None:
        if impl == "original":
            context.route(VENDOR, lambda r: r.fulfill(path=ORIGINAL,
                                                      content_type="text/javascript"))
        else:  # whatever lies in vendor/, this run is the compat client's
            context.route(VENDOR, lambda r: r.fulfill(status=404, body="not here"))

    def page_for(login: str, profile: str, key: str | None = None,
                 app_key: str = APP_KEY) -> Any:
        page = cb_page(f"/com-broker?app_key={app_key}&login={login}"
                       f"&profile_key={key or PROFILE_KEYS[profile]}", setup=route)
        expect(page.get_by_test_id("impl")).to_have_attribute("data-ready", "1")
        expect(page.get_by_test_id("impl")).to_contain_text(
            "original" if impl == "original" else "combroker")
        return page

    def api_of(page: Any) -> str:
        return page.get_by_test_id("impl").get_attribute("data-api")

    agent_login, super_login = f"agent-{unique}", f"super-{unique}"
    agent = page_for(agent_login, "agent")
    sup = page_for(super_login, "super_agent")
    api = api_of(agent)
    # combroker's client follows the current upstream version; the original may be either
    assert api == "current" if impl == "compat" else api in ("current", "older")
    for page, login, profile in ((agent, agent_login, "agent"),
                                 (sup, super_login, "super_agent")):
        page.click("#connect")
        expect(page.get_by_test_id("state")).to_have_attribute("data-state", "open")
        expect(page.get_by_test_id("destination")).to_have_text(f"/{profile}/{login}")
        expect(page.get_by_test_id("profile")).to_have_text(profile)

    # the super agent watches every agent through a regular expression
    sup.fill("#sub-dest", "/agent/.*")
    sup.check("#sub-regex")
    sup.click("#subscribe")
    expect(events(sup, "ack", "OK")).to_have_count(1)

    # a message to the agent reaches it, with the sender's login as origin; the watcher gets a copy
    sup.fill("#to", f"/agent/{agent_login}")
    sup.fill("#body", f"hello-{unique}")
    sup.click("#send")
    expect(events(agent, "message", f"hello-{unique}")).to_contain_text(
        f"{super_login} → /agent/{agent_login} [text/plain] hello-{unique}")
    expect(events(sup, "message", f"hello-{unique}")).to_have_count(1)
    expect(events(sup, "ack", "OK")).to_have_count(2)

    # an error is an ACK with its error-desc, and the connection stays open
    agent.fill("#to", "/agent/nobody")
    agent.click("#send")
    expect(events(agent, "error", "destination-not-found")).to_have_count(1)
    expect(agent.get_by_test_id("state")).to_have_attribute("data-state", "open")

    # the agent answers; after unsuscribe() the super agent gets only what is sent to it
    sup.click("#unsubscribe")
    expect(events(sup, "ack", "OK")).to_have_count(3)
    agent.fill("#to", f"/super_agent/{super_login}")
    agent.fill("#body", f"reply-{unique}")
    agent.click("#send")
    expect(events(sup, "message", f"reply-{unique}")).to_contain_text(
        f"{agent_login} → /super_agent/{super_login}")
    sup.fill("#to", f"/agent/{agent_login}")
    sup.fill("#body", f"direct-{unique}")
    sup.click("#send")
    expect(events(agent, "message", f"direct-{unique}")).to_have_count(1)
    expect(events(sup, "ack", "OK")).to_have_count(4)
    expect(events(sup, "message", f"direct-{unique}")).to_have_count(0)  # no longer watching
    sup.screenshot(path=str(artifacts_dir / f"com-broker-{impl}-super.png"), full_page=True)

    # diconnectToServer(): RECEIPT, then the broker closes normally. The current version calls
    # onClosed(session, code, reason), the older one onClosed(code, reason).
    session = agent.get_by_test_id("session").text_content()
    assert session and session != "-"
    agent.click("#disconnect")
    state = agent.get_by_test_id("state")
    expect(state).to_have_attribute("data-close-code", "1000")
    closed = events(agent, "closed")
    if api == "current":
        expect(state).to_have_attribute("data-close-session", session)
        expect(closed).to_contain_text(f"onClosed(session {session}, code 1000, ")
    else:
        expect(closed).to_contain_text("onClosed(code 1000, ")

    # a wrong profile key, a wrong application key: onError gets the broker's text (error-desc)
    refused = []
    for name, profile_key, app_key, text in (
            ("bad-profile", "wrong", APP_KEY, "Invalid Profile/Passcode."),
            ("bad-app", None, "not-the-app-key", "Invalid Application Secret Key.")):
        bad = page_for(f"{name}-{unique}", "agent", key=profile_key, app_key=app_key)
        bad.click("#connect")
        expect(bad.get_by_test_id("state")).to_have_attribute("data-close-code", "4003")
        expect(events(bad, "error")).to_have_count(1)
        expect(events(bad, "error")).to_contain_text(text)
        expect(events(bad, "closed")).to_contain_text("code 4003")
        refused.append(bad)
    assert agent.errors == [] and sup.errors == [] and all(p.errors == [] for p in refused)
