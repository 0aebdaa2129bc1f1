"""Limits (docs/operations.md "Limits"): each is a BROKER_* setting with a default and a named
error. Message size (1009), subscriptions per connection and the /trigger body (413) are pinned
in test_ws_protocol.py / test_trigger.py; here: the request rate of one connection (answered
``rate-limited``, then closed with 4029), connections per process (the handshake refused with
HTTP 503 before any auth request), and that every limit really is a setting.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import fields

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import (SERVERS, close_code, recv_json, recv_text, send_json, ws_connect,
                           ws_open)

NEWS = {"target": "news"}
RATE_LIMITED = {"code": "error", "message": "rate-limited"}


def metric(broker, name: str, labels: str = "") -> int:
    text = broker.get("/metrics").text
    m = re.search(rf"^{re.escape(name + labels)} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- settings


def test_every_limit_is_a_setting_with_a_default():
    from broker.conf import Settings

    defaults = {f.name: f.default for f in fields(Settings)}
    for name in ("BROKER_MAX_MESSAGE_BYTES", "BROKER_MAX_SUBSCRIPTIONS", "BROKER_RATE_LIMIT",
                 "BROKER_RATE_BURST", "BROKER_MAX_CONNECTIONS", "BROKER_MAX_TRIGGER_BYTES",
                 "BROKER_MAX_OUTBOX_BYTES", "BROKER_MAX_HEADER_BYTES", "BROKER_AUTH_TIMEOUT",
                 "BROKER_AUTH_MAX_IN_FLIGHT", "BROKER_SHUTDOWN_GRACE"):
        assert isinstance(defaults[name], (int, float)) and defaults[name] > 0, name
    # the burst lets a client subscribe its whole allowance at once (High-templar clients do)
    assert defaults["BROKER_RATE_BURST"] >= defaults["BROKER_MAX_SUBSCRIPTIONS"]


def test_tcp_gate_frame_and_header_sizes_are_settings(settings, monkeypatch):
    """The TCP gate bounds a frame by BROKER_MAX_MESSAGE_BYTES and its headers by
    BROKER_MAX_HEADER_BYTES (its parsers enforce them; test_tcpgate.py pins the errors)."""
    from broker.conf import conf
    from tcpgate.server import Gate

    monkeypatch.setenv("BROKER_MAX_MESSAGE_BYTES", "5000")
    monkeypatch.setenv("BROKER_MAX_HEADER_BYTES", "700")
    conf.cache_clear()
    try:
        gate = Gate()
        assert (gate.max_frame, gate.max_header) == (5000, 700)
    finally:
        conf.cache_clear()


# ---------------------------------------------------------------- request rate


async def test_rate_limit_answers_then_closes_with_4029(broker_factory, auth_api):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    broker = broker_factory(auth_api=auth_api, BROKER_RATE_LIMIT=1, BROKER_RATE_BURST=5)
    ws, _ = await ws_open(broker.ws_url, token="t")
    # the burst: 5 requests at once are served
    for _ in range(5):
        await ws.send("ping")
    assert [await recv_text(ws) for _ in range(5)] == ["pong"] * 5
    # over it: answered, not carried out (the subscription does not happen)
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": 1})
    assert await recv_json(ws) == RATE_LIMITED
    # the bucket refills at 1/s, debt first: after ~2 s a request is served again
    await asyncio.sleep(2.3)
    await send_json(ws, {"type": "subscribe", "room": NEWS, "requestId": 1})
    assert await recv_json(ws) == {"code": "success"}
    # a client that keeps sending while limited is closed
    for _ in range(12):
        await ws.send("ping")
    frames: list = []
    assert await close_code(ws, frames=frames) == (4029, "rate-limited")
    errors = [f for f in frames if f != "pong"]
    assert 1 <= len(errors) <= 5, frames  # at most BROKER_RATE_BURST answers while limited
    assert all(f == '{"code":"error","message":"rate-limited"}' for f in errors), errors
    assert metric(broker, "combroker_rate_limited_total") >= len(errors) + 2
    # others are not affected
    other, welcome = await ws_open(broker.ws_url, token="t")
    await other.send("ping")
    assert await recv_text(other) == "pong"
    await other.close()


async def test_rate_limit_rich_dialect_and_stomp(broker_factory, auth_api):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    broker = broker_factory(auth_api=auth_api, BROKER_RATE_LIMIT=0.5, BROKER_RATE_BURST=2)
    # rich dialect: the error echoes the requestId
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=["combroker.v1"])
    for rid in (1, 2, 3):
        await send_json(ws, {"type": "ping", "requestId": rid})
    assert [await recv_json(ws) for _ in range(3)] == [
        {"type": "pong", "requestId": 1}, {"type": "pong", "requestId": 2},
        {"type": "error", "code": "error", "message": "rate-limited", "requestId": 3}]
    await ws.close()
    # standard STOMP ends the connection on any ERROR: ERROR message:rate-limited, then 4029
    async with ws_connect(broker.ws_url, subprotocols=["v12.stomp"]) as stomp:
        await stomp.send("CONNECT\naccept-version:1.2\nhost:x\ntoken:t\n\n\x00")
        assert (await recv_text(stomp)).startswith("CONNECTED\n")
        for i in range(3):
            await stomp.send(f"SUBSCRIBE\nid:{i}\ndestination:/room/{{\"target\":\"news\"}}\n"
                             f"receipt:r{i}\n\n\x00")
        frames: list = []
        code = await close_code(stomp, frames=frames)
        assert code == (4029, "rate-limited"), frames
        assert frames[:2] == ["RECEIPT\nreceipt-id:r0\n\n\x00", "RECEIPT\nreceipt-id:r1\n\n\x00"]
        assert frames[2].startswith("ERROR\n") and "message:rate-limited" in frames[2]


async def test_no_rate_limit_when_zero(broker_factory, auth_api):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    broker = broker_factory(auth_api=auth_api, BROKER_RATE_LIMIT=0, BROKER_RATE_BURST=1)
    ws, _ = await ws_open(broker.ws_url, token="t")
    for _ in range(50):
        await ws.send("ping")
    assert [await recv_text(ws) for _ in range(50)] == ["pong"] * 50
    await ws.close()


# ---------------------------------------------------------------- connections per process


@pytest.mark.parametrize("server", SERVERS)
async def test_max_connections_refuses_the_handshake_with_503(broker_factory, auth_api, server):
    auth_api.allow(token="t", body={"allowed_rooms": [NEWS]})
    broker = broker_factory(auth_api=auth_api, server=server, BROKER_MAX_CONNECTIONS=3)
    # refused connections give their place back
    for _ in range(4):
        ws, refused = await ws_open(broker.ws_url, token="nobody")
        assert refused == {"is_authorized": False}
        assert (await close_code(ws))[0] == 1000
    held = [(await ws_open(broker.ws_url, token="t"))[0] for _ in range(3)]
    asked = auth_api.count
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(broker.ws_url, token="t")
    assert refused.value.response.status_code == 503
    response = refused.value.response  # the same answer from both servers
    assert response.reason_phrase == "Service Unavailable"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert bytes(response.body) == b"over-capacity"
    assert auth_api.count == asked  # refused before the auth API is asked
    # a closed connection frees its place
    await held.pop().close()
    for _ in range(50):
        try:
            ws, welcome = await ws_open(broker.ws_url, token="t")
            break
        except InvalidStatus:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the place of a closed connection was never freed")
    assert welcome["is_authorized"] is True
    held.append(ws)
    # the existing connections are served as usual
    for ws in held:
        await ws.send("ping")
        assert await recv_text(ws) == "pong"
    assert metric(broker, "combroker_connections_refused_by_cause_total",
                  '{cause="over-capacity"}') >= 1
    assert metric(broker, "combroker_connections_refused_by_cause_total",
                  '{cause="refused"}') == 4
    await asyncio.gather(*(ws.close() for ws in held))


# ---------------------------------------------------------------- HTTP bodies (issue 11, item 6)

HUGE = 200_000_000  # a declared body of 200 MB
TRIGGER_LIMIT = 100_000


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _request(port: int, path: str, headers: dict[str, str], body_parts) -> tuple[bytes, int]:
    """Send the head, then body parts until the server answers or closes; return (the
    response, body bytes sent). A server that waits for the whole body answers nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0
    sock.setblocking(False)
    response = b""
    try:
        for part in body_parts:
            try:
                response += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if response:
                break
            try:
                sock.settimeout(2)
                sock.sendall(part)
                sock.setblocking(False)
            except OSError:
                break
            sent += len(part)
        sock.settimeout(5)
        while True:  # the answer says "Connection: close": read it all
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    except (TimeoutError, OSError):
        pass
    finally:
        sock.close()
    return response, sent


def _status(response: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(m.group(1)) if m else None


def _declared(total: int, part: int = 65_536):
    """Parts of a body sent with Content-Length ``total``."""
    for _ in range(total // part):
        yield b"x" * part


def _chunked(total: int, part: int = 16_384):
    """Chunked transfer coding, never finished: the terminating chunk is not sent."""
    for _ in range(total // part):
        yield f"{part:x}\r\n".encode() + b"x" * part + b"\r\n"


@pytest.mark.parametrize("server", SERVERS)
def test_bodies_are_refused_before_they_are_read(broker_factory, server):
    broker = broker_factory(server=server, BROKER_MAX_TRIGGER_BYTES=TRIGGER_LIMIT)
    token = {"Authorization": f"Bearer {broker_factory.trigger_token}"}
    json_type = {"Content-Type": "application/json"}
    rss_before = _rss_kib(broker.pid)
    cases = [
        # no token: 401 from the head alone, whatever the body
        ("/trigger", {**json_type, "Content-Length": str(HUGE)}, _declared(HUGE), 401),
        ("/trigger", {**json_type, "Transfer-Encoding": "chunked"}, _chunked(HUGE), 401),
        # the right token, a declared length over BROKER_MAX_TRIGGER_BYTES: 413 from the head
        ("/trigger", {**token, **json_type, "Content-Length": str(HUGE)}, _declared(HUGE), 413),
        # chunked: 413 as soon as it passes the limit, long before it ends
        ("/trigger", {**token, **json_type, "Transfer-Encoding": "chunked"},
         _chunked(HUGE), 413),
        # every other route is capped (DATA_UPLOAD_MAX_MEMORY_SIZE, 64 KiB)
        ("/healthz", {"Content-Length": str(HUGE)}, _declared(HUGE), 413),
        ("/nowhere", {"Transfer-Encoding": "chunked"}, _chunked(HUGE), 413),
        ("/metrics", {"Content-Length": "70000"}, _declared(70_000, 10_000), 413),
    ]
    for path, headers, parts, expected in cases:
        response, sent = _request(broker.port, path, headers, parts)
        assert _status(response) == expected, (path, headers, sent, response[:300])
        assert sent < 20_000_000, (path, sent)  # the server stopped taking it early
        assert b'"error"' in response or expected == 413, response
    growth = (_rss_kib(broker.pid) - rss_before) / 1024
    assert growth < 15, f"RSS grew by {growth:.1f} MB"
    # what is within the limits is served as before
    ok = httpx.post(broker.base_url + "/trigger", headers=token, trust_env=False,
                    json={"rooms": [NEWS], "data": "x" * (TRIGGER_LIMIT - 100)})
    assert ok.status_code == 202, ok.text
    assert broker.get("/healthz").status_code == 200
