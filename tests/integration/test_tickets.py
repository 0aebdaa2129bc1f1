"""Connection tickets (issue 15, docs/protocol.md "Connection tickets"), through real broker
processes on one Redis: a ticket holder connects while the auth API is stopped; a ticket
opens one connection in the whole cluster; expired, tampered and wrong-secret tickets are
refused by name; ``{% combroker_ticket %}`` in a host project renders a ticket that connects.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import httpx
import pytest

from broker.tickets import encode
from tests.harness import atrigger, close_code, recv_json, send_json, ws_open
from tests.integration.gatehelpers import JsonLines, RawStomp, start_gate
from tests.integration.test_identity_boundary import metric
from tests.integration.test_mounting import MOUNT_ARGV
from tests.integration.test_server_api import ok, wait_listed

pytestmark = pytest.mark.timeout(90)

RICH = ["combroker.v1"]
SECRET = "tickets-test-secret"
NEWS = {"target": "news"}
BOB = {"login_id": "bob", "profile": "super_agent", "allowed_rooms": [NEWS]}
REFUSED_CAUSE = "combroker_connections_refused_by_cause_total"


def ticket_url(broker: Any, ticket: str) -> str:
    return f"{broker.ws_url}?{urllib.parse.urlencode({'ticket': ticket})}"


async def refused_with(broker: Any, ticket: str) -> str:
    """The reason the broker refuses ``ticket`` with (after a 4003 close)."""
    ws, first = await ws_open(ticket_url(broker, ticket), subprotocols=RICH)
    assert first["type"] == "refused", first
    assert (await close_code(ws))[0] == 4003
    return first["reason"]


@pytest.fixture
def stopped_auth_api(auth_api):
    """The auth API fixture's URL, with nobody listening there any more."""
    auth_api.stop()
    return auth_api


@pytest.fixture
def cluster(broker_factory, stopped_auth_api, redis_server, unique):
    def make(n: int = 2, **env: Any) -> list[Any]:
        env = {"BROKER_TICKET_SECRET": SECRET, "BROKER_KEY_PREFIX": f"tickets-{unique}", **env}
        return [broker_factory(auth_api=stopped_auth_api, redis=redis_server, **env)
                for _ in range(n)]
    return make


async def test_a_ticket_connects_while_the_auth_api_is_down_and_only_once(cluster):
    a, b = cluster()
    # the auth API really is down: a token connection cannot be authenticated
    ws, first = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    assert first["reason"] == "auth-unavailable"
    await ws.close()

    ticket = encode(BOB, SECRET, 60)
    ws, welcome = await ws_open(ticket_url(a, ticket), subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome
    assert (welcome["login_id"], welcome["profile"], welcome["destination"]) == \
        ("bob", "super_agent", "/super_agent/bob")
    assert welcome["allowed_rooms"] == [NEWS, {"client": "*", "profile": "agent"}]
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": "n"})
    assert (await recv_json(ws))["code"] == "success"
    r = await atrigger(b.base_url, "test-token", [NEWS], "hello")
    assert r.status_code == 202, r.text
    assert (await recv_json(ws))["data"] == "hello"

    # the same ticket again: refused on this process and on the other one
    assert await refused_with(a, ticket) == "ticket-replayed"
    assert await refused_with(b, ticket) == "ticket-replayed"
    assert metric(a, REFUSED_CAUSE, '{cause="ticket-replayed"}') == 1
    assert metric(b, REFUSED_CAUSE, '{cause="ticket-replayed"}') == 1
    # (the first connection is still served)
    await send_json(ws, {"type": "ping"})
    assert (await recv_json(ws))["type"] == "pong"
    await ws.close()
    # the plain dialect: the welcome the auth API's answer would have made
    ws, welcome = await ws_open(ticket_url(b, encode(BOB, SECRET, 60)))
    assert welcome == {"is_authorized": True,
                       "allowed_rooms": [NEWS, {"client": "*", "profile": "agent"}]}
    await ws.close()


async def test_two_processes_racing_with_one_ticket_admit_one(cluster):
    a, b = cluster()
    for _ in range(5):
        ticket = encode(BOB, SECRET, 60)
        firsts = await asyncio.gather(*(ws_open(ticket_url(p, ticket), subprotocols=RICH)
                                        for p in (a, b)))
        kinds = sorted(first.get("reason", first["type"]) for _, first in firsts)
        assert kinds == ["ticket-replayed", "welcome"], kinds
        for ws, _ in firsts:
            await ws.close()


async def test_expired_tampered_and_wrong_secret_tickets_are_refused_by_name(cluster):
    (a,) = cluster(1, BROKER_TICKET_SECRET=f"new-secret,{SECRET}")  # rotating
    expired = encode(BOB, SECRET, 10, now=time.time() - 60)
    issued, payload, mac = encode(BOB, SECRET, 60).split(".")
    other = encode({**BOB, "login_id": "admin", "profile": "admin"}, SECRET, 60).split(".")[1]
    cases = {
        expired: "ticket-expired",
        f"{issued}.{other}.{mac}": "ticket-invalid",  # another identity, the same signature
        f"{int(issued) + 1}.{payload}.{mac}": "ticket-invalid",  # another issued time
        encode(BOB, "not-a-secret-of-ours", 60): "ticket-invalid",
        "garbage": "ticket-invalid",
        "1" * 5000: "ticket-invalid",  # over the bound
    }
    for ticket, reason in cases.items():
        assert await refused_with(a, ticket) == reason, ticket[:60]
    assert metric(a, REFUSED_CAUSE, '{cause="ticket-expired"}') == 1
    assert metric(a, REFUSED_CAUSE, '{cause="ticket-invalid"}') == 5
    # both secrets of the rotation are accepted; the tampered ticket's own was untouched
    for secret in ("new-secret", SECRET):
        ws, welcome = await ws_open(ticket_url(a, encode(BOB, secret, 60)), subprotocols=RICH)
        assert welcome["type"] == "welcome", welcome
        await ws.close()
    assert "Traceback" not in a.log()


async def test_tickets_off_and_the_duplicate_login_policy(broker_factory, stopped_auth_api,
                                                          redis_server, unique):
    off = broker_factory(auth_api=stopped_auth_api)
    assert await refused_with(off, encode(BOB, SECRET, 60)) == "ticket-invalid"
    # a ticket connection is a connection of its login like any other: reject a second one
    strict = broker_factory(auth_api=stopped_auth_api, redis=redis_server,
                            BROKER_TICKET_SECRET=SECRET, BROKER_DUPLICATE_LOGIN="reject",
                            BROKER_KEY_PREFIX=f"tickets-{unique}")
    ws, welcome = await ws_open(ticket_url(strict, encode(BOB, SECRET, 60)), subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome
    assert await refused_with(strict, encode(BOB, SECRET, 60)) == "duplicate-login"
    await ws.close()


async def test_the_tcp_gate_takes_a_ticket_in_the_connect_frame(broker_factory, stopped_auth_api,
                                                                redis_server, unique):
    gate = start_gate(broker_factory, auth_api=stopped_auth_api, redis=redis_server,
                      BROKER_TICKET_SECRET=SECRET, BROKER_KEY_PREFIX=f"tickets-{unique}")
    ticket = encode(BOB, SECRET, 60)
    lines = JsonLines(gate.port)
    try:
        lines.send({"type": "connect", "ticket": ticket})
        welcome = await asyncio.to_thread(lines.recv)
        assert (welcome["type"], welcome["login_id"]) == ("welcome", "bob"), welcome
    finally:
        lines.close()
    stomp = RawStomp(gate.port)
    try:
        stomp.send("CONNECT", **{"accept-version": "1.2", "host": "x", "ticket": ticket})
        error = await asyncio.to_thread(stomp.recv)
        assert (error.command, error.headers["message"]) == ("ERROR", "ticket-replayed")
    finally:
        stomp.close()
    stomp = RawStomp(gate.port)
    try:
        stomp.send("CONNECT", **{"accept-version": "1.2", "host": "x",
                                 "ticket": encode(BOB, SECRET, 60)})
        connected = await asyncio.to_thread(stomp.recv)
        assert (connected.command, connected.headers["login"]) == ("CONNECTED", "bob")
    finally:
        stomp.close()


async def test_the_template_tag_renders_a_ticket_that_connects(broker_factory, stopped_auth_api,
                                                              redis_server, unique):
    """tests/mountproject: its view renders ``{% combroker_ticket %}`` for its logged-in user
    (BROKER_TICKET_IDENTITY names the function its auth API view would answer with)."""
    host = broker_factory(
        argv=MOUNT_ARGV, ready_path="/rt/healthz", auth_api=stopped_auth_api,
        redis=redis_server, BROKER_KEY_PREFIX=f"tickets-{unique}", BROKER_TICKET_SECRET=SECRET,
        DJANGO_SETTINGS_MODULE="tests.mountproject.settings")
    async with httpx.AsyncClient(trust_env=False) as http:
        page = await http.get(f"{host.base_url}/ticket/", headers={"X-Login": "carol"})
        anonymous = await http.get(f"{host.base_url}/ticket/")
    assert page.status_code == 200, page.text
    assert anonymous.status_code == 403, anonymous.text  # MintRefused: no identity to give
    ticket = page.text.strip()
    ws, welcome = await ws_open(ticket_url(host, ticket), subprotocols=RICH)
    assert (welcome["type"], welcome["login_id"], welcome["allowed_rooms"]) == \
        ("welcome", "carol", [NEWS]), welcome
    await ws.close()
    assert await refused_with(host, ticket) == "ticket-replayed"


async def test_a_recheck_asks_the_auth_api_with_the_ticket_connections_headers(broker_factory,
                                                                               auth_api):
    """The connect asked nothing; the server API's ``recheck`` asks the auth API with the
    headers the handshake carried (its cookie), as for a connection the API admitted."""
    broker = broker_factory(auth_api=auth_api, BROKER_TICKET_SECRET=SECRET)
    bob = {"login_id": "bob", "allowed_rooms": [NEWS, {"target": "chat"}]}
    ws, welcome = await ws_open(ticket_url(broker, encode(bob, SECRET, 60)), subprotocols=RICH,
                                cookie={"sessionid": "s1"})
    assert welcome["type"] == "welcome", welcome
    for rid, room in (("n", NEWS), ("c", {"target": "chat"})):
        await send_json(ws, {"type": "subscribe", "room": room, "requestId": rid})
        assert (await recv_json(ws))["code"] == "success"
    await wait_listed(broker, 1, "bob")
    assert auth_api.count == 0  # the connect asked nothing

    auth_api.allow_cookie("s1", body={"login_id": "bob", "allowed_rooms": [NEWS]})
    await ok(broker, "recheck", {"login": "bob"})
    assert await recv_json(ws) == {"type": "unsubscribed", "requestId": "c",
                                   "room": {"target": "chat"}, "reason": "recheck"}
    assert "sessionid=s1" in auth_api.last.headers["cookie"]
    auth_api.allow_cookie("s1", status=403, body={"detail": "logged out"})
    await ok(broker, "recheck", {"login": "bob"})
    assert await close_code(ws) == (4003, "revoked")


async def test_with_redis_down_a_ticket_is_refused_and_stays_unspent(
        broker_factory, stopped_auth_api, fresh_redis):
    broker = broker_factory(auth_api=stopped_auth_api, redis=fresh_redis,
                            BROKER_TICKET_SECRET=SECRET)
    ws, welcome = await ws_open(ticket_url(broker, encode(BOB, SECRET, 60)), subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome  # the hub runs
    await ws.close()
    fresh_redis.stop()
    ticket = encode(BOB, SECRET, 60)
    ws, first = await ws_open(ticket_url(broker, ticket), subprotocols=RICH)
    assert first == {"type": "refused", "is_authorized": False, "reason": "service-unavailable"}
    assert (await close_code(ws))[0] == 1011
    fresh_redis.restart()
    for _ in range(100):  # until the process serves again (fresh tickets: each may be spent)
        ws, first = await ws_open(ticket_url(broker, encode(BOB, SECRET, 60)),
                                  subprotocols=RICH)
        await ws.close()
        if first["type"] == "welcome":
            break
        await asyncio.sleep(0.1)
    # never used: it opens a connection now that Redis answers again
    ws, welcome = await ws_open(ticket_url(broker, ticket), subprotocols=RICH)
    assert welcome["type"] == "welcome", welcome
    await ws.close()
