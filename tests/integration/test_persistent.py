"""Persistent subscriptions (issue 15): ``"persistent": true`` on subscribe keeps it for the
login in Redis; every later connection of that login, on any process and any transport, gets it
back (announced in the welcome) until it unsubscribes, checked again against the new identity.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.harness import expect_nothing, recv_json, send_json, ws_open
from tests.integration.gatehelpers import start_gate, stomp_client

pytestmark = pytest.mark.timeout(90)

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}


def news(unique: str) -> dict:
    return {"target": "news", "id": unique}


def chat(unique: str) -> dict:
    return {"target": "chat", "customer": unique}


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


@pytest.fixture
def pair(broker_factory, auth_api, redis_server, unique):
    """Two processes on one Redis: (a, b)."""
    def make(**env):
        env = {"BROKER_KEY_PREFIX": f"persist-{unique}", **env}
        return (broker_factory(auth_api=auth_api, redis=redis_server, **env),
                broker_factory(auth_api=auth_api, redis=redis_server, **env))
    return make


async def test_a_persistent_subscription_comes_back_on_the_other_process(pair, auth_api,
                                                                         redis_server, unique):
    a, b = pair(BROKER_PERSISTENT_TTL=600)
    room = news(unique)
    auth_api.allow(token="bob", body={"login_id": f"bob{unique}", "allowed_rooms": [room]})
    ws, welcome = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    assert "persistent" not in welcome  # nothing kept yet
    assert await ask(ws, {"type": "subscribe", "room": room, "requestId": "n",
                          "persistent": True}) == {"code": "success", "requestId": "n"}
    assert (await ask(ws, {"type": "subscribe", "room": room, "requestId": 2}))["code"] == \
        "success"  # not persistent: it does not come back
    await ws.close()
    await a.until_metric("combroker_connections", 0)
    # one hash per login, by its address, kept BROKER_PERSISTENT_TTL from its last use
    key = f"persist-{unique}:persist:/agent/bob{unique}"
    r = redis_server.client()
    assert r.hkeys(key) == ['"n"'] and 0 < r.pttl(key) <= 600_000

    ws, welcome = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    assert welcome["persistent"] == [{"requestId": "n", "room": room}]
    # a second connection of the login, on the other process, in the High-templar dialect:
    # no welcome field, and its frames still name the request id
    ht, ht_welcome = await ws_open(a.ws_url, token="bob")
    assert ht_welcome == {"is_authorized": True, "allowed_rooms": [room]}
    assert (await a.atrigger([room], {"k": 1})).status_code == 202
    got = await recv_json(ws)
    assert (got["requestId"], got["data"]) == ("n", {"k": 1})
    assert await recv_json(ht) == {"type": "publish", "requestId": "n", "data": {"k": 1}}
    await expect_nothing(ws)
    # a new subscribe naming the restored id is the request id's usual rule
    assert (await ask(ws, {"type": "subscribe", "room": chat(unique), "requestId": "n"}))[
        "message"] == "request-id-in-use"

    # unsubscribing forgets it for good, for every later connection
    assert (await ask(ws, {"type": "unsubscribe", "requestId": "n"}))["code"] == "success"
    await ws.close()
    await ht.close()
    assert r.exists(key) == 0
    ws, welcome = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    assert "persistent" not in welcome
    assert (await b.atrigger([room], {"k": 2})).status_code == 202
    await expect_nothing(ws)
    await ws.close()


async def test_a_room_no_longer_allowed_is_not_restored_and_is_forgotten(pair, auth_api,
                                                                         unique):
    a, b = pair(BROKER_HISTORY=[{"room": CHAT_ANY, "size": 100, "ttl": 60}])
    login = f"carol{unique}"
    allowed = [news(unique), CHAT_ANY]
    auth_api.allow(token="carol", body={"login_id": login, "allowed_rooms": allowed})
    ws, _ = await ws_open(a.ws_url, token="carol", subprotocols=RICH)
    for rid, room in (("n", news(unique)), ("c", chat(unique))):
        assert (await ask(ws, {"type": "subscribe", "room": room, "requestId": rid,
                               "persistent": True, "presence": False}))["code"] == "success"
    await ws.close()
    for n in range(3):  # recorded while no one is connected: not replayed, restored live
        assert (await a.atrigger([chat(unique)], n, body={
            "rooms": [chat(unique)], "data": n, "history": True})).status_code == 202

    # the auth API no longer lists the news room
    auth_api.allow(token="carol", body={"login_id": login, "allowed_rooms": [CHAT_ANY]})
    ws, welcome = await ws_open(b.ws_url, token="carol", subprotocols=RICH)
    restored, refused = sorted(welcome["persistent"], key=lambda p: p["requestId"])
    assert refused == {"requestId": "n", "room": news(unique), "refused": "room-not-found"}
    # the history room's offset now, as a subscribe's reply says it
    top = (await ask(ws, {"type": "history", "room": chat(unique), "limit": 1}))["offset"]
    assert restored == {"requestId": "c", "room": chat(unique), "offset": top}
    await expect_nothing(ws)  # live from now: what was recorded meanwhile is not replayed
    assert (await b.atrigger([news(unique)], "no")).status_code == 202
    assert (await b.atrigger([chat(unique)], None, body={
        "rooms": [chat(unique)], "data": "yes", "history": True})).status_code == 202
    got = await recv_json(ws)
    assert (got["requestId"], got["data"], got["offset"]) == ("c", "yes", top + 1)
    await expect_nothing(ws)
    await ws.close()

    # the refused one was forgotten: the room allowed again does not bring it back
    auth_api.allow(token="carol", body={"login_id": login, "allowed_rooms": allowed})
    ws, welcome = await ws_open(a.ws_url, token="carol", subprotocols=RICH)
    assert welcome["persistent"] == [{"requestId": "c", "room": chat(unique),
                                      "offset": got["offset"]}]
    await ws.close()


async def test_bounds_and_refusals(pair, auth_api, unique):
    a, b = pair(BROKER_MAX_PERSISTENT_SUBSCRIPTIONS=2)
    rooms = [news(f"{unique}-{n}") for n in range(3)]
    auth_api.allow(token="dan", body={"login_id": f"dan{unique}", "allowed_rooms": rooms})
    auth_api.allow(token="anon", body={"allowed_rooms": rooms})
    ws, _ = await ws_open(a.ws_url, token="dan", subprotocols=RICH)
    for n in range(2):
        assert (await ask(ws, {"type": "subscribe", "room": rooms[n], "requestId": n,
                               "persistent": True}))["code"] == "success"
    # the login's bound counts on every connection of the login, on any process
    other, _ = await ws_open(b.ws_url, token="dan", subprotocols=RICH)
    over = await ask(other, {"type": "subscribe", "room": rooms[2], "requestId": 9,
                             "persistent": True})
    assert (over["code"], over["message"], over["requestId"]) == (
        "error", "too-many-persistent-subscriptions", 9)
    # refused: not made either
    assert (await ask(other, {"type": "unsubscribe", "requestId": 9}))["message"] == \
        "not-subscribed"
    assert (await b.atrigger([rooms[2]], "x")).status_code == 202
    await expect_nothing(other)
    # the same request id again replaces its entry (not a third); a freed place is taken
    assert (await ask(ws, {"type": "unsubscribe", "requestId": 1}))["code"] == "success"
    assert (await ask(other, {"type": "subscribe", "room": rooms[2], "requestId": 9,
                              "persistent": True}))["code"] == "success"

    bad = await ask(ws, {"type": "subscribe", "room": rooms[2], "requestId": "b",
                         "persistent": "yes"})
    assert (bad["message"], bad["detail"]) == ("invalid-message",
                                               "'persistent' must be a boolean")
    anon, _ = await ws_open(a.ws_url, token="anon", subprotocols=RICH)
    refused = await ask(anon, {"type": "subscribe", "room": rooms[0], "requestId": 1,
                               "persistent": True})
    assert (refused["message"], refused["requestId"]) == ("persistent-needs-login", 1)
    # without the flag the anonymous client subscribes as ever
    assert (await ask(anon, {"type": "subscribe", "room": rooms[0], "requestId": 1}))[
        "code"] == "success"
    for conn in (ws, other, anon):
        await conn.close()

    ws, welcome = await ws_open(b.ws_url, token="dan", subprotocols=RICH)
    assert sorted(p["requestId"] for p in welcome["persistent"]) == [0, 9]
    await ws.close()


def test_stomp_sets_it_with_a_header_and_any_transport_gets_it_back(broker_factory, auth_api,
                                                                     redis_server, unique):
    room = news(unique)
    env = {"BROKER_KEY_PREFIX": f"persist-{unique}"}
    auth_api.allow(f"e-{unique}", {"login_id": f"erin{unique}", "allowed_rooms": [room]})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, **env)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web", **env)

    conn, listener = stomp_client(gate.port, headers={"token": f"e-{unique}"})
    assert "persistent" not in listener.next("connected").headers
    conn.subscribe("/room/" + json.dumps(room), id="news", receipt="s1",
                   headers={"persistent": "true"})
    listener.receipt("s1")
    conn.subscribe("/room/" + json.dumps(room), id="odd", receipt="s2",
                   headers={"persistent": "maybe"})
    err = listener.next("error")
    assert err.headers["message"] == "invalid-message"  # standard STOMP: then the close
    listener.next("disconnected")

    conn, listener = stomp_client(gate.port, headers={"token": f"e-{unique}"})
    assert json.loads(listener.next("connected").headers["persistent"]) == ["news"]
    assert web.trigger([room], {"over": "stomp"}).status_code == 202
    msg = listener.next("message")
    assert msg.headers["subscription"] == "news" and json.loads(msg.body) == {"over": "stomp"}
    conn.disconnect()

    async def on_websocket():
        ws, welcome = await ws_open(web.ws_url, token=f"e-{unique}", subprotocols=RICH)
        assert welcome["persistent"] == [{"requestId": "news", "room": room}]
        await ws.close()

    asyncio.run(on_websocket())


async def test_the_in_memory_broker_keeps_them_too(broker, auth_api, unique):
    room = news(unique)
    auth_api.allow(token="fay", body={"login_id": f"fay{unique}", "allowed_rooms": [room]})
    ws, _ = await ws_open(broker.ws_url, token="fay", subprotocols=RICH)
    assert (await ask(ws, {"type": "subscribe", "room": room, "requestId": 1,
                           "persistent": True}))["code"] == "success"
    await ws.close()
    ws, welcome = await ws_open(broker.ws_url, token="fay", subprotocols=RICH)
    assert welcome["persistent"] == [{"requestId": 1, "room": room}]
    assert (await broker.atrigger([room], "m")).status_code == 202
    assert (await recv_json(ws))["data"] == "m"
    await ws.close()
