"""STOMP over WebSocket (PROTOCOL §3, §4): subprotocols v12.stomp / v11.stomp / stomp on /ws/.

The client is a minimal one written here: ``websockets`` plus ``stompframe`` (one frame per
WebSocket message), the way @stomp/stompjs speaks it.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from broker.codecs.stompframe import Frame, encode_frame, is_heartbeat, parse_frame
from tests.harness import close_code, recv_frame, recv_json, ws_connect, ws_open
from tests.integration.gatehelpers import STATIC_KEYS

pytestmark = pytest.mark.timeout(60)


class WsStomp:
    def __init__(self, ws, cb: bool = False) -> None:
        self.ws = ws
        self.cb = cb

    async def send(self, command: str, body: str = "", **headers: str) -> None:
        h = {k.replace("_", "-"): v for k, v in headers.items()}
        await self.ws.send(encode_frame(Frame(command, h, body.encode()),
                                        escape=False if self.cb else None).decode())

    async def recv(self, timeout: float = 5.0) -> Frame:
        while True:
            data = await recv_frame(self.ws, timeout)
            raw = data.encode() if isinstance(data, str) else data
            if not is_heartbeat(raw):
                return parse_frame(raw, cb_compat=self.cb)


async def stomp_ws(url: str, protocol: str = "v12.stomp", **connect_headers: str):
    ws = await ws_connect(url, subprotocols=[protocol])
    assert ws.subprotocol == protocol
    client = WsStomp(ws, cb=protocol == "stomp")
    await client.send("CONNECT", **{"accept-version": "1.2", "host": "x", **connect_headers})
    return client, await client.recv()


async def test_stomp_over_websocket_receives_a_trigger(broker, auth_api, unique):
    room = {"target": "ws", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "login_id": f"w{unique}"})
    auth_api.allow(f"j{unique}", {"login_id": f"j{unique}"})
    client, connected = await stomp_ws(broker.ws_url, token=unique)
    assert connected.command == "CONNECTED"
    assert connected.headers["version"] == "1.2"
    assert connected.headers["destination"] == f"/agent/w{unique}"
    assert connected.headers["heart-beat"] == "0,0"
    await client.send("SUBSCRIBE", id="sub-0", destination="/room/" + json.dumps(room),
                      receipt="r1")
    assert (await client.recv()).headers == {"receipt-id": "r1"}
    assert (await broker.atrigger([room], {"n": 1})).status_code == 202
    msg = await client.recv()
    assert msg.command == "MESSAGE" and json.loads(msg.body) == {"n": 1}
    assert msg.headers["subscription"] == "sub-0"
    await client.ws.send("\n")  # a heart-beat is tolerated

    # STOMP -> JSON: the JSON client sees the message frame; the raw text becomes its data
    js, welcome = await ws_open(broker.ws_url, token=f"j{unique}")
    assert welcome["is_authorized"]
    await client.send("SEND", "plain words", destination=f"/agent/j{unique}", receipt="r2")
    assert (await client.recv()).headers == {"receipt-id": "r2"}
    got = await recv_json(js)
    assert got["type"] == "message" and got["data"] == "plain words"
    assert got["from"] == f"/agent/w{unique}"
    # JSON -> STOMP
    await js.send(json.dumps({"type": "send", "to": f"/agent/w{unique}", "data": {"k": [1]}}))
    assert (await recv_json(js))["code"] == "success"
    direct = await client.recv()
    assert json.loads(direct.body) == {"k": [1]} and direct.headers["origin"] == f"/agent/j{unique}"

    await client.send("DISCONNECT", receipt="bye")
    assert (await client.recv()).headers == {"receipt-id": "bye"}
    code, _ = await close_code(client.ws)
    assert code == 1000
    await js.close()


async def test_binary_stomp_frames(broker, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"b{unique}"})
    client, connected = await stomp_ws(broker.ws_url, "v11.stomp", token=unique)
    assert connected.command == "CONNECTED"
    await client.ws.send(encode_frame(Frame("DISCONNECT", {"receipt": "x"})))
    assert (await client.recv()).headers == {"receipt-id": "x"}


async def test_stomp_over_websocket_error_closes(broker, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"e{unique}"})
    client, _ = await stomp_ws(broker.ws_url, token=unique)
    await client.send("SUBSCRIBE", id="1", destination='/room/{"not":"allowed"}')
    err = await client.recv()
    assert err.command == "ERROR" and err.headers["message"] == "room-not-found"
    code, _ = await close_code(client.ws)
    assert code == 1000


async def test_stomp_over_websocket_refused(broker):
    client, err = await stomp_ws(broker.ws_url, token="nobody")
    assert err.command == "ERROR" and err.headers["message"] == "refused"
    code, _ = await close_code(client.ws)
    assert code == 4003


async def test_first_frame_must_be_connect(broker):
    ws = await ws_connect(broker.ws_url, subprotocols=["v12.stomp"])
    await ws.send(encode_frame(Frame("SEND", {"destination": "/agent/x"}, b"x")).decode())
    err = parse_frame((await recv_frame(ws)).encode())
    assert err.command == "ERROR" and err.headers["message"] == "not-connected"
    code, _ = await close_code(ws)
    assert code == 4003


async def test_communication_broker_js_subprotocol(broker_factory, auth_api, unique):
    broker = broker_factory(auth_api=auth_api, **STATIC_KEYS)
    a, connected = await stomp_ws(broker.ws_url, "stomp", login=f"a{unique}", passcode="ak",
                                  **{"secret-key": "app-secret"})
    assert connected.headers["profile-code"] == "1" and connected.headers["login"] == f"a{unique}"
    b, _ = await stomp_ws(broker.ws_url, "stomp", login=f"b{unique}", passcode="ak",
                          **{"secret-key": "app-secret"})
    await a.send("SEND", "hi b", destination=f"/agent/b{unique}", transaction="7")
    assert (await a.recv()).headers == {"transaction": "7", "error-desc": "OK"}
    msg = await b.recv()
    assert msg.body == b"hi b" and msg.headers["origin"] == f"a{unique}"
    # errors keep the connection open in this dialect
    await a.send("SEND", "x", destination=f"/agent/nobody{unique}", transaction="8")
    assert (await a.recv()).headers == {"transaction": "8", "error-desc": "destination-not-found"}
    await a.send("DISCONNECT", **{"receipt-id": "9"})
    assert (await a.recv()).headers == {"receipt-id": "9"}

    bad, err = await stomp_ws(broker.ws_url, "stomp", login="x", passcode="zz",
                              **{"secret-key": "app-secret"})
    assert err.headers["message"] == "Invalid Profile/Passcode."
    bad2, err = await stomp_ws(broker.ws_url, "stomp", login="x", passcode="ak",
                               **{"secret-key": "nope"})
    assert err.headers["message"] == "Invalid Application Secret Key."
    for ws in (a.ws, b.ws, bad.ws, bad2.ws):
        await ws.close()


# --------------------------------------------------------------------------- issue 11, item 19


async def test_heartbeats_requested_over_websocket_are_negotiated_and_sent(
        broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"h{unique}"})
    broker = broker_factory(auth_api=auth_api, BROKER_STOMP_HEARTBEAT_MS=200)
    client, connected = await stomp_ws(broker.ws_url, token=unique, **{"heart-beat": "200,200"})
    assert connected.headers["heart-beat"] == "200,200"

    async def beat() -> None:  # our side of the bargain
        while True:
            await client.ws.send("\n")
            await asyncio.sleep(0.2)

    beating = asyncio.ensure_future(beat())
    try:
        beats = 0
        while beats < 3:  # the broker's EOLs, with nothing else to send
            data = await recv_frame(client.ws, 5)
            assert is_heartbeat(data.encode() if isinstance(data, str) else data), data
            beats += 1
        # and the connection, kept alive by our beats, still works
        await client.send("DISCONNECT", receipt="bye")
        assert (await client.recv()).headers == {"receipt-id": "bye"}
    finally:
        beating.cancel()


async def test_silent_websocket_client_that_promised_heartbeats_is_dropped(
        broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"s{unique}"})
    broker = broker_factory(auth_api=auth_api, BROKER_STOMP_HEARTBEAT_MS=200)
    client, connected = await stomp_ws(broker.ws_url, token=unique, **{"heart-beat": "200,0"})
    assert connected.headers["heart-beat"] == "0,200"
    # we promised a beat every 200 ms and send none: dropped after 2 periods + 1 s
    assert await close_code(client.ws, timeout=10) == (1001, "heart-beat-timeout")


async def test_client_individual_ack_over_websocket(broker, auth_api, unique):
    room = {"target": "wsack", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "login_id": f"k{unique}"})
    client, _ = await stomp_ws(broker.ws_url, token=unique)
    await client.send("SUBSCRIBE", id="s", destination="/room/" + json.dumps(room),
                      ack="client-individual", receipt="r1")
    assert (await client.recv()).headers == {"receipt-id": "r1"}
    assert (await broker.atrigger([room], {"n": 1})).status_code == 202
    msg = await client.recv()
    assert msg.command == "MESSAGE" and msg.headers["ack"]
    await client.send("ACK", id=msg.headers["ack"], receipt="a1")
    assert (await client.recv()).headers == {"receipt-id": "a1"}
    await client.send("NACK", id="999", receipt="n1")
    err = await client.recv()
    assert err.command == "ERROR" and err.headers["message"] == "invalid-message"
