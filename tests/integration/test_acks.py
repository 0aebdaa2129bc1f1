"""Acknowledged direct messages (issue 8): ``send`` with ``"ack": true`` is stored until every
connection of the recipient that received it confirms, or until BROKER_ACK_TTL; a recipient
that connects later gets it then, again after a reconnect if it did not confirm; the sender
hears ``confirmed``. Plain ``send`` stays fire-and-forget.

The sender and the recipient are on two processes sharing one Redis.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import expect_nothing, recv_json, recv_until, send_json, ws_open

RICH = ["combroker.v1"]


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


@pytest.fixture
def pair(broker_factory, auth_api, redis_server, unique):
    auth_api.allow(token="billing", body={"login_id": "billing", "profile": "service"})
    auth_api.allow(token="bob", body={"login_id": f"bob-{unique}"})

    def make(**env):
        env = {"BROKER_KEY_PREFIX": f"acks-{unique}", **env}
        return (broker_factory(auth_api=auth_api, redis=redis_server, **env),
                broker_factory(auth_api=auth_api, redis=redis_server, **env))
    return make


async def test_offline_agent_redelivery_confirm(pair, unique):
    a, b = pair()
    bob = f"/agent/bob-{unique}"
    sender, _ = await ws_open(a.ws_url, token="billing", subprotocols=RICH)

    # plain send to an offline client: fire-and-forget, refused
    reply = await ask(sender, {"type": "send", "to": bob, "data": "x", "requestId": 1})
    assert reply["message"] == "destination-not-found"
    # acknowledged: stored for later
    reply = await ask(sender, {"type": "send", "to": bob, "data": {"invoice": 7},
                               "ack": True, "requestId": 2})
    assert reply["code"] == "success" and reply["requestId"] == 2
    message_id = reply["id"]
    expected = {"type": "message", "from": "/service/billing", "to": bob,
                "data": {"invoice": 7}, "id": message_id, "ack": True}

    # the agent connects (on the other process): it gets it then
    ws, welcome = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    assert welcome["type"] == "welcome"
    assert await recv_json(ws) == expected
    await expect_nothing(ws)
    # not confirmed before a reconnect: delivered again
    await ws.close()
    await asyncio.sleep(0.3)
    ws, _ = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    assert await recv_json(ws) == expected
    # confirmed: the sender hears it, wherever it is
    assert await ask(ws, {"type": "confirm", "id": message_id, "requestId": "c"}) == {
        "code": "success", "requestId": "c"}
    assert await recv_json(sender) == {"type": "confirmed", "id": message_id, "to": bob}
    await ws.close()
    await asyncio.sleep(0.3)
    # and it stops
    ws, _ = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    await expect_nothing(ws, 0.5)
    # confirming again, or an unknown id, is harmless
    assert (await ask(ws, {"type": "confirm", "id": message_id}))["code"] == "success"
    assert (await ask(ws, {"type": "confirm", "id": "nope"}))["code"] == "success"
    assert (await ask(ws, {"type": "confirm", "id": 5}))["message"] == "invalid-message"
    assert (await ask(ws, {"type": "send", "to": bob, "data": 1, "ack": "yes"}))[
        "message"] == "invalid-message"
    await expect_nothing(sender)
    await ws.close()
    await sender.close()


async def test_every_connection_confirms_and_live_delivery(pair, unique):
    a, b = pair()
    bob = f"/agent/bob-{unique}"
    tab1, _ = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    tab2, _ = await ws_open(b.ws_url, token="bob")  # High-templar dialect confirms too
    sender, _ = await ws_open(b.ws_url, token="billing", subprotocols=RICH)
    reply = await ask(sender, {"type": "send", "to": bob, "data": "hi", "ack": True,
                               "requestId": 1})
    message_id = reply["id"]
    for tab in (tab1, tab2):
        got = await recv_json(tab)
        assert (got["id"], got["ack"], got["data"]) == (message_id, True, "hi")
    # one of two confirmed: not yet
    assert (await ask(tab1, {"type": "confirm", "id": message_id, "requestId": 1}))[
        "code"] == "success"
    await expect_nothing(sender)
    await send_json(tab2, {"type": "confirm", "id": message_id})
    assert await recv_json(tab2) == {"code": "success"}
    assert await recv_json(sender) == {"type": "confirmed", "id": message_id, "to": bob}

    # a connection that received it and left unconfirmed does not hold it up once another
    # connection confirmed: the message is done when nobody owes it any more
    reply = await ask(sender, {"type": "send", "to": bob, "data": "again", "ack": True,
                               "requestId": 2})
    second = reply["id"]
    for tab in (tab1, tab2):
        assert (await recv_json(tab))["id"] == second
    await ask(tab1, {"type": "confirm", "id": second})
    await tab2.close()
    assert await recv_until(sender, lambda f: f.get("type") == "confirmed", timeout=5) == {
        "type": "confirmed", "id": second, "to": bob}
    # the sender may be gone: the confirmation is simply not delivered
    third = (await ask(sender, {"type": "send", "to": bob, "data": 3, "ack": True,
                                "requestId": 3}))["id"]
    await sender.close()
    assert (await recv_json(tab1))["id"] == third
    assert (await ask(tab1, {"type": "confirm", "id": third}))["code"] == "success"
    await tab1.close()
    await asyncio.sleep(0.3)
    tab3, _ = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    await expect_nothing(tab3, 0.5)
    await tab3.close()


async def test_unconfirmed_message_expires(pair, unique):
    a, b = pair(BROKER_ACK_TTL=1.0)
    bob = f"/agent/bob-{unique}"
    sender, _ = await ws_open(a.ws_url, token="billing", subprotocols=RICH)
    assert (await ask(sender, {"type": "send", "to": bob, "data": 1, "ack": True}))[
        "code"] == "success"
    await asyncio.sleep(1.5)
    ws, _ = await ws_open(b.ws_url, token="bob", subprotocols=RICH)
    await expect_nothing(ws, 0.5)
    await ws.close()
    await sender.close()


async def test_python_client_acknowledged_messages(broker_factory, auth_api, redis_server,
                                                   unique):
    from tcpgate.client import Client
    from tests.integration.gatehelpers import start_gate

    auth_api.allow(token="billing", body={"login_id": "billing", "profile": "service"})
    auth_api.allow(token="bob", body={"login_id": f"bob-{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server,
                      BROKER_KEY_PREFIX=f"pyacks-{unique}")
    async with Client("127.0.0.1", gate.port, token="billing") as sender:
        message_id = await sender.send(f"/agent/bob-{unique}", {"n": 1}, ack=True)
        async with Client("127.0.0.1", gate.port, token="bob") as bob:
            m = await bob.receive(5)
            assert (m.kind, m.id, m.ack, m.data) == ("message", message_id, True, {"n": 1})
            await bob.confirm(m.id)
        done = await sender.receive(5)
        assert (done.kind, done.id, done.to) == ("confirmed", message_id, f"/agent/bob-{unique}")
