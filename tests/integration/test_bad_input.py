"""Bad input that once closed a connection or held memory (issue 11, items 9 and 13), through
real broker processes: the WebSocket (uvicorn) and the TCP gate's JSON lines.

- Data nested deeper than the codec's depth limit (``broker.jsontext.MAX_JSON_DEPTH``) is
  refused with ``invalid-message``; the connection stays open. Before, ~970 levels parsed but
  failed to encode (``RecursionError`` in ``dump_json``): 1011 on the WebSocket, the JSON-lines
  socket dropped, a traceback logged.
- Request ids are bounded (``MAX_REQUEST_ID_CHARS``): a longer one is refused with
  ``request-id-too-long`` and nothing is kept.
"""

from __future__ import annotations

import json

import pytest

from tests.harness import recv_json, recv_text, send_json, ws_open
from tests.integration.gatehelpers import JsonLines, start_gate

NEWS = {"target": "news"}
RICH = ["combroker.v1"]
# The documented bounds (docs/protocol.md; broker.jsontext.MAX_JSON_DEPTH, MAX_REQUEST_ID_CHARS)
MAX_JSON_DEPTH = 128
MAX_REQUEST_ID_CHARS = 128


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def deep_text(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


@pytest.fixture
def api(auth_api):
    auth_api.allow(token="alice", body={"login_id": "alice", "profile": "agent",
                                        "allowed_rooms": [NEWS]})
    auth_api.allow(token="bob", body={"login_id": "bob", "profile": "agent",
                                      "allowed_rooms": [NEWS]})
    return auth_api


def deep_requests(depth: int) -> list[str]:
    """Frames whose data (or request id) is nested ``depth`` levels inside the frame."""
    data = deep_text(depth - 1)
    return [
        '{"type":"ping","requestId":' + data + '}',
        '{"type":"send","to":"/agent/bob","data":' + data + ',"requestId":1}',
        '{"type":"publish","rooms":[{"target":"news"}],"data":' + data + ',"requestId":2}',
    ]


@pytest.mark.parametrize("subprotocols", [None, RICH], ids=["high-templar", "rich"])
async def test_deep_nesting_is_refused_over_websocket(broker_factory, api, subprotocols):
    broker = broker_factory(auth_api=api)
    bob, _ = await ws_open(broker.ws_url, token="bob")
    ws, welcome = await ws_open(broker.ws_url, token="alice", subprotocols=subprotocols)
    assert welcome["is_authorized"] is True
    for depth in (970, MAX_JSON_DEPTH + 1):
        for frame in deep_requests(depth):
            await ws.send(frame)
            reply = await recv_json(ws)
            assert reply["code"] == "error" and reply["message"] == "invalid-message", reply
    # at the limit, the same requests are carried out
    for frame in deep_requests(MAX_JSON_DEPTH)[1:2]:
        await ws.send(frame)
        assert (await recv_json(ws))["code"] == "success"
    got = await recv_json(bob)
    assert got["type"] == "message" and got["data"] == nested(MAX_JSON_DEPTH - 1)
    await ws.send("ping")
    assert await recv_text(ws) == "pong"  # still open
    await ws.close()
    await bob.close()
    assert "Traceback" not in broker.log()


def test_deep_nesting_is_refused_over_json_lines(broker_factory, api):
    gate = start_gate(broker_factory, auth_api=api)
    j = JsonLines(gate.port)
    j.send({"type": "connect", "token": "alice"})
    assert j.recv()["type"] == "welcome"
    for frame in deep_requests(970):
        j.sock.sendall(frame.encode() + b"\n")
        reply = j.recv()
        assert reply["message"] == "invalid-message" and reply["type"] == "error", reply
    j.send({"type": "ping", "requestId": "p"})
    assert j.recv() == {"type": "pong", "requestId": "p"}
    j.close()
    assert "Traceback" not in gate.log()


async def test_request_ids_are_bounded(broker_factory, api):
    broker = broker_factory(auth_api=api)
    ws, _ = await ws_open(broker.ws_url, token="alice", subprotocols=RICH)
    longest = "x" * MAX_REQUEST_ID_CHARS
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": longest})
    assert await recv_json(ws) == {"code": "success", "requestId": longest}
    big = 10 ** MAX_REQUEST_ID_CHARS  # a number written in more characters than the bound
    for rid in ("y" * (MAX_REQUEST_ID_CHARS + 1), "z" * 30_000, big):
        for request in ({"type": "subscribe", "room": NEWS}, {"type": "unsubscribe"},
                        {"type": "ping"}, {"type": "history", "room": NEWS}):
            await send_json(ws, {**request, "requestId": rid})
            reply = await recv_json(ws)
            assert reply["message"] == "request-id-too-long", reply
            assert "requestId" not in reply  # never echoed: only its bound is
    # nothing was kept: the one subscription is the only one
    r = await broker.atrigger([NEWS], "hi")
    assert r.status_code == 202
    assert await recv_json(ws) == {"type": "publish", "requestId": longest, "data": "hi",
                                   "room": NEWS, "id": r.json()["id"]}
    await ws.send(json.dumps({"type": "ping", "requestId": 1}))
    assert await recv_json(ws) == {"type": "pong", "requestId": 1}
    await ws.close()
