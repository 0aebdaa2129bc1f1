"""The WebSocket JSON protocol (PROTOCOL §3.1, §3.2) against a real broker process.

Every frame is compared as a whole object, the way a High-templar 3.x client compares them.
The broker runs with the in-memory layer and authenticates against the AuthAPI stub (a real
HTTP server). The tests on the shared broker run under both servers (uvicorn and daphne, whose
close codes and refusals broker.daphne_ext patches); the others under the default, uvicorn.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re

import pytest

from tests.conftest import _BROKERS as BROKERS_KEY
from tests.harness import (
    SERVERS, AuthAPI, BrokerProcess, close_code, expect_nothing, recv_json, recv_many,
    recv_text, send_json, ws_connect, ws_open,
)

CHAT1 = {"target": "chat", "customer": "1"}
NEWS = {"target": "news"}
ORDERS_ANY = {"target": "orders", "customer": "*"}
# The API lists NEWS twice: the welcome de-duplicates, keeping the API's order.
ALICE = {"login_id": "alice", "profile": "agent",
         "allowed_rooms": [CHAT1, NEWS, ORDERS_ANY, {"target": "news"}]}
ALICE_ROOMS = [CHAT1, NEWS, ORDERS_ANY]
GUEST = {"allowed_rooms": [NEWS]}

SUCCESS = {"code": "success"}
RICH = ["combroker.v1"]


def error(message: str) -> dict:
    return {"code": "error", "message": message}


def publish(request_id, data) -> dict:
    return {"type": "publish", "requestId": request_id, "data": data}


async def ask(ws, frame) -> object:
    """Send one request (a JSON value, or raw text/bytes) and return the JSON reply."""
    if isinstance(frame, (str, bytes)):
        await ws.send(frame)
    else:
        await send_json(ws, frame)
    return await recv_json(ws)


def sub(request_id, room) -> dict:
    return {"type": "subscribe", "room": room, "requestId": request_id}


def unsub(request_id) -> dict:
    return {"type": "unsubscribe", "requestId": request_id}


def _rules(api: AuthAPI) -> AuthAPI:
    api.allow(token="alice", body=ALICE)
    api.allow(token="guest", body=GUEST)
    api.allow(token="watcher", body={"login_id": "wendy", "profile": "super_agent",
                                     "allowed_rooms": [NEWS]})
    api.allow(token="root", body={"login_id": "root", "profile": "admin"})
    api.allow(token="slow", body=ALICE, delay=0.3)
    api.allow(token="slow-no", status=403, body={"detail": "no"}, delay=0.3)
    return api


@pytest.fixture
def api(auth_api):
    return _rules(auth_api)


@pytest.fixture(scope="module", params=SERVERS)
def shared_broker(request):
    """One broker per server for the tests of this module that need no settings of their own
    (starting a broker per test costs more than the tests). Each test closes what it opened."""
    with AuthAPI() as api:
        _rules(api)
        with BrokerProcess({"BROKER_AUTH_URL": api.url, "BROKER_TRIGGER_TOKEN": "test-token",
                            "BROKER_MAX_SUBSCRIPTIONS": 3, "BROKER_MAX_MESSAGE_BYTES": 1024},
                           server=request.param, name=f"shared-{request.param}") as broker:
            yield broker


@pytest.fixture
def broker(shared_broker, request):
    # Failures show this broker's output, as for broker_factory's brokers.
    request.node.stash.setdefault(BROKERS_KEY, []).append(shared_broker)
    return shared_broker


# ---------------------------------------------------------------- handshake


async def test_welcome_is_exact(broker):
    ws, welcome = await ws_open(broker.ws_url, token="alice")
    assert ws.subprotocol is None
    assert welcome == {"is_authorized": True, "allowed_rooms": ALICE_ROOMS}
    await ws.close()

    # /ws works as well as /ws/
    ws, welcome = await ws_open(broker.ws_url.rstrip("/"), token="alice")
    assert welcome == {"is_authorized": True, "allowed_rooms": ALICE_ROOMS}
    await ws.close()

    # The effective rooms: the API's, plus what the profile watches (§2.3).
    ws, welcome = await ws_open(broker.ws_url, token="watcher")
    assert welcome == {"is_authorized": True,
                       "allowed_rooms": [NEWS, {"client": "*", "profile": "agent"}]}
    await ws.close()


async def test_refused_is_exact_then_close_1000(broker):
    ws = await ws_connect(broker.ws_url, token="nobody")  # the API answers 403
    assert await recv_json(ws) == {"is_authorized": False}
    assert (await close_code(ws))[0] == 1000


async def test_requests_sent_before_the_welcome_are_answered_after_it(broker):
    # A client may send as soon as the socket opens (JS: onopen -> send), while the broker
    # still waits for the auth API (0.3 s here). Nothing may be lost.
    ws = await ws_connect(broker.ws_url, token="slow")
    await send_json(ws, sub(1, NEWS))
    await ws.send("ping")
    assert await recv_json(ws) == {"is_authorized": True, "allowed_rooms": ALICE_ROOMS}
    assert await recv_json(ws) == SUCCESS
    assert await recv_text(ws) == "pong"
    await ws.close()

    # ... and a refused client's early requests are not answered at all
    ws = await ws_connect(broker.ws_url, token="slow-no")
    await send_json(ws, sub(1, NEWS))
    await ws.send("ping")
    assert await recv_json(ws) == {"is_authorized": False}
    frames: list = []
    assert (await close_code(ws, frames=frames))[0] == 1000
    assert frames == []


async def test_text_ping_gets_text_pong(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    await ws.send("ping")
    assert await recv_text(ws) == "pong"
    await ws.send("ping")
    await ws.send("ping")
    assert [await recv_text(ws), await recv_text(ws)] == ["pong", "pong"]
    await ws.close()


# ---------------------------------------------------------------- subscribe / unsubscribe


async def test_subscribe_success_and_each_error(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    assert await ask(ws, sub(1, CHAT1)) == SUCCESS
    # the same id and the same room (keys in another order): success, nothing changes
    assert await ask(ws, sub(1, {"customer": "1", "target": "chat"})) == SUCCESS
    # the same id for a different room
    assert await ask(ws, sub(1, NEWS)) == error("request-id-in-use")

    for room in ({"target": "chat", "customer": "2"},   # another value
                 {"target": "chat", "customer": "*"},   # "*" where the allowed room has none
                 {"target": "chat", "customer": 1},     # 1 is not "1"
                 {"target": "news", "extra": "x"},      # another key set
                 {"target": "other"}):
        assert await ask(ws, sub(2, room)) == error("room-not-found"), room

    for room in ([1, 2], "news", None, {}, {"a": None}, {"a": [1]}, {"a": {"b": 1}},
                 {f"k{i}": "v" for i in range(17)}):
        assert await ask(ws, sub(2, room)) == error("invalid-room"), room

    assert await ask(ws, {"type": "subscribe", "room": NEWS}) == error("no-request-id")
    assert await ask(ws, sub(None, NEWS)) == error("no-request-id")

    # "*" is allowed where the allowed room has it, and any value there (a number too)
    assert await ask(ws, sub(2, ORDERS_ANY)) == SUCCESS
    assert await ask(ws, sub(3, {"target": "orders", "customer": 5})) == SUCCESS
    # BROKER_MAX_SUBSCRIPTIONS=3
    assert await ask(ws, sub(4, NEWS)) == error("too-many-subscriptions")
    # re-subscribing an existing id to its own room is not a new subscription
    assert await ask(ws, sub(3, {"target": "orders", "customer": 5})) == SUCCESS
    assert await ask(ws, unsub(3)) == SUCCESS
    assert await ask(ws, sub(4, NEWS)) == SUCCESS
    await ws.close()

    # admin connections may not subscribe at all
    ws, welcome = await ws_open(broker.ws_url, token="root")
    assert welcome == {"is_authorized": True, "allowed_rooms": []}
    assert await ask(ws, sub(1, NEWS)) == error("profile-cannot-subscribe")
    await ws.close()


async def test_unsubscribe_success_and_errors(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    assert await ask(ws, sub("n", NEWS)) == SUCCESS
    assert await ask(ws, unsub("n")) == SUCCESS
    assert await ask(ws, unsub("n")) == error("not-subscribed")
    assert await ask(ws, unsub("never")) == error("not-subscribed")
    assert await ask(ws, {"type": "unsubscribe"}) == error("no-request-id")
    # after unsubscribing, a trigger reaches nobody
    assert (await broker.atrigger([NEWS], {"x": 1})).status_code == 202
    await expect_nothing(ws)
    assert await ask(ws, sub("m", NEWS)) == SUCCESS
    assert (await broker.atrigger([NEWS], {"x": 2})).status_code == 202
    assert await recv_json(ws) == publish("m", {"x": 2})  # the next frame: nothing came late
    await ws.close()


async def test_delivery_keeps_the_request_id_json_type(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    # 7 and "7" are two different ids; 1.5 stays a float
    for rid in (7, "7", 1.5):
        assert await ask(ws, sub(rid, NEWS)) == SUCCESS
    data = {"n": 1, "s": "é", "l": [1, None, True]}
    assert (await broker.atrigger([NEWS], data)).status_code == 202
    frames = await recv_many(ws, 3)
    key = lambda f: json.dumps(f, sort_keys=True)  # noqa: E731
    assert sorted(frames, key=key) == sorted(
        [publish(7, data), publish("7", data), publish(1.5, data)], key=key)
    await expect_nothing(ws)

    assert await ask(ws, unsub("7")) == SUCCESS  # removes "7", not 7
    assert (await broker.atrigger([NEWS], "text")).status_code == 202
    assert sorted(await recv_many(ws, 2), key=key) == sorted(
        [publish(7, "text"), publish(1.5, "text")], key=key)
    await expect_nothing(ws)
    await ws.close()


# ---------------------------------------------------------------- bad input


async def test_bad_input_is_answered_and_never_closes(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    for frame in ("hello", "{not json", "pingpong", "", b"\x00\x01", b'{"type": "ping"}'):
        assert await ask(ws, frame) == error("non-json-message"), frame
    for frame in ({"type": "nope"}, {}, {"room": NEWS, "requestId": 1}, {"type": None},
                  {"type": 5}):
        assert await ask(ws, frame) == error("message-type-not-allowed"), frame
    for frame in ("[1, 2]", '"subscribe"', "5", "null", "true",
                  sub(True, NEWS), sub([1], NEWS), sub({"a": 1}, NEWS), unsub({"a": 1})):
        assert await ask(ws, frame) == error("invalid-message"), frame
    # still open and working
    await ws.send("ping")
    assert await recv_text(ws) == "pong"
    assert await ask(ws, sub(1, NEWS)) == SUCCESS
    await ws.close()


async def test_oversized_frame_closes_with_1009(broker):
    # BROKER_MAX_MESSAGE_BYTES=1024, counted in bytes: at the limit is still answered
    ws, _ = await ws_open(broker.ws_url, token="alice")
    assert await ask(ws, "x" * 1024) == error("non-json-message")
    padded = json.dumps({"type": "subscribe", "room": NEWS, "requestId": 1, "pad": ""})
    frame = padded[:-2] + "a" * (1024 - len(padded)) + '"}'
    assert len(frame.encode()) == 1024
    assert await ask(ws, frame) == SUCCESS
    await ws.send("x" * 1025)
    assert (await close_code(ws))[0] == 1009

    # 600 two-byte characters are 1200 bytes
    ws, _ = await ws_open(broker.ws_url, token="alice")
    await ws.send("é" * 600)
    assert (await close_code(ws))[0] == 1009

    ws, _ = await ws_open(broker.ws_url, token="alice")
    await ws.send(b"\x00" * 1025)
    assert (await close_code(ws))[0] == 1009


# ---------------------------------------------------------------- status


async def test_status_is_not_allowed_by_default(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice")
    assert await ask(ws, {"type": "status"}) == error("message-type-not-allowed")
    await ws.close()
    # admin connections always may (§3.1)
    ws, _ = await ws_open(broker.ws_url, token="root")
    status = await ask(ws, {"type": "status"})
    assert set(status) == {"open_connections", "num_rooms", "online_since"}
    assert status["open_connections"] >= 1
    await ws.close()


async def _status_until(ws, expected: dict, timeout: float = 5.0) -> dict:
    """Ask for status until its counts are ``expected`` (a close is noticed asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await ask(ws, {"type": "status"})
        counts = {k: status[k] for k in expected}
        if counts == expected or loop.time() > deadline:
            assert counts == expected
            return status
        await asyncio.sleep(0.05)


async def test_public_status_counts(broker_factory, api):
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    broker = broker_factory(auth_api=api, BROKER_PUBLIC_STATUS=True)
    ws1, _ = await ws_open(broker.ws_url, token="alice")
    ws2, _ = await ws_open(broker.ws_url, token="alice")
    ws3, _ = await ws_open(broker.ws_url, token="guest")
    # refused connections are not counted
    refused = await ws_connect(broker.ws_url, token="nobody")
    assert await recv_json(refused) == {"is_authorized": False}

    assert await ask(ws1, sub(1, CHAT1)) == SUCCESS
    assert await ask(ws1, sub(2, CHAT1)) == SUCCESS         # same room: still one room
    assert await ask(ws2, sub(1, CHAT1)) == SUCCESS         # same room on another connection
    assert await ask(ws2, sub(2, ORDERS_ANY)) == SUCCESS    # the wildcard room is a room
    assert await ask(ws3, sub("g", NEWS)) == SUCCESS

    status = await ask(ws3, {"type": "status"})
    assert set(status) == {"open_connections", "num_rooms", "online_since"}
    assert {k: status[k] for k in ("open_connections", "num_rooms")} == {
        "open_connections": 3, "num_rooms": 3}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                        status["online_since"]), status["online_since"]
    since = dt.datetime.fromisoformat(status["online_since"])
    assert since.tzinfo is not None
    assert before <= since <= dt.datetime.now(dt.UTC)

    assert await ask(ws1, unsub(1)) == SUCCESS
    assert await ask(ws1, unsub(2)) == SUCCESS
    await _status_until(ws3, {"open_connections": 3, "num_rooms": 3})  # ws2 still holds CHAT1
    assert await ask(ws3, unsub("g")) == SUCCESS
    await _status_until(ws3, {"open_connections": 3, "num_rooms": 2})
    await ws2.close()
    final = await _status_until(ws3, {"open_connections": 2, "num_rooms": 0})
    assert final["online_since"] == status["online_since"]
    await ws1.close()
    await ws3.close()


# ---------------------------------------------------------------- rich dialect (combroker.v1)


async def test_rich_welcome(broker):
    ws, welcome = await ws_open(broker.ws_url, token="alice", subprotocols=RICH)
    assert ws.subprotocol == "combroker.v1"
    conn_id = welcome.pop("connection_id")
    assert isinstance(conn_id, str) and conn_id
    assert "resume_token" in welcome
    welcome.pop("resume_token")
    assert welcome == {"type": "welcome", "is_authorized": True, "is_authenticated": True,
                       "allowed_rooms": ALICE_ROOMS, "login_id": "alice", "profile": "agent",
                       "destination": "/agent/alice", "resume_ttl": 300}

    ws2, welcome2 = await ws_open(broker.ws_url, token="guest", subprotocols=RICH)
    assert welcome2["connection_id"] != conn_id
    assert {k: welcome2[k] for k in ("type", "allowed_rooms", "login_id", "profile",
                                     "destination")} == {
        "type": "welcome", "allowed_rooms": [NEWS], "login_id": None, "profile": "agent",
        "destination": None}
    await ws.close()
    await ws2.close()


async def test_rich_replies_echo_the_request_id(broker):
    ws, _ = await ws_open(broker.ws_url, token="alice", subprotocols=RICH)
    assert await ask(ws, sub("s1", ORDERS_ANY)) == {"code": "success", "requestId": "s1"}
    assert await ask(ws, sub(2, NEWS)) == {"code": "success", "requestId": 2}
    assert await ask(ws, sub("s1", NEWS)) == {
        "code": "error", "message": "request-id-in-use", "type": "error", "requestId": "s1"}
    assert await ask(ws, sub(3, {"target": "chat", "customer": "2"})) == {
        "code": "error", "message": "room-not-found", "type": "error", "requestId": 3}
    bad = await ask(ws, sub(4, {"a": None}))
    detail = bad.pop("detail")
    assert isinstance(detail, str) and detail
    assert bad == {"code": "error", "message": "invalid-room", "type": "error", "requestId": 4}
    assert await ask(ws, {"type": "subscribe", "room": NEWS}) == {
        "code": "error", "message": "no-request-id", "type": "error"}
    assert await ask(ws, "nope") == {"code": "error", "message": "non-json-message",
                                     "type": "error"}
    assert await ask(ws, {"type": "nope", "requestId": 5}) == {
        "code": "error", "message": "message-type-not-allowed", "type": "error",
        "requestId": 5}
    assert await ask(ws, {"type": "ping", "requestId": "p"}) == {"type": "pong",
                                                                 "requestId": "p"}
    assert await ask(ws, {"type": "ping", "requestId": 6}) == {"type": "pong", "requestId": 6}
    await ws.send("ping")
    assert await recv_text(ws) == "pong"
    assert await ask(ws, unsub(2)) == {"code": "success", "requestId": 2}
    assert await ask(ws, unsub(2)) == {
        "code": "error", "message": "not-subscribed", "type": "error", "requestId": 2}

    # delivery: the matched trigger room and the trigger's id
    room = {"target": "orders", "customer": "42"}
    r = await broker.atrigger([{"target": "chat", "customer": "2"}, room], {"k": [1]})
    assert r.status_code == 202
    assert await recv_json(ws) == {"type": "publish", "requestId": "s1", "data": {"k": [1]},
                                   "room": room, "id": r.json()["id"]}
    await expect_nothing(ws)
    await ws.close()


async def test_rich_refused_closes_with_4003(broker):
    ws = await ws_connect(broker.ws_url, token="nobody", subprotocols=RICH)
    assert ws.subprotocol == "combroker.v1"
    assert await recv_json(ws) == {"type": "refused", "is_authorized": False,
                                   "reason": "refused"}
    assert (await close_code(ws))[0] == 4003
