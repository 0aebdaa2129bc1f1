"""Delivery (PROTOCOL §1): wildcards both ways, exactly once per subscription, across processes.

Single-process tests run twice: on the in-memory layer and on the Redis pub/sub layer. The
cluster tests run two broker processes (uvicorn) on one (private) Redis, with a key prefix of
their own.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from tests.conftest import _BROKERS as BROKERS_KEY
from tests.harness import (
    AuthAPI, BrokerProcess, expect_nothing, recv_json, recv_many, send_json, ws_open,
)

CHAT1 = {"target": "chat", "customer": "1"}
CHAT2 = {"target": "chat", "customer": "2"}
CHAT7 = {"target": "chat", "customer": "7"}
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}
AGENT = {"login_id": "agent", "allowed_rooms": [CHAT_ANY, NEWS, {"target": "typed", "v": "*"}]}


def publish(request_id, data) -> dict:
    return {"type": "publish", "requestId": request_id, "data": data}


async def subscribe(ws, request_id, room) -> None:
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": request_id})
    assert await recv_json(ws) == {"code": "success"}


async def connect(broker, *subs) -> object:
    """A connection (token ``agent``) holding ``subs``: (requestId, room) pairs."""
    ws, welcome = await ws_open(broker.ws_url, token="agent")
    assert welcome["is_authorized"] is True
    for rid, room in subs:
        await subscribe(ws, rid, room)
    return ws


async def nothing_more(*sockets) -> None:
    await asyncio.gather(*(expect_nothing(ws) for ws in sockets))


async def close_all(*sockets) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))


def trigger_ok(response) -> str:
    assert response.status_code == 202, response.text
    return response.json()["id"]


def counter(broker, name: str) -> int:
    text = broker.get("/metrics").text
    found = re.search(rf"^combroker_{name}_total (\d+)$", text, re.M)
    assert found, f"combroker_{name}_total not in /metrics:\n{text}"
    return int(found.group(1))


# ---------------------------------------------------------------- one process, both layers


@pytest.fixture(scope="module")
def module_api():
    with AuthAPI() as api:
        api.allow(token="agent", body=AGENT)
        yield api


@pytest.fixture(scope="module", params=["memory", "redis"])
def single_broker(request, module_api, redis_server):
    env = {"BROKER_AUTH_URL": module_api.url, "BROKER_TRIGGER_TOKEN": "test-token"}
    if request.param == "redis":
        env.update(BROKER_REDIS_URL=redis_server.url,
                   BROKER_KEY_PREFIX=f"fanout-{uuid.uuid4().hex[:8]}")
    with BrokerProcess(env, name=f"broker-{request.param}") as broker:
        yield broker


@pytest.fixture
def broker(single_broker, request):
    request.node.stash.setdefault(BROKERS_KEY, []).append(single_broker)
    return single_broker


async def test_wildcard_subscription_gets_concrete_trigger_and_back(broker):
    wild = await connect(broker, ("w", CHAT_ANY))
    one = await connect(broker, ("c1", CHAT1))
    seven = await connect(broker, ("c7", CHAT7))

    trigger_ok(await broker.atrigger([CHAT1], {"n": 1}))
    assert await recv_json(wild) == publish("w", {"n": 1})
    assert await recv_json(one) == publish("c1", {"n": 1})
    await nothing_more(wild, one, seven)

    # a wildcard trigger reaches concrete subscriptions, and wildcard ones
    trigger_ok(await broker.atrigger([CHAT_ANY], {"n": 2}))
    assert await recv_json(wild) == publish("w", {"n": 2})
    assert await recv_json(one) == publish("c1", {"n": 2})
    assert await recv_json(seven) == publish("c7", {"n": 2})
    await nothing_more(wild, one, seven)
    await close_all(wild, one, seven)


async def test_several_matching_trigger_rooms_give_one_frame(broker):
    wild = await connect(broker, ("w", CHAT_ANY))
    one = await connect(broker, ("c1", CHAT1))
    trigger_ok(await broker.atrigger([CHAT1, CHAT2, CHAT_ANY, NEWS, CHAT1], "once"))
    assert await recv_json(wild) == publish("w", "once")
    assert await recv_json(one) == publish("c1", "once")
    await nothing_more(wild, one)
    await close_all(wild, one)


async def test_two_matching_subscriptions_on_one_connection_give_two_frames(broker):
    ws = await connect(broker, (1, CHAT1), (2, CHAT_ANY), (3, CHAT2), (4, NEWS))
    trigger_ok(await broker.atrigger([CHAT1], {"x": True}))
    frames = await recv_many(ws, 2)
    assert sorted(frames, key=lambda f: f["requestId"]) == [publish(1, {"x": True}),
                                                          publish(2, {"x": True})]
    await nothing_more(ws)
    await ws.close()


async def test_non_matching_subscriptions_get_nothing(broker):
    typed = [("num", {"target": "typed", "v": 2}), ("bool", {"target": "typed", "v": True}),
             ("str", {"target": "typed", "v": "x"})]
    ws = await connect(broker, *typed, ("c2", CHAT2))
    others = await connect(broker, ("news", NEWS))
    for rooms in ([{"target": "typed", "v": "2"}],     # "2" is not 2
                  [{"target": "typed", "v": 1}],       # 1 is not true
                  [{"target": "typed", "v": "X"}],
                  [{"target": "typed"}],               # another key set
                  [{"target": "typed", "v": 2, "w": "*"}],
                  [CHAT1, CHAT7]):
        trigger_ok(await broker.atrigger(rooms, "no"))
    await nothing_more(ws, others)
    # each of those subscriptions does receive what matches it
    trigger_ok(await broker.atrigger([{"target": "typed", "v": 2}, {"target": "typed", "v": True},
                                      {"target": "typed", "v": "x"}, CHAT2], "yes"))
    frames = await recv_many(ws, 4)
    assert sorted(f["requestId"] for f in frames) == ["bool", "c2", "num", "str"]
    assert all(f == publish(f["requestId"], "yes") for f in frames)
    await nothing_more(ws, others)
    await close_all(ws, others)


# ---------------------------------------------------------------- two processes, one Redis


@pytest.fixture
def api(auth_api):
    auth_api.allow(token="agent", body=AGENT)
    return auth_api


@pytest.fixture
def pair(broker_factory, api, redis_server, unique):
    """Two broker processes sharing one Redis and one key prefix (one cluster)."""
    env = {"BROKER_KEY_PREFIX": f"pair-{unique}", "BROKER_PUBLIC_STATUS": True}
    return (broker_factory(auth_api=api, redis=redis_server, **env),
            broker_factory(auth_api=api, redis=redis_server, **env))


async def test_two_processes_each_subscription_gets_exactly_one_frame(pair):
    b1, b2 = pair
    layout = [("one", CHAT1), ("wild", CHAT_ANY), ("two", CHAT2)]
    on1 = {name: await connect(b1, (f"{name}@1", room)) for name, room in layout}
    on2 = {name: await connect(b2, (f"{name}@2", room)) for name, room in layout}
    both1 = await connect(b1, ("a", CHAT1), ("b", CHAT_ANY))
    everyone = [*on1.values(), *on2.values(), both1]

    async def expect(frames_by_ws: dict) -> None:
        for ws, expected in frames_by_ws.items():
            got = await recv_many(ws, len(expected))
            assert sorted(got, key=json.dumps) == sorted(expected, key=json.dumps)
        await nothing_more(*everyone)

    # posted to process 1
    trigger_ok(await b1.atrigger([CHAT1], 1))
    await expect({on1["one"]: [publish("one@1", 1)], on1["wild"]: [publish("wild@1", 1)],
                  on2["one"]: [publish("one@2", 1)], on2["wild"]: [publish("wild@2", 1)],
                  both1: [publish("a", 1), publish("b", 1)]})

    # posted to process 2, several rooms matching the same subscriptions
    trigger_ok(await b2.atrigger([CHAT1, CHAT_ANY, CHAT1], 2))
    await expect({**{ws: [publish(f"{name}@1", 2)] for name, ws in on1.items()},
                  **{ws: [publish(f"{name}@2", 2)] for name, ws in on2.items()},
                  both1: [publish("a", 2), publish("b", 2)]})

    # concrete, reaching only the wildcard subscriptions and CHAT2's
    trigger_ok(await b2.atrigger([CHAT2], 3))
    await expect({on1["wild"]: [publish("wild@1", 3)], on1["two"]: [publish("two@1", 3)],
                  on2["wild"]: [publish("wild@2", 3)], on2["two"]: [publish("two@2", 3)],
                  both1: [publish("b", 3)]})
    await close_all(*everyone)


async def test_concrete_trigger_wakes_only_the_process_holding_the_room(pair):
    b1, b2 = pair
    ws1 = await connect(b1, ("r1", CHAT1))
    ws2 = await connect(b2, ("r2", CHAT2))
    base1, base2 = counter(b1, "triggers_received"), counter(b2, "triggers_received")

    # Redis delivers one subscriber connection's messages in order, so once a later trigger
    # has reached a process, an earlier one it should not have received would have too.
    trigger_ok(await b1.atrigger([CHAT2], "a"))
    assert await recv_json(ws2) == publish("r2", "a")
    trigger_ok(await b2.atrigger([CHAT1], "b"))
    assert await recv_json(ws1) == publish("r1", "b")
    trigger_ok(await b1.atrigger([CHAT2], "c"))
    assert await recv_json(ws2) == publish("r2", "c")

    assert counter(b1, "triggers_received") - base1 == 1
    assert counter(b2, "triggers_received") - base2 == 2
    await nothing_more(ws1, ws2)
    await close_all(ws1, ws2)


async def test_status_counts_the_whole_cluster(pair):
    b1, b2 = pair
    a = await connect(b1, (1, CHAT1))
    b = await connect(b1)
    c = await connect(b2, (1, CHAT1), (2, NEWS))

    async def status_until(expected: dict, timeout: float = 5.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await send_json(b, {"type": "status"})
            status = await recv_json(b)
            counts = {k: status[k] for k in expected}
            if counts == expected or loop.time() > deadline:
                assert counts == expected
                return status
            await asyncio.sleep(0.05)

    status = await status_until({"open_connections": 3, "num_rooms": 2})
    assert set(status) == {"open_connections", "num_rooms", "online_since"}
    await c.close()
    await status_until({"open_connections": 2, "num_rooms": 1})
    await close_all(a, b)
