"""One total deadline from accept to authenticated, on every transport (issue 11, item 5).

Before: a WebSocket offering a STOMP subprotocol that never sent CONNECT stayed open forever and
held a place of BROKER_MAX_CONNECTIONS; on the TCP gate one byte every few seconds kept a socket
in the CONNECT wait forever (the 30 s bound applied to each read), and the gate admitted a
connection only once its CONNECT had arrived. Now BROKER_AUTH_DEADLINE (broker.session)
closes a connection that is not authenticated in time: WebSocket close 4408 ``auth-timeout``,
on TCP a STOMP ``ERROR`` / JSON-lines close line, then the close; its place is freed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus

from tests.harness import SERVERS, close_code, recv_text, ws_connect, ws_open
from tests.integration.gatehelpers import JsonLines, RawStomp, start_gate

DEADLINE = 1.5


@pytest.fixture
def api(auth_api):
    auth_api.allow(token="alice", body={"login_id": "alice", "allowed_rooms": []})
    return auth_api


@pytest.mark.parametrize("server", SERVERS)
async def test_websocket_without_connect_is_closed_at_the_deadline(broker_factory, api, server):
    broker = broker_factory(auth_api=api, server=server, BROKER_MAX_CONNECTIONS=2,
                            BROKER_AUTH_DEADLINE=DEADLINE)
    opened = time.monotonic()
    idle = [await ws_connect(broker.ws_url, subprotocols=["v12.stomp"]) for _ in range(2)]
    # the idle sockets hold both places: alice is refused before the deadline
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(broker.ws_url, token="alice")
    assert refused.value.response.status_code == 503
    for ws in idle:
        assert await close_code(ws, timeout=DEADLINE + 5) == (4408, "auth-timeout")
    assert time.monotonic() - opened >= DEADLINE - 0.1  # not before it
    # their places are free: alice connects (the close is seen a moment before the release)
    for _ in range(50):
        try:
            ws, welcome = await ws_open(broker.ws_url, token="alice")
            break
        except InvalidStatus:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the places of the closed connections were never freed")
    assert welcome["is_authorized"] is True
    # an authenticated connection is not subject to the deadline
    await asyncio.sleep(DEADLINE + 0.5)
    await ws.send("ping")
    assert await recv_text(ws) == "pong"
    await ws.close()
    stomp = await ws_connect(broker.ws_url, subprotocols=["v12.stomp"])
    await stomp.send("CONNECT\naccept-version:1.2\nhost:x\ntoken:alice\n\n\x00")
    assert (await recv_text(stomp)).startswith("CONNECTED\n")
    await asyncio.sleep(DEADLINE + 0.5)
    await stomp.send("DISCONNECT\nreceipt:r\n\n\x00")
    assert (await recv_text(stomp)).startswith("RECEIPT\n")
    await stomp.close()


def _trickle(sock: socket.socket, data: bytes, interval: float, until: float) -> bytes:
    """Send ``data`` a byte every ``interval`` seconds (far shorter than any per-read timeout)
    until the gate closes the socket; return what the gate sent."""
    got = b""
    sock.settimeout(interval)
    for byte in data:
        if time.monotonic() > until:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            return got
        got += chunk
    sock.settimeout(max(until - time.monotonic(), 0.1))
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    return got


def test_tcp_trickler_is_closed_at_the_total_deadline(broker_factory, api):
    gate = start_gate(broker_factory, auth_api=api, BROKER_AUTH_DEADLINE=DEADLINE)
    connect = b"CONNECT\naccept-version:1.2\nhost:x\ntoken:alice\n" + b"x-pad:" + b"y" * 200
    for framing, data in (("stomp", connect), ("json lines", b'{"type":"connect",' + b" " * 200)):
        sock = socket.create_connection(("127.0.0.1", gate.port))
        opened = time.monotonic()
        got = _trickle(sock, data, 0.2, until=opened + DEADLINE + 5)
        took = time.monotonic() - opened
        sock.close()
        assert DEADLINE - 0.1 <= took < DEADLINE + 3, (framing, took, got)
        if framing == "stomp":
            assert got.startswith(b"ERROR\n") and b"message:auth-timeout" in got, got
        else:
            assert json.loads(got) == {"type": "close", "code": 4408, "reason": "auth-timeout"}
    # a client that says nothing at all is closed as well
    silent = socket.create_connection(("127.0.0.1", gate.port))
    silent.settimeout(DEADLINE + 5)
    assert silent.recv(100) == b""
    silent.close()
    # and a client that connects in time is served past it
    client = RawStomp(gate.port)
    assert client.connect("alice").command == "CONNECTED"
    time.sleep(DEADLINE + 0.5)
    client.send("DISCONNECT", receipt="r")
    assert client.recv().command == "RECEIPT"


def test_gate_admission_counts_unauthenticated_sockets(broker_factory, api):
    gate = start_gate(broker_factory, auth_api=api, BROKER_MAX_CONNECTIONS=1,
                      BROKER_AUTH_DEADLINE=DEADLINE)
    # A full session first: once the gate has closed it, its place (and that of the harness's
    # port probe, a connection too) is free again.
    warm = RawStomp(gate.port)
    assert warm.connect("alice").command == "CONNECTED"
    warm.send("DISCONNECT", receipt="r")
    assert warm.recv().command == "RECEIPT"
    assert warm.closed()
    # holds the one place: the gate admits in the order it accepts, so before ``second``
    idle = socket.create_connection(("127.0.0.1", gate.port))
    second = RawStomp(gate.port)
    asked = api.count
    f = second.connect("alice")
    assert f.command == "ERROR" and f.headers["message"] == "over-capacity", f
    assert second.closed()
    assert api.count == asked  # refused before the auth API was asked
    idle.settimeout(DEADLINE + 5)
    assert idle.recv(100) == b""  # closed at the deadline, its place freed
    idle.close()
    third = JsonLines(gate.port)
    third.send({"type": "connect", "token": "alice"})
    assert third.recv()["type"] == "welcome"
    third.close()


async def test_an_auth_api_slower_than_the_deadline_is_an_auth_timeout(broker_factory, auth_api):
    """The deadline also bounds the wait for the auth API's answer (found in review): the client
    is closed with 4408 ``auth-timeout`` as when it sends nothing (before: 4003), and the
    process counts it as the refusal cause ``auth-timeout`` and the auth outcome ``timeout``
    (before: the cause ``refused`` and no outcome at all), never as an outage."""
    auth_api.allow(token="slow", body={"login_id": "slow", "allowed_rooms": []}, delay=3.0)
    broker = broker_factory(auth_api=auth_api, BROKER_AUTH_DEADLINE=DEADLINE,
                            BROKER_AUTH_TIMEOUT=10)
    ws = await ws_connect(broker.ws_url, token="slow", subprotocols=["combroker.v1"])
    assert json.loads(await recv_text(ws, timeout=DEADLINE + 5)) == {
        "type": "refused", "is_authorized": False, "reason": "auth-timeout"}
    assert await close_code(ws, timeout=5) == (4408, "auth-timeout")
    metrics = (await asyncio.to_thread(broker.get, "/metrics")).text
    assert 'combroker_auth_total{outcome="timeout"} 1' in metrics, metrics
    assert 'combroker_auth_total{outcome="unavailable"}' not in metrics, metrics
    assert 'cause="auth-timeout"} 1' in metrics, metrics
