"""Resume tokens (issue 8, PROTOCOL §7): a client that reconnects within BROKER_RESUME_TTL, on
any process, with ``?resume=<token>`` gets its subscriptions back and, for history rooms, the
triggers it missed, in order, then live ones: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest

from tests.harness import expect_nothing, recv_json, recv_many, send_json, ws_open

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}
HISTORY = [{"room": CHAT_ANY, "size": 1000, "ttl": 60}]
BOB = {"login_id": "bob", "allowed_rooms": [CHAT_ANY, NEWS]}


def chat(customer: str) -> dict:
    return {"target": "chat", "customer": customer}


def with_resume(url: str, token: str) -> str:
    return f"{url}?{urllib.parse.urlencode({'resume': token})}"


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


async def post(broker, room: dict, data, history: bool = True) -> None:
    r = await broker.atrigger([room], None, body={"rooms": [room], "data": data,
                                                  "history": history})
    assert r.status_code == 202, r.text


@pytest.fixture
def cluster(broker_factory, auth_api, redis_server, unique):
    auth_api.allow(token="bob", body=BOB)
    auth_api.allow(token="bob-too", body=BOB)  # the same identity, other credentials
    auth_api.allow(token="eve", body={"login_id": "eve", "allowed_rooms": [CHAT_ANY, NEWS]})

    def make(**env):
        env = {"BROKER_HISTORY": HISTORY, "BROKER_KEY_PREFIX": f"resume-{unique}", **env}
        return (broker_factory(auth_api=auth_api, redis=redis_server, **env),
                broker_factory(auth_api=auth_api, redis=redis_server, **env))
    return make


async def test_ten_missed_triggers_come_back_on_the_other_process(cluster, unique):
    a, b = cluster()
    room = chat(unique)
    ws, welcome = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    token = welcome["resume_token"]
    assert isinstance(token, str) and len(token) >= 32
    assert (await ask(ws, {"type": "subscribe", "room": room, "requestId": "c"}))["offset"] == 0
    assert (await ask(ws, {"type": "subscribe", "room": NEWS, "requestId": 2})) == {
        "code": "success", "requestId": 2}
    for n in range(2):
        await post(a, room, f"before-{n}")
    before = await recv_many(ws, 2)
    last = before[-1]["offset"]
    await ws.close()
    await a.until_metric("combroker_connections", 0)  # the old process has saved the state

    for n in range(10):
        await post(a, room, n)
    await post(a, NEWS, "news is not recorded", history=False)

    ws, welcome = await ws_open(with_resume(b.ws_url, token), token="bob", subprotocols=RICH)
    assert welcome["resumed"] is True
    assert welcome["resume_token"] not in (None, token)  # a fresh token for the next time
    assert sorted(welcome["subscriptions"], key=lambda s: str(s["requestId"])) == [
        {"requestId": 2, "room": NEWS},
        {"requestId": "c", "room": room, "offset": last + 10, "recovered": True}]
    missed = await recv_many(ws, 10)
    assert [f["data"] for f in missed] == list(range(10))
    assert [f["offset"] for f in missed] == list(range(last + 1, last + 11))
    assert {f["requestId"] for f in missed} == {"c"}
    await expect_nothing(ws)
    # then live, on both restored subscriptions, once each
    await post(a, room, "live")
    await post(b, NEWS, "news", history=False)
    live = await recv_many(ws, 2)
    assert sorted((f["requestId"], f["data"]) for f in live if f["requestId"] == "c") == [
        ("c", "live")]
    assert [f["data"] for f in live if f["requestId"] == 2] == ["news"]
    assert next(f for f in live if f["requestId"] == "c")["offset"] == last + 11
    await expect_nothing(ws)
    # the restored subscriptions are real: unsubscribing works, the same id is in use
    assert (await ask(ws, {"type": "unsubscribe", "requestId": 2}))["code"] == "success"
    await ws.close()


async def test_resume_is_bound_to_the_identity_and_used_once(cluster, unique):
    a, b = cluster()
    room = chat(unique)
    ws, welcome = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    token = welcome["resume_token"]
    await ask(ws, {"type": "subscribe", "room": room, "requestId": 1})
    await ws.close()
    await a.until_metric("combroker_connections", 0)  # the state is saved: "missed" is after
    await post(a, room, "missed")

    # another login with a stolen token gets nothing, and does not spoil it
    eve, welcome = await ws_open(with_resume(b.ws_url, token), token="eve", subprotocols=RICH)
    assert welcome["resumed"] is False and "subscriptions" not in welcome
    await expect_nothing(eve)
    await eve.close()
    # a token that was never issued
    other, welcome = await ws_open(with_resume(b.ws_url, "x" * 32), token="bob",
                                   subprotocols=RICH)
    assert welcome["resumed"] is False
    await other.close()

    # the owner, authenticating again (any credentials of the same identity), gets it back
    ws, welcome = await ws_open(with_resume(b.ws_url, token), token="bob-too",
                                subprotocols=RICH)
    assert welcome["resumed"] is True
    assert (await recv_json(ws))["data"] == "missed"
    await ws.close()
    await b.until_metric("combroker_connections", 0)  # b has finished closing it
    # used: the second attempt finds nothing
    again, welcome = await ws_open(with_resume(a.ws_url, token), token="bob",
                                   subprotocols=RICH)
    assert welcome["resumed"] is False
    await expect_nothing(again)
    await again.close()
    # the High-templar dialect has no resume token and no new welcome field
    ht, welcome = await ws_open(a.ws_url, token="bob")
    assert welcome == {"is_authorized": True, "allowed_rooms": [CHAT_ANY, NEWS]}
    await ht.close()


async def test_expired_resume_token(cluster, unique):
    a, b = cluster(BROKER_RESUME_TTL=1.0)
    room = chat(unique)
    ws, welcome = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    await ask(ws, {"type": "subscribe", "room": room, "requestId": 1})
    await ws.close()
    await a.until_metric("combroker_connections", 0)  # the state is saved ...
    await asyncio.sleep(1.5)  # ... and then its BROKER_RESUME_TTL (1 s) passes, on purpose
    await post(a, room, "missed")
    ws, welcome = await ws_open(with_resume(b.ws_url, welcome["resume_token"]), token="bob",
                                subprotocols=RICH)
    assert welcome["resumed"] is False and "subscriptions" not in welcome
    await expect_nothing(ws)
    await ws.close()


async def test_resume_after_window_expired_reports_recovered_false(cluster, unique):
    a, b = cluster(BROKER_RESUME_TTL=30.0,
                   BROKER_HISTORY=[{"room": CHAT_ANY, "size": 100, "ttl": 0.5}])
    room = chat(unique)
    ws, welcome = await ws_open(a.ws_url, token="bob", subprotocols=RICH)
    await ask(ws, {"type": "subscribe", "room": room, "requestId": 1})
    await post(a, room, "seen")
    seen = (await recv_json(ws))["offset"]
    await ws.close()
    await a.until_metric("combroker_connections", 0)  # the state is saved: "lost" is after
    await post(a, room, "lost")
    await asyncio.sleep(1.0)  # on purpose: the history window (0.5 s) passes
    ws, welcome = await ws_open(with_resume(b.ws_url, welcome["resume_token"]), token="bob",
                                subprotocols=RICH)
    assert welcome["resumed"] is True
    assert welcome["subscriptions"] == [{"requestId": 1, "room": room, "offset": seen + 1,
                                         "recovered": False}]
    await expect_nothing(ws)  # nothing to replay; the subscription is live again
    await post(b, room, "live")
    frame = await recv_json(ws)
    assert (frame["data"], frame["offset"]) == ("live", seen + 2)
    await ws.close()


async def test_resume_on_one_in_memory_process(broker_factory, auth_api, unique):
    auth_api.allow(token="bob", body=BOB)
    broker = broker_factory(auth_api=auth_api, BROKER_HISTORY=HISTORY)
    room = chat(unique)
    ws, welcome = await ws_open(broker.ws_url, token="bob", subprotocols=RICH)
    await ask(ws, {"type": "subscribe", "room": room, "requestId": "r"})
    await ws.close()
    await broker.until_metric("combroker_connections", 0)  # the state is saved
    for n in range(10):
        await post(broker, room, n)
    ws, welcome = await ws_open(with_resume(broker.ws_url, welcome["resume_token"]),
                                token="bob", subprotocols=RICH)
    assert welcome["resumed"] is True
    assert [f["data"] for f in await recv_many(ws, 10)] == list(range(10))
    await post(broker, room, "live")
    assert (await recv_json(ws))["data"] == "live"
    await expect_nothing(ws)
    await ws.close()


# ---------------------------------------------------------------- the Python client does it


@pytest.mark.parametrize("crash", [False, True], ids=["resume-token", "since-after-crash"])
async def test_python_client_recovers_on_the_other_gate(broker_factory, auth_api, redis_server,
                                                       unique, crash):
    """Gate A goes away while 10 triggers are published; the client comes back on gate B.
    Closed normally, A saved the resume state; killed, it did not, and the client's own
    ``since`` recovers instead. Either way: exactly the 10, in order, then live."""
    from tcpgate.client import Client
    from tests.harness import free_port
    from tests.integration.gatehelpers import start_gate

    auth_api.allow(token="bob", body=BOB)
    env = {"BROKER_HISTORY": HISTORY, "BROKER_KEY_PREFIX": f"pyresume-{unique}"}
    gate_a = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, name="gateA",
                        **env)
    gate_b = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, name="gateB",
                        **env)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web", **env)
    room = chat(unique)
    client = Client("127.0.0.1", gate_a.port, token="bob", backoff=(0.05, 0.2))
    await client.connect()
    first_token = client.welcome["resume_token"]
    await client.subscribe(room, request_id="c")
    await post(web, room, "before")
    before = await client.receive(5)
    assert before.offset == client.offsets["c"]

    client.port = free_port()  # nothing listens there: reconnecting fails for a while
    await asyncio.to_thread(gate_a.kill if crash else gate_a.stop)
    for _ in range(100):  # the client has seen gate A go: the 10 are published while it is away
        if not client.connected:
            break
        await asyncio.sleep(0.05)
    assert not client.connected
    for n in range(10):
        await post(web, room, n)
    client.port = gate_b.port
    for _ in range(100):
        if client.connected and client.welcome["resume_token"] != first_token:
            break
        await asyncio.sleep(0.05)
    assert client.welcome.get("resumed") is (not crash)
    got = [await client.receive(5) for _ in range(10)]
    assert [m.data for m in got] == list(range(10))
    assert [m.offset for m in got] == list(range(before.offset + 1, before.offset + 11))
    await client.ping()  # a round trip: gate B has handled what the client sent (re-subscribe)
    await post(web, room, "live")
    assert (await client.receive(5)).data == "live"
    with pytest.raises(asyncio.TimeoutError):
        await client.receive(0.5)
    await client.disconnect()
