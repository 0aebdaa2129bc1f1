"""The WebSocket edge (broker/wsedge.py): the broker's path served on uvicorn's transport with no
ASGI between; what it does that the protocol tests elsewhere do not reach.

Every other integration test runs on it too (the harness's uvicorn command is the production
one, ``--ws broker.wsedge:WebSocketEdge``); here: frames written once for many connections and
their length encodings, compression when it is turned on, keepalive, fragments, invalid text,
reading paused and resumed, proxy headers, and the paths that are not the broker's.
"""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import (
    UVICORN_ARGV, close_code, recv_json, recv_text, send_json, ws_connect, ws_open,
)

ROOM = {"edge": "all"}
BODY = {"allowed_rooms": [ROOM]}


def _argv(*flags: str, drop: tuple[str, ...] = ()) -> list[str]:
    """The harness's uvicorn command with ``flags`` added (and the flags in ``drop`` taken out
    with their value, where they take one)."""
    argv = list(UVICORN_ARGV)
    for flag in drop:
        i = argv.index(flag)
        del argv[i:i + (1 if flag.startswith("--no-") else 2)]
    return argv + list(flags)


async def _subscribed(url: str, request_id: int, **kw) -> object:
    ws, welcome = await ws_open(url, token="t", **kw)
    assert welcome["is_authorized"] is True
    await send_json(ws, {"type": "subscribe", "room": ROOM, "requestId": request_id})
    assert await recv_json(ws) == {"code": "success"}
    return ws


@pytest.mark.parametrize("size", [10, 125, 126, 65_535, 65_536, 300_000])
async def test_one_frame_written_to_many_in_every_length_encoding(broker_factory, auth_api, size):
    """The same text to several connections is framed once; a connection with another request
    id gets its own frame. Sizes around the 7-bit, 16-bit and 64-bit length encodings."""
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api)
    same = [await _subscribed(broker.ws_url, 1, compression=None) for _ in range(3)]
    other = await _subscribed(broker.ws_url, 2, compression=None)
    data = "x" * size
    assert (await broker.atrigger([ROOM], data)).status_code == 202
    for ws in same:
        assert await recv_json(ws) == {"type": "publish", "requestId": 1, "data": data}
    assert await recv_json(other) == {"type": "publish", "requestId": 2, "data": data}
    for ws in [*same, other]:
        await ws.close()


async def test_compression_when_the_server_turns_it_on(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api, argv=_argv(
        "--ws-per-message-deflate", "true", drop=("--ws-per-message-deflate",)))
    deflated = await _subscribed(broker.ws_url, 1, compression="deflate")
    assert deflated.protocol.extensions, "permessage-deflate was not negotiated"
    plain = await _subscribed(broker.ws_url, 1, compression=None)
    assert not plain.protocol.extensions
    for data in ("a" * 50, "b" * 100_000, "a" * 50):
        assert (await broker.atrigger([ROOM], data)).status_code == 202
        for ws in (deflated, plain):
            assert await recv_json(ws) == {"type": "publish", "requestId": 1, "data": data}
    await deflated.close()
    await plain.close()


async def test_no_compression_in_the_production_command(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api)
    ws = await _subscribed(broker.ws_url, 1, compression="deflate")
    assert not ws.protocol.extensions  # offered, not accepted: docs/operations.md says why
    await ws.close()


async def test_a_client_that_stops_answering_pings_is_closed_with_1011(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api, argv=_argv(
        "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5"))
    answering = await _subscribed(broker.ws_url, 1)
    deaf = await _subscribed(broker.ws_url, 1)
    deaf.transport.pause_reading()  # reads nothing, so answers no ping
    await broker.until_metric("combroker_connections", 1, timeout=10)  # the broker closed it
    deaf.transport.resume_reading()
    assert (await close_code(deaf))[0] == 1011
    # the one that answered, as silent, is still served
    await answering.send("ping")
    assert await recv_text(answering) == "pong"
    await answering.close()


async def test_a_fragmented_message_is_one_message(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api)
    ws, _ = await ws_open(broker.ws_url, token="t")
    text = json.dumps({"type": "subscribe", "room": ROOM, "requestId": 5})
    await ws.send([text[:10], text[10:20], text[20:]])
    assert await recv_json(ws) == {"code": "success"}
    await ws.close()


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api)
    ws, _ = await ws_open(broker.ws_url, token="t")
    bystander = await _subscribed(broker.ws_url, 1)
    await ws.send(b'{"type": "\xff\xfe"}', text=True)
    assert (await close_code(ws))[0] == 1007
    assert (await broker.atrigger([ROOM], 1)).status_code == 202
    assert await recv_json(bystander) == {"type": "publish", "requestId": 1, "data": 1}
    await bystander.close()


async def test_requests_sent_far_ahead_are_all_answered_in_order(broker_factory, auth_api):
    """Reading pauses while the serve loop is behind and resumes: nothing is lost."""
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api)
    ws, _ = await ws_open(broker.ws_url, token="t", compression=None)
    for i in range(300):
        await send_json(ws, {"type": "subscribe", "room": ROOM, "requestId": i})
        await send_json(ws, {"type": "unsubscribe", "requestId": i})
    for _ in range(300):
        assert await recv_json(ws) == {"code": "success"}
        assert await recv_json(ws) == {"code": "success"}
    await ws.close()


async def test_proxy_headers_name_the_client_to_the_auth_api(broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    broker = broker_factory(auth_api=auth_api, argv=_argv(
        "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1", drop=("--no-proxy-headers",)))
    ws, _ = await ws_open(broker.ws_url, token="t", headers={"X-Forwarded-For": "203.0.113.7"})
    await ws.close()
    assert auth_api.last.headers.get("x-real-ip") == "203.0.113.7"
    # from a proxy it does not trust, the header names nobody
    untrusted = broker_factory(auth_api=auth_api, argv=_argv(
        "--proxy-headers", "--forwarded-allow-ips", "10.9.9.9", drop=("--no-proxy-headers",)))
    ws, _ = await ws_open(untrusted.ws_url, token="t", headers={"X-Forwarded-For": "203.0.113.7"})
    await ws.close()
    assert auth_api.last.headers.get("x-real-ip") == "127.0.0.1"


async def test_other_paths_are_answered_as_uvicorns_own_implementation_does(
        broker_factory, auth_api):
    auth_api.allow(token="t", body=BODY)
    edge = broker_factory(auth_api=auth_api)
    own = broker_factory(auth_api=auth_api, argv=[
        "websockets-sansio" if a == "broker.wsedge:WebSocketEdge" else a for a in UVICORN_ARGV])
    statuses = []
    for broker in (edge, own):
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(broker.ws_url.replace("/ws/", "/elsewhere/"))
        statuses.append(refused.value.response.status_code)
        ws, welcome = await ws_open(broker.ws_url, token="t")  # and the broker's path is served
        assert welcome["is_authorized"] is True
        await ws.close()
    assert statuses[0] == statuses[1], statuses

