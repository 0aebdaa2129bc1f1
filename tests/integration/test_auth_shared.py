"""Identical concurrent auth requests share one upstream request (BROKER_AUTH_SHARE_REQUESTS,
docs/operations.md "The auth API").

Connects whose requests to the auth API would be the same bytes (the same forwarded headers,
the client's address included) while one of them is in flight wait for that request instead of
sending their own. Each still gets its own answer handling: its own refusal, its own
connection's deadline, its own outcome counted. Different credentials, or the same from another
address, never share. A real auth API (the AuthAPI stub, which counts requests) and a real broker.
"""

from __future__ import annotations

import asyncio
import re

from tests.harness import close_code, recv_json, ws_connect, ws_open

NEWS = {"target": "news"}
OK = {"login_id": "ann", "allowed_rooms": [NEWS]}
WELCOME = {"is_authorized": True, "allowed_rooms": [NEWS]}
REFUSED = {"is_authorized": False}


def metric(broker, name: str, labels: str = "") -> int:
    m = re.search(rf"^{re.escape(name + labels)} (\d+)", broker.get("/metrics").text, re.M)
    return int(m.group(1)) if m else 0


async def connect_all(url: str, n: int, **kw):
    """``n`` WebSockets opened at once (each handshake done; the auth API asked or waiting)."""
    return await asyncio.gather(*(ws_connect(url, user_agent_header=None, **kw)
                                  for _ in range(n)))


async def test_identical_connects_share_one_request_while_it_is_in_flight(broker_factory,
                                                                          auth_api):
    auth_api.allow(token="same", body=OK)
    auth_api.deny("no")
    broker = broker_factory(auth_api=auth_api)
    auth_api.pause()
    try:
        sockets = await connect_all(broker.ws_url, 20, token="same")
        refused = await connect_all(broker.ws_url, 10, token="no")
        await auth_api.await_requests(2)
        await asyncio.sleep(0.5)  # time for any other request to arrive
        assert (auth_api.count, auth_api.in_flight) == (2, 2)
    finally:
        auth_api.resume()
    for ws in sockets:  # every one welcomed, with the one answer
        assert await recv_json(ws) == WELCOME
    for ws in refused:  # every one refused by itself
        assert await recv_json(ws) == REFUSED
        assert (await close_code(ws))[0] == 1000
    assert auth_api.count == 2
    assert metric(broker, "combroker_auth_shared_total") == 19 + 9
    assert metric(broker, "combroker_auth_total", '{outcome="authorized"}') == 20
    assert metric(broker, "combroker_auth_total", '{outcome="refused"}') == 10
    await asyncio.gather(*(ws.close() for ws in sockets))

    # Once answered, nothing is kept: the next connect asks again.
    ws, welcome = await ws_open(broker.ws_url, token="same", user_agent_header=None)
    assert welcome == WELCOME
    await ws.close()
    assert auth_api.count == 3


async def test_different_credentials_or_addresses_never_share(broker_factory, auth_api):
    tokens = [f"t{i}" for i in range(5)]
    for token in tokens:
        auth_api.allow(token=token, body=OK)
    broker = broker_factory(auth_api=auth_api)
    auth_api.pause()
    try:
        # the same token from two client addresses (X-Real-IP differs), and five tokens
        sockets = [*await connect_all(broker.ws_url, 2, token="t0",
                                      local_addr=("127.0.0.2", 0)),
                   *[ws for token in tokens
                     for ws in await connect_all(broker.ws_url, 2, token=token)]]
        await auth_api.await_requests(6)
        await asyncio.sleep(0.5)
        assert auth_api.count == 6
    finally:
        auth_api.resume()
    for ws in sockets:
        assert await recv_json(ws) == WELCOME
    assert sorted((r.authorization, r.headers["x-real-ip"]) for r in auth_api.requests) == [
        ("Token t0", "127.0.0.1"), ("Token t0", "127.0.0.2"),
        *((f"Token {t}", "127.0.0.1") for t in tokens[1:])]
    assert metric(broker, "combroker_auth_shared_total") == 6
    await asyncio.gather(*(ws.close() for ws in sockets))


async def test_each_sharer_keeps_its_own_deadline(broker_factory, auth_api):
    """The first connect's BROKER_AUTH_DEADLINE passes before the answer: it is refused with
    4408 ``auth-timeout``; the request goes on for the connect that joined it later, whose
    deadline is later: it is welcomed with the one answer."""
    auth_api.allow(token="slow", body=OK, delay=2.6)
    broker = broker_factory(auth_api=auth_api, BROKER_AUTH_DEADLINE=2, BROKER_AUTH_TIMEOUT=10)
    first = await ws_connect(broker.ws_url, token="slow", user_agent_header=None)
    await auth_api.await_requests(1)
    await asyncio.sleep(1.0)
    second = await ws_connect(broker.ws_url, token="slow", user_agent_header=None)
    assert await close_code(first, timeout=5) == (4408, "auth-timeout")
    assert await recv_json(second, timeout=5) == WELCOME
    assert auth_api.count == 1
    assert metric(broker, "combroker_auth_shared_total") == 1
    assert metric(broker, "combroker_auth_total", '{outcome="timeout"}') == 1
    assert metric(broker, "combroker_auth_total", '{outcome="authorized"}') == 1
    await second.close()


async def test_sharing_can_be_turned_off(broker_factory, auth_api):
    auth_api.allow(token="same", body=OK)
    broker = broker_factory(auth_api=auth_api, BROKER_AUTH_SHARE_REQUESTS="false")
    auth_api.pause()
    try:
        sockets = await connect_all(broker.ws_url, 5, token="same")
        await auth_api.await_requests(5)
    finally:
        auth_api.resume()
    for ws in sockets:
        assert await recv_json(ws) == WELCOME
    assert auth_api.count == 5
    assert metric(broker, "combroker_auth_shared_total") == 0
    await asyncio.gather(*(ws.close() for ws in sockets))
