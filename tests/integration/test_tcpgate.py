"""The TCP gate (PROTOCOL §4) against real processes: ``manage.py runtcpgate`` and uvicorn on one
private Redis, a real auth API, and real clients: stomp.py (unmodified, over TCP and TLS), a
Communication Broker framing client written from §4.1/§4.3, raw sockets for JSON lines and
malformed input.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import httpx
import pytest
import stomp

from tests.harness import recv_json, send_json, ws_open
from tests.integration.gatehelpers import (
    STATIC_KEYS, CBClient, JsonLines, RawStomp, rss_kib, self_signed_cert, start_gate,
    stomp_client,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(broker_factory, auth_api, redis_server):
    """A gate and a separate broker (uvicorn) on the same Redis: (gate, web)."""
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, **STATIC_KEYS)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")
    return gate, web


# --------------------------------------------------------------------------- stomp.py


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_stomp_py_session(tls, broker_factory, auth_api, redis_server, unique, tmp_path):
    room = {"target": "news", "id": unique}
    auth_api.allow(f"a-{unique}", {"allowed_rooms": [room], "login_id": f"alice{unique}"})
    auth_api.allow(f"b-{unique}", {"allowed_rooms": [], "login_id": f"bob{unique}"})
    cert = self_signed_cert(tmp_path) if tls else (None, None)
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server,
                      certfile=cert[0], keyfile=cert[1])
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")

    alice, a = stomp_client(gate.port, headers={"token": f"a-{unique}"}, ca_certs=cert[0])
    connected = a.next("connected")
    assert connected.headers["version"] == "1.2"
    assert connected.headers["destination"] == f"/agent/alice{unique}"
    assert connected.headers["profile-desc"] == "agent"
    # the token went to the auth API as Authorization: Token <t>
    assert any(r.authorization == f"Token a-{unique}" for r in auth_api.requests)

    alice.subscribe("/room/" + json.dumps(room), id="news", receipt="sub-1")
    a.receipt("sub-1")
    assert web.trigger([room], {"hello": "tcp"}).status_code == 202
    msg = a.next("message")
    assert json.loads(msg.body) == {"hello": "tcp"}
    assert msg.headers["subscription"] == "news" and msg.headers["message-id"]
    assert json.loads(msg.headers["destination"].removeprefix("/room/")) == room

    bob, b = stomp_client(gate.port, headers={"token": f"b-{unique}"}, ca_certs=cert[0])
    b.next("connected")
    alice.send(f"/agent/bob{unique}", "hi bob, exactly  this", receipt="send-1")
    a.receipt("send-1")
    direct = b.next("message")
    assert direct.body == "hi bob, exactly  this"
    assert direct.headers["origin"] == f"/agent/alice{unique}"
    assert direct.headers["destination"] == f"/agent/bob{unique}"

    bob.disconnect(receipt="bye-b")
    alice.unsubscribe(id="news", receipt="unsub-1")
    a.receipt("unsub-1")
    alice.disconnect(receipt="bye-a")
    assert not alice.is_connected()


def test_tls_client_verifies_the_gate_certificate(broker_factory, auth_api, tmp_path, unique):
    auth_api.allow(unique, {"login_id": "x"})
    certfile, keyfile = self_signed_cert(tmp_path / "gate")
    other, _ = self_signed_cert(tmp_path / "other", cn="other")
    gate = start_gate(broker_factory, auth_api=auth_api, certfile=certfile, keyfile=keyfile)
    with pytest.raises(stomp.exception.ConnectFailedException):
        stomp_client(gate.port, headers={"token": unique}, ca_certs=other)
    conn, listener = stomp_client(gate.port, headers={"token": unique}, ca_certs=certfile)
    listener.next("connected")
    conn.disconnect()


def test_refused_token_gets_error_and_close(broker_factory, auth_api):
    gate = start_gate(broker_factory, auth_api=auth_api)
    raw = RawStomp(gate.port)
    f = raw.connect("nobody")
    assert f.command == "ERROR" and f.headers["message"] == "refused"
    assert raw.closed()


def test_standard_error_closes_the_connection(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    conn, listener = stomp_client(gate.port, headers={"token": unique})
    listener.next("connected")
    conn.send(f"/agent/nobody{unique}", "x")
    err = listener.next("error")
    assert err.headers["message"] == "destination-not-found"
    listener.next("disconnected")


def test_heartbeats_negotiated(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, heartbeat_ms=500)
    conn, listener = stomp_client(gate.port, headers={"token": unique}, heartbeats=(500, 500))
    assert listener.next("connected").headers["heart-beat"] == "500,500"
    # On purpose: a 2.5 s window, longer than the gate's silence limit (~2 periods + 1 s), in
    # which it must beat at least twice and keep a client that beats as promised.
    time.sleep(2.5)
    assert listener.heartbeats >= 2, listener.heartbeats  # the gate beats every ~500 ms
    assert conn.is_connected()  # and tolerated ours
    conn.disconnect()


def test_silent_client_with_heartbeats_is_dropped(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, heartbeat_ms=200)
    raw = RawStomp(gate.port)
    raw.send("CONNECT", **{"accept-version": "1.2", "token": unique, "heart-beat": "200,0"})
    assert raw.recv().command == "CONNECTED"
    # we promised a beat every 200 ms and send none: the gate gives up after ~2 periods + 1 s
    assert raw.closed(timeout=5)


def test_client_is_not_silent_while_the_gate_handles_its_request(broker_factory, auth_api,
                                                                  redis_server, unique):
    """Heart-beat silence counts only while the gate waits for the client, as a timeout on each
    read would: while the gate handles a request (here a SUBSCRIBE whose group join waits for a
    hung Redis, longer than the silence limit), the client's beats sit unread in the socket and
    it is not dropped (found in review of issue 12: the serve loop's clock counted that time)."""
    room = {"target": "beat", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, heartbeat_ms=200)
    raw = RawStomp(gate.port, timeout=15)
    raw.send("CONNECT", **{"accept-version": "1.2", "token": unique, "heart-beat": "200,0"})
    assert raw.recv().command == "CONNECTED"
    silence_limit = 2 * 0.2 + 1  # broker.heartbeat.silence_limit
    redis_server.freeze()
    try:
        raw.send("SUBSCRIBE", id="s1", destination="/room/" + json.dumps(room), receipt="r1")
        stop = time.monotonic() + 2 * silence_limit  # well past the limit, within the join's 5 s
        while time.monotonic() < stop:
            raw.sock.sendall(b"\n")  # our promised beats
            time.sleep(0.1)
    finally:
        redis_server.thaw()
    frame = raw.recv()
    assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "r1"), frame
    raw.send("DISCONNECT", receipt="bye")
    assert raw.recv().command == "RECEIPT"


# --------------------------------------------------------------------------- Communication Broker


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_communication_broker_framing(big_endian, pair, unique):
    gate, _web = pair
    a1, a2, sup = (f"agent1{unique}", f"agent2{unique}", f"sup{unique}")
    c1 = CBClient(gate.port, big_endian=big_endian)
    f = c1.connect(a1, "ak")
    assert f.command == "CONNECTED"
    assert f.headers["login"] == a1 and f.headers["destination"] == f"/agent/{a1}"
    assert f.headers["profile-code"] == "1" and f.headers["profile-desc"] == "agent"
    assert f.headers["session-id"] and f.headers["connection-id"] and f.headers["version"] == "1.2"
    c2 = CBClient(gate.port, big_endian=not big_endian)
    assert c2.connect(a2, "ak").command == "CONNECTED"
    s = CBClient(gate.port, big_endian=big_endian)
    f = s.connect(sup, "sk")
    assert (f.headers["profile-code"], f.headers["profile-desc"]) == ("2", "super_agent")
    s.send("SUBSCRIBE", {"destination": f"/agent/{a2}.*", "destination-type": "1",
                         "transaction": "w1"})
    assert s.recv().headers == {"transaction": "w1", "error-desc": "OK"}

    text = "hello agent2 — exact text, not JSON {"
    c1.send("SEND", {"destination": f"/agent/{a2}", "transaction": "t1", "session-id": "x",
                     "origin": a1, "content-length": str(len(text)),
                     "content-type": "text/plain"}, text)
    ack = c1.recv()
    assert ack.command == "ACK" and ack.headers == {"transaction": "t1", "error-desc": "OK"}
    msg = c2.recv()
    assert msg.command == "MESSAGE"
    assert msg.headers["origin"] == a1 and msg.headers["destination"] == f"/agent/{a2}"
    assert msg.headers["transaction"] and msg.headers["content-type"]
    assert int(msg.headers["content-length"]) == len(text.encode())
    assert msg.body.decode() == text
    copy = s.recv()
    assert copy.command == "MESSAGE" and copy.body.decode() == text
    assert copy.headers["origin"] == a1 and copy.headers["destination"] == f"/agent/{a2}"

    # errors keep the connection open: ACK with the error text
    c1.send("SEND", {"destination": f"/agent/nobody{unique}", "transaction": "t2"}, "x")
    assert c1.recv().headers == {"transaction": "t2", "error-desc": "destination-not-found"}
    c1.send("SUBSCRIBE", {"destination": "/room/{\"x\":\"1\"}", "transaction": "t3"})
    assert c1.recv().headers == {"transaction": "t3", "error-desc": "room-not-found"}
    # UNSUBSCRIBE without id drops every subscription: the super agent gets no more copies
    s.send("UNSUBSCRIBE", {"transaction": "u1"})
    assert s.recv().headers == {"transaction": "u1", "error-desc": "OK"}
    c1.send("SEND", {"destination": f"/agent/{a2}", "transaction": "t4"}, "second")
    assert c1.recv().headers["error-desc"] == "OK"
    assert c2.recv().body == b"second"

    for client in (c1, c2, s):
        client.send("DISCONNECT", {"receipt-id": "bye-42"})
        r = client.recv()
        assert r.command == "RECEIPT" and r.headers["receipt-id"] == "bye-42"
        assert client.closed()
    # the super agent's watch ended with its connection; nothing else was queued for it
    s.close()


@pytest.mark.parametrize("login, passcode, app_key, message", [
    ("a", "ak", "wrong", "Invalid Application Secret Key."),
    ("a", "nope", "app-secret", "Invalid Profile/Passcode."),
])
def test_communication_broker_bad_keys(login, passcode, app_key, message, pair):
    gate, _ = pair
    c = CBClient(gate.port)
    f = c.connect(login, passcode, app_key)
    assert f.command == "ERROR" and f.headers["message"] == message
    assert c.closed()


def test_communication_broker_receives_triggers(pair, unique):
    gate, web = pair
    svc = CBClient(gate.port, big_endian=True)
    assert svc.connect(f"svc{unique}", "vk").command == "CONNECTED"
    room = {"target": "ops", "id": unique}
    # a service may publish anywhere, but may subscribe only to its API rooms + watches
    svc.send("SUBSCRIBE", {"destination": "/room/" + json.dumps(room), "id": "r",
                           "transaction": "1"})
    assert svc.recv().headers["error-desc"] == "room-not-found"
    agent = CBClient(gate.port)
    assert agent.connect(f"ag{unique}", "ak").command == "CONNECTED"
    svc.send("SUBSCRIBE", {"destination": f"/agent/ag{unique}", "id": "w", "transaction": "2"})
    assert svc.recv().headers["error-desc"] == "OK"
    svc.send("SEND", {"destination": "/room/" + json.dumps(room), "transaction": "3"}, "{\"n\":1}")
    assert svc.recv().headers["error-desc"] == "OK"


# --------------------------------------------------------------------------- JSON lines


def test_json_lines_session(pair, auth_api, unique):
    gate, web = pair
    room = {"target": "jl", "id": unique}
    auth_api.allow(f"j-{unique}", {"allowed_rooms": [room], "login_id": f"jl{unique}",
                                   "profile": "service"})
    j = JsonLines(gate.port)
    j.send({"type": "connect", "token": f"j-{unique}"})
    welcome = j.recv()
    assert welcome["type"] == "welcome" and welcome["destination"] == f"/service/jl{unique}"
    assert welcome["allowed_rooms"][0] == room
    j.send({"type": "subscribe", "room": room, "requestId": 1})
    assert j.recv() == {"code": "success", "requestId": 1}
    j.sock.sendall(b"\n")  # keep-alive lines are ignored
    j.send({"type": "ping", "requestId": "p"})
    assert j.recv() == {"type": "pong", "requestId": "p"}
    assert web.trigger([room], [1, "two"]).status_code == 202
    frame = j.recv()
    assert frame["type"] == "publish" and frame["requestId"] == 1 and frame["data"] == [1, "two"]
    # a CB agent on the same gate receives what a JSON client of its realm (static keys)
    # sends; the auth API's clients are another realm, where no such agent exists (issue 11)
    agent = CBClient(gate.port)
    assert agent.connect(f"ag{unique}", "ak").command == "CONNECTED"
    j.send({"type": "send", "to": f"/agent/ag{unique}", "data": "plain text", "requestId": 2})
    reply = j.recv()
    assert (reply["code"], reply["message"]) == ("error", "destination-not-found"), reply
    k = JsonLines(gate.port)
    k.send({"type": "connect", "app_key": "app-secret", "login_id": f"jk{unique}",
            "profile_key": "vk"})
    assert k.recv()["type"] == "welcome"
    k.send({"type": "send", "to": f"/agent/ag{unique}", "data": "plain text", "requestId": 2})
    assert k.recv()["code"] == "success"
    k.close()
    assert agent.recv().body == b"plain text"
    j.sock.sendall(b"not json\n")
    assert j.recv() == {"code": "error", "message": "non-json-message", "type": "error"}
    j.close()


def test_json_lines_refusal(pair):
    gate, _ = pair
    j = JsonLines(gate.port)
    j.send({"type": "connect", "token": "unknown"})
    assert j.recv() == {"type": "refused", "is_authorized": False, "reason": "refused"}
    j2 = JsonLines(gate.port)
    j2.send({"type": "subscribe"})
    assert j2.recv()["type"] == "refused"


def test_json_lines_static_keys(pair, unique):
    gate, _ = pair
    j = JsonLines(gate.port)
    j.send({"type": "connect", "app_key": "app-secret", "login_id": f"x{unique}",
            "profile_key": "dk"})
    w = j.recv()
    assert (w["type"], w["profile"]) == ("welcome", "admin")
    j.send({"type": "admin", "action": "connections", "requestId": 1})
    r = j.recv()
    assert any(c["login_id"] == f"x{unique}" and c["transport"] == "tcp"
               for c in r["connections"])


# --------------------------------------------------------------------------- malformed input


def cb_frame(text: bytes, big: bool = False) -> bytes:
    return (b"\x01" if big else b"\x00") + struct.pack(">I" if big else "<I", len(text)) + text


STANDARD_MALFORMED = [
    ("truncated", b"SEND\ndestination:/agent/x\ncontent-length:50\n\nshort\x00" + b"y" * 60),
    ("bad escape", b"SEND\ndestination:/agent/x\\t\n\nbody\x00"),
    ("missing NUL", b"SEND\ndestination:/agent/x\ncontent-length:2\n\nabcdef\x00"),
    ("binary junk", b"\xff\xfe\x00\x81garbage\x00"),
    ("header without colon", b"SEND\ndestination /agent/x\n\nbody\x00"),
    ("unknown command", b"FROB\n\n\x00"),
    ("giant frame", b"SEND\ndestination:/agent/x\ncontent-length:999999999\n\n"),
    ("giant headers", b"SEND\n" + b"x:" + b"y" * 70000 + b"\n\n\x00"),
]

CB_MALFORMED = [
    ("giant length prefix", b"\x00" + struct.pack("<I", 0xFFFFFFF0) + b"SEND\n"),
    ("giant length prefix big-endian", b"\x01" + struct.pack(">I", 0x7FFFFFFF) + b"SEND\n"),
    ("header without colon", cb_frame(b"SEND\ndestination /agent/x\n\nbody")),
    ("binary junk", cb_frame(b"\xff\xfe\xfd\x00junk")),
    ("unknown command", cb_frame(b"FROB\nx:y\n\n")),
]


@pytest.mark.parametrize("name, data", STANDARD_MALFORMED, ids=[c[0] for c in STANDARD_MALFORMED])
def test_malformed_standard_frames(name, data, broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"m{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    bad = RawStomp(gate.port)
    assert bad.connect(unique).command == "CONNECTED"
    bad.sock.sendall(data)
    err = bad.recv()
    assert err.command == "ERROR" and err.headers["message"] == "malformed-frame", err
    assert bad.closed()
    # the gate still serves others
    good = RawStomp(gate.port)
    assert good.connect(unique).command == "CONNECTED"
    good.send("DISCONNECT", receipt="r")
    assert good.recv().headers["receipt-id"] == "r"


@pytest.mark.parametrize("name, data", CB_MALFORMED, ids=[c[0] for c in CB_MALFORMED])
def test_malformed_cb_frames(name, data, pair, unique):
    gate, _ = pair
    bad = CBClient(gate.port, big_endian=False)
    assert bad.connect(f"m{unique}", "ak").command == "CONNECTED"
    bad.send_raw(data)
    err = bad.recv()
    assert err.command == "ERROR" and err.headers["message"] == "malformed-frame", err
    assert bad.closed()
    good = CBClient(gate.port, big_endian=True)
    assert good.connect(f"g{unique}", "ak").command == "CONNECTED"


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01junk", b"\x7f"])
def test_unknown_framing_is_refused(first, broker_factory, auth_api):
    gate = start_gate(broker_factory, auth_api=auth_api)
    s = socket.create_connection(("127.0.0.1", gate.port), timeout=5)
    s.sendall(first)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data.startswith(b"ERROR\n") and b"message:malformed-frame" in data


def test_frame_before_connect_is_refused(broker_factory, auth_api):
    gate = start_gate(broker_factory, auth_api=auth_api)
    raw = RawStomp(gate.port)
    raw.send("SEND", "x", destination="/agent/x")
    f = raw.recv()
    assert f.command == "ERROR" and f.headers["message"] == "not-connected"
    assert raw.closed()


# --------------------------------------------------------------------------- slow readers


def test_slow_reader_is_dropped_and_memory_stays_bounded(broker_factory, auth_api, redis_server,
                                                        unique):
    room = {"target": "flood", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "login_id": f"slow{unique}"})
    auth_api.allow(f"ok{unique}", {"allowed_rooms": [room], "login_id": f"ok{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server,
                      BROKER_MAX_OUTBOX_BYTES=1_048_576)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")

    slow = RawStomp(gate.port, rcvbuf=4096)
    assert slow.connect(unique).command == "CONNECTED"
    slow.send("SUBSCRIBE", id="s", destination="/room/" + json.dumps(room), receipt="r")
    assert slow.recv().command == "RECEIPT"
    # warm up the code paths (the client still reads) before measuring
    assert web.trigger([room], "warm").status_code == 202
    assert slow.recv().body == b'"warm"'
    time.sleep(0.5)  # a quiet moment before the RSS baseline (a measurement, no server event)
    before = rss_kib(gate.pid)
    assert "closing as slow" not in gate.log()
    payload = "x" * 500_000
    with httpx.Client(trust_env=False) as http:
        for _ in range(100):  # 50 MB for a client that now reads nothing
            r = http.post(web.base_url + "/trigger", timeout=10,
                          headers={"Authorization": "Bearer test-token"},
                          json={"rooms": [room], "data": payload})
            assert r.status_code == 202
    # the gate closes it as slow (the outbox went over 1 MiB) ...
    gate.wait_for_log("closing as slow", timeout=3)
    after = rss_kib(gate.pid)
    growth = after - before
    print(f"\ngate VmRSS before {before} KiB, after 50 MB sent to a slow reader {after} KiB "
          f"(growth {growth} KiB)")
    assert "closing as slow" in gate.log()
    assert growth < 40_000, f"RSS grew by {growth} KiB"
    received = 0
    slow.sock.settimeout(5)
    try:
        while chunk := slow.sock.recv(1 << 20):
            received += len(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    assert received < 10_000_000  # far less than was sent: it was cut off
    # ... and keeps serving others
    conn, listener = stomp_client(gate.port, headers={"token": f"ok{unique}"})
    listener.next("connected")
    conn.subscribe("/room/" + json.dumps(room), id="s", receipt="r")
    listener.receipt("r")
    assert web.trigger([room], "after").status_code == 202
    assert listener.next("message").body == '"after"'
    conn.disconnect()



def test_kicked_stomp_client_gets_an_error_frame(pair, auth_api, unique):
    gate, _ = pair
    auth_api.allow(unique, {"login_id": f"k{unique}"})
    victim = RawStomp(gate.port)
    assert victim.connect(unique).command == "CONNECTED"
    admin = JsonLines(gate.port)
    admin.send({"type": "connect", "app_key": "app-secret", "login_id": f"adm{unique}",
                "profile_key": "dk"})
    assert admin.recv()["type"] == "welcome"
    admin.send({"type": "admin", "action": "kick", "login_id": f"k{unique}", "requestId": 1})
    assert admin.recv()["code"] == "success"
    f = victim.recv()
    assert f.command == "ERROR" and f.headers["message"] == "kicked"
    assert victim.closed()


def test_json_line_too_big_closes_with_1009(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"b{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, BROKER_MAX_MESSAGE_BYTES=1000)
    j = JsonLines(gate.port)
    j.send({"type": "connect", "token": unique})
    assert j.recv()["type"] == "welcome"
    j.send({"type": "ping", "pad": "x" * 2000})
    assert j.recv() == {"type": "close", "code": 1009, "reason": "message too big"}


def test_sigterm_closes_connections_with_going_away(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"g{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    client = RawStomp(gate.port)
    assert client.connect(unique).command == "CONNECTED"
    j = JsonLines(gate.port)
    j.send({"type": "connect", "token": unique})
    assert j.recv()["type"] == "welcome"
    gate.terminate()
    f = client.recv()
    assert f.command == "ERROR" and f.headers["message"] == "going-away"
    assert j.recv() == {"type": "close", "code": 1001, "reason": "going-away"}
    assert gate.wait(15) == 0


def test_over_capacity_is_refused(broker_factory, auth_api, unique):
    auth_api.allow(unique, {"login_id": f"c{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, BROKER_MAX_CONNECTIONS=1)
    first = RawStomp(gate.port)
    assert first.connect(unique).command == "CONNECTED"
    second = RawStomp(gate.port)
    f = second.connect(unique)
    assert f.command == "ERROR" and f.headers["message"] == "over-capacity"
    assert second.closed()
    first.send("DISCONNECT", receipt="r")
    assert first.recv().command == "RECEIPT"
    assert first.closed()
    third = RawStomp(gate.port)  # the slot was released
    assert third.connect(unique).command == "CONNECTED"



async def test_stomp_send_to_a_room_reaches_websocket_and_stomp_subscribers(
        broker_factory, auth_api, redis_server, unique):
    """SEND /room/<json> is a publish: a service may publish anywhere, the frame reaches a
    WebSocket subscriber on another process and a STOMP subscriber on the gate; an agent
    without publish_rooms is refused with an ERROR."""
    room = {"target": "news", "id": unique}
    auth_api.allow(f"svc-{unique}", {"login_id": f"billing{unique}", "profile": "service"})
    auth_api.allow(f"sub-{unique}", {"allowed_rooms": [room], "login_id": f"ann{unique}"})
    auth_api.allow(f"agt-{unique}", {"login_id": f"joe{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")
    wait = asyncio.to_thread

    ws, _ = await ws_open(web.ws_url, token=f"sub-{unique}")
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "w"})
    assert await recv_json(ws) == {"code": "success"}
    reader, r = await wait(stomp_client, gate.port, headers={"token": f"sub-{unique}"})
    await wait(r.next, "connected")
    reader.subscribe("/room/" + json.dumps(room), id="s", receipt="sub")
    await wait(r.receipt, "sub")

    service, s = await wait(stomp_client, gate.port, headers={"token": f"svc-{unique}"})
    await wait(s.next, "connected")
    service.send("/room/" + json.dumps(room), json.dumps({"n": 1}),
                 content_type="application/json", receipt="pub")
    await wait(s.receipt, "pub")
    assert json.loads((await wait(r.next, "message")).body) == {"n": 1}
    assert await recv_json(ws) == {"type": "publish", "requestId": "w", "data": {"n": 1}}

    agent, a = await wait(stomp_client, gate.port, headers={"token": f"agt-{unique}"})
    await wait(a.next, "connected")
    agent.send("/room/" + json.dumps(room), "x", receipt="nope")
    assert (await wait(a.next, "error")).headers["message"] == "room-not-allowed"
    await ws.close()
    await wait(service.disconnect)
    await wait(reader.disconnect)
