"""The demo page (broker/static/combroker/demo.html) in a real chromium against ``manage.py runbroker``.

Each user is a browser context of its own. Screenshots go to test-artifacts/<test name>/.
Every wait is for a condition on the page (Playwright's expect), with generous timeouts.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.harness import BrokerProcess

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under ./test.sh) with the reason
    expect = None

pytestmark = pytest.mark.timeout(120)

NEWS = {"target": "news"}
CHAT1 = {"target": "chat", "customer": "1"}


def connect_as(page: Any, user: str) -> None:
    page.select_option("#user", user)
    page.click("#connect")
    expect(page.get_by_test_id("state")).to_have_attribute("data-state", "open")
    if user != "guest":
        expect(page.locator("#login-id")).to_have_text(user)


def subscribe_to(page: Any, room: dict[str, Any]) -> str:
    """Subscribe through the room input; return the subscription's requestId once active."""
    text = json.dumps(room, separators=(",", ":"))
    page.fill("#room", text)
    page.click("#subscribe")
    sub = page.locator(f"[data-testid=subscription][data-room='{text}']")
    expect(sub).to_have_attribute("data-state", "active")
    return str(sub.get_attribute("data-request-id"))


def post_trigger(page: Any, room: dict[str, Any], data: Any) -> None:
    """Post a trigger through the page's form (POST /demo/trigger)."""
    page.fill("#trigger-room", json.dumps(room))
    page.fill("#trigger-data", json.dumps(data))
    page.click("#trigger")
    expect(page.get_by_test_id("trigger-result")).to_have_attribute("data-status", "202")


def entries(page: Any, kind: str, text: str) -> Any:
    return page.locator(f"[data-testid=log-entry][data-kind={kind}]").filter(has_text=text)


def test_two_users_trigger_and_direct_message(open_page: Any, artifacts_dir: Any,
                                              unique: str) -> None:
    alice, bob = open_page(), open_page()
    connect_as(alice, "alice")
    connect_as(bob, "bob")

    # the allowed rooms of the welcome are listed
    rooms = alice.get_by_test_id("allowed-room")
    expect(rooms).to_have_count(2)
    expect(rooms.nth(0)).to_contain_text('"customer":"1"')
    expect(rooms.nth(1)).to_contain_text('"target":"news"')
    expect(bob.get_by_test_id("allowed-rooms")).to_contain_text('"customer":"2"')

    # alice subscribes to chat 1 with the room's own button; bob to the news
    chat1 = rooms.filter(has_text='"customer":"1"')
    chat1.get_by_test_id("subscribe-allowed").click()
    expect(alice.locator("[data-testid=subscription][data-state=active]")).to_have_count(1)
    subscribe_to(bob, NEWS)

    # a trigger for chat 1, posted from alice's page, reaches alice only
    chat1.get_by_test_id("use-for-trigger").click()
    expect(alice.locator("#trigger-room")).to_have_value(json.dumps(CHAT1, separators=(",", ":")))
    alice.fill("#trigger-data", json.dumps({"text": f"chat-{unique}"}))
    alice.click("#trigger")
    expect(alice.get_by_test_id("trigger-result")).to_contain_text("accepted")
    expect(entries(alice, "publish", f"chat-{unique}")).to_have_count(1)

    # barrier: once bob has a later trigger, the chat one would have been there before it
    post_trigger(bob, NEWS, {"text": f"news-{unique}"})
    expect(entries(bob, "publish", f"news-{unique}")).to_have_count(1)
    expect(bob.get_by_test_id("log")).not_to_contain_text(f"chat-{unique}")
    expect(alice.get_by_test_id("log")).not_to_contain_text(f"news-{unique}")

    # a direct message from alice appears on bob's page, and only there
    alice.fill("#to", "/agent/bob")
    alice.fill("#text", f"dm-{unique}")
    alice.click("#send")
    expect(alice.get_by_test_id("send-result")).to_contain_text("sent to /agent/bob")
    message = entries(bob, "message", f"dm-{unique}")
    expect(message).to_have_count(1)
    expect(message).to_contain_text("/agent/alice")
    expect(entries(alice, "message", f"dm-{unique}")).to_have_count(0)

    # sending to nobody is answered with the contract's error code
    alice.fill("#to", "/agent/nobody")
    alice.click("#send")
    expect(alice.get_by_test_id("send-result")).to_have_text("destination-not-found")

    alice.screenshot(path=str(artifacts_dir / "demo-alice.png"), full_page=True)
    bob.screenshot(path=str(artifacts_dir / "demo-bob.png"), full_page=True)

    # unsubscribing removes the subscription from the page
    alice.locator("[data-testid=subscription]").get_by_test_id("unsubscribe").click()
    expect(alice.locator("[data-testid=subscription]")).to_have_count(0)
    assert alice.errors == [] and bob.errors == []


def test_super_agent_watches_agents(open_page: Any, artifacts_dir: Any, unique: str) -> None:
    carol, alice, bob = open_page(), open_page(), open_page()
    connect_as(carol, "carol")
    connect_as(alice, "alice")
    connect_as(bob, "bob")
    expect(alice.get_by_test_id("watch-agents")).to_be_disabled()  # agents cannot watch
    carol.get_by_test_id("watch-agents").click()
    expect(carol.locator("[data-testid=subscription][data-state=active]")).to_have_count(1)

    alice.fill("#to", "/agent/bob")
    alice.fill("#text", f"watched-{unique}")
    alice.click("#send")
    expect(entries(bob, "message", f"watched-{unique}")).to_have_count(1)
    copy = entries(carol, "watch", f"watched-{unique}")
    expect(copy).to_have_count(1)
    expect(copy).to_contain_text("/agent/alice → /agent/bob")
    carol.screenshot(path=str(artifacts_dir / "demo-carol.png"), full_page=True)
    assert carol.errors == []


def test_page_reconnects_after_broker_restart(open_page: Any, demo_broker: BrokerProcess,
                                              artifacts_dir: Any, unique: str) -> None:
    page = open_page()
    connect_as(page, "alice")
    news_id = subscribe_to(page, NEWS)
    chat_id = subscribe_to(page, CHAT1)
    first_conn = page.locator("#connection-id").text_content()
    page.evaluate("window.__noReload = 'still here'")

    demo_broker.restart()  # SIGTERM, then the same port again

    # the page notices, backs off, reconnects and restores both subscriptions (same ids)
    expect(page.get_by_test_id("reconnects")).to_have_text("1", timeout=60_000)
    expect(page.get_by_test_id("state")).to_have_attribute("data-state", "open")
    for rid in (news_id, chat_id):
        expect(page.locator(f"[data-testid=subscription][data-request-id='{rid}']")
               ).to_have_attribute("data-state", "active")
    expect(page.locator("#connection-id")).not_to_have_text(first_conn or "")
    assert page.evaluate("window.__noReload") == "still here"

    # the old subscriptions receive on the new connection
    r = demo_broker.trigger([NEWS], {"text": f"after-restart-{unique}"})
    assert r.status_code == 202, r.text
    expect(entries(page, "publish", f"after-restart-{unique}")).to_have_count(1)
    post_trigger(page, CHAT1, {"text": f"chat-after-{unique}"})
    expect(entries(page, "publish", f"chat-after-{unique}")).to_contain_text(f"#{chat_id}")
    expect(page.locator("[data-testid=log-entry][data-kind=system]").filter(
        has_text="subscriptions restored")).to_contain_text("2 restored, 0 failed")
    page.screenshot(path=str(artifacts_dir / "demo-reconnected.png"), full_page=True)
    assert page.errors == []


def test_admin_console_lists_and_kicks(open_page: Any, demo_broker: BrokerProcess,
                                       artifacts_dir: Any, unique: str) -> None:
    alice, bob = open_page(), open_page()
    connect_as(alice, "alice")
    connect_as(bob, "bob")
    subscribe_to(alice, NEWS)
    bob_conn = bob.locator("#connection-id").text_content()
    alice_conn = alice.locator("#connection-id").text_content()

    admin = open_page("/admin-console", viewport={"width": 1280, "height": 760})
    admin.fill("#token", "root")
    admin.click("#login")
    expect(admin.get_by_test_id("state")).to_have_attribute("data-state", "open")
    rows = admin.get_by_test_id("connection")
    expect(rows.filter(has_text="alice")).to_have_count(1)
    expect(rows.filter(has_text="bob")).to_have_count(1)
    expect(admin.locator(f"tr[data-connection-id='{bob_conn}']")).to_contain_text("agent")
    expect(admin.locator(f"tr[data-connection-id='{alice_conn}']")).to_contain_text("websocket")
    subs_cell = admin.locator(f"tr[data-connection-id='{alice_conn}'] td").nth(6)
    expect(subs_cell).to_have_text("1")  # alice's news subscription
    expect(admin.get_by_test_id("stat-connections")).to_have_text("3")  # alice, bob, root

    # triggers show up in the per-second stats and the chart (the stats refresh every 0.5 s)
    deadline = time.monotonic() + 30
    while admin.get_by_test_id("stat-triggers").text_content() in ("-", "0"):
        assert time.monotonic() < deadline, "the triggers never showed in the stats"
        assert demo_broker.trigger([NEWS], {"n": unique}).status_code == 202
    expect(admin.get_by_test_id("stat-deliveries")).not_to_have_text("0")
    samples = admin.get_by_test_id("chart").get_attribute("data-samples")
    assert samples is not None and int(samples) >= 1
    assert admin.locator("#line-triggers").get_attribute("points")
    admin.screenshot(path=str(artifacts_dir / "admin-console.png"), full_page=True)

    # kick bob: his page shows the close code, his row goes, alice stays
    admin.locator(f"tr[data-connection-id='{bob_conn}']").get_by_test_id("kick").click()
    state = bob.get_by_test_id("state")
    expect(state).to_have_attribute("data-state", "closed")
    expect(state).to_have_attribute("data-close-code", "4010")
    expect(state).to_have_text("closed 4010 kicked")
    expect(admin.get_by_test_id("notice")).to_contain_text("kicked bob")
    expect(admin.locator(f"tr[data-connection-id='{bob_conn}']")).to_have_count(0)
    expect(rows.filter(has_text="alice")).to_have_count(1)
    expect(alice.get_by_test_id("state")).to_have_attribute("data-state", "open")
    bob.screenshot(path=str(artifacts_dir / "demo-bob-kicked.png"), full_page=True)
    assert admin.errors == [] and bob.errors == []


def test_admin_console_refuses_a_non_admin(open_page: Any) -> None:
    page = open_page("/admin-console?token=alice")
    expect(page.get_by_test_id("notice")).to_contain_text("not an admin")
    expect(page.get_by_test_id("connection")).to_have_count(0)


def test_who_is_here_live_on_the_demo_page_and_in_the_console(open_page: Any,
                                                               artifacts_dir: Any) -> None:
    news = json.dumps(NEWS, separators=(",", ":"))

    def member(page: Any, login: str) -> Any:
        return page.locator(f"[data-testid=subscription][data-room='{news}'] "
                            f"[data-testid=member][data-login={login}]")

    alice, alice2, bob = open_page(), open_page(), open_page()
    for page, user in ((alice, "alice"), (alice2, "alice"), (bob, "bob")):
        connect_as(page, user)
    subscribe_to(alice, NEWS)
    expect(member(alice, "alice")).to_contain_text("you")  # its own join
    subscribe_to(alice2, NEWS)  # alice's second tab: one member, two connections

    # bob's first list is the presence snapshot, with the connection counts
    subscribe_to(bob, NEWS)
    expect(member(bob, "alice")).to_have_attribute("data-connections", "2")
    expect(member(bob, "alice")).to_contain_text("alice (agent) · 2 connections")
    expect(member(bob, "bob")).to_have_attribute("data-connections", "1")
    # alice's list took bob in live, from his join
    expect(member(alice, "bob")).to_contain_text("bob (agent) · 1 connection")
    expect(entries(alice, "presence", "bob (agent)").filter(has_text="joined")).to_have_count(1)

    # the console lists the room's members: it finds the cluster's rooms itself (admin rooms)
    admin = open_page("/admin-console?token=root")
    row = admin.locator(f"[data-testid=presence-room][data-room='{news}']")
    expect(row.locator("[data-testid=presence-member][data-login=alice]")
           ).to_have_attribute("data-connections", "2")
    expect(row.locator("[data-testid=presence-member][data-login=bob]")).to_have_count(1)
    admin.screenshot(path=str(artifacts_dir / "admin-presence.png"), full_page=True)

    # bob closes his page: he leaves alice's list, and the console's at its next refresh
    bob.close()
    expect(member(alice, "bob")).to_have_count(0)
    expect(member(alice, "alice")).to_have_count(1)
    expect(entries(alice, "presence", "bob (agent)").filter(has_text="left")).to_have_count(1)
    expect(row.locator("[data-testid=presence-member][data-login=bob]")).to_have_count(0)
    expect(row.locator("[data-testid=presence-member]")).to_have_count(1)
    alice.screenshot(path=str(artifacts_dir / "demo-presence.png"), full_page=True)
    assert alice.errors == [] and alice2.errors == [] and admin.errors == []
