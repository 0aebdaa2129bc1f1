"""Room history (issue 8): offsets, ``since`` replay with no gap and no duplicate at the seam,
the ``history`` request, the recovery window, and the store's Lua scripts on a real Redis.

Single-process tests run on the in-memory layer and on Redis; the seam test runs a publisher
on one process and the recovering subscriber on another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import httpx
import pytest

from tests.conftest import _BROKERS as BROKERS_KEY
from tests.harness import (
    AuthAPI, BrokerProcess, expect_nothing, recv_json, recv_many, send_json, ws_open,
)

RICH = ["combroker.v1"]
CHAT1 = {"target": "chat", "customer": "1"}
CHAT2 = {"target": "chat", "customer": "2"}
CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}  # no history rule covers it
HISTORY = [{"room": CHAT_ANY, "size": 100, "ttl": 60}]
AGENT = {"login_id": "agent", "allowed_rooms": [CHAT_ANY, NEWS]}
STRANGER = {"login_id": "stranger", "allowed_rooms": [NEWS]}


def trigger_ok(response) -> str:
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


async def subscribe(ws, rid, room, **extra) -> dict:
    reply = await ask(ws, {"type": "subscribe", "room": room, "requestId": rid, **extra})
    assert reply["code"] == "success", reply
    return reply


@pytest.fixture(scope="module")
def module_api():
    with AuthAPI() as api:
        api.allow(token="agent", body=AGENT)
        api.allow(token="stranger", body=STRANGER)
        yield api


@pytest.fixture(scope="module", params=["memory", "redis"])
def single_broker(request, module_api, redis_server):
    env = {"BROKER_AUTH_URL": module_api.url, "BROKER_TRIGGER_TOKEN": "test-token",
           "BROKER_HISTORY": HISTORY}
    if request.param == "redis":
        env.update(BROKER_REDIS_URL=redis_server.url,
                   BROKER_KEY_PREFIX=f"hist-{uuid.uuid4().hex[:8]}")
    with BrokerProcess(env, name=f"broker-{request.param}") as broker:
        yield broker


@pytest.fixture
def broker(single_broker, request):
    request.node.stash.setdefault(BROKERS_KEY, []).append(single_broker)
    return single_broker


def room(customer: str) -> dict:
    return {"target": "chat", "customer": customer}


async def test_offsets_and_since_replay(broker, unique):
    chat = room(unique)
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    first = await subscribe(ws, "live", chat)
    assert first == {"code": "success", "requestId": "live", "offset": 0}  # nothing recorded

    ids = [trigger_ok(await broker.atrigger([chat], {"n": n}, body={
        "rooms": [chat], "data": {"n": n}, "history": True})) for n in range(3)]
    frames = await recv_many(ws, 3)
    offsets = [f["offset"] for f in frames]
    assert [f["id"] for f in frames] == ids
    assert offsets == [offsets[0], offsets[0] + 1, offsets[0] + 2]  # dense, per room
    assert offsets[0] > 10**15  # seeded from the clock (microseconds), below 2**53
    assert offsets[2] < 2**53
    assert frames[0] == {"type": "publish", "requestId": "live", "data": {"n": 0},
                         "room": {"customer": unique, "target": "chat"}, "id": ids[0],
                         "offset": offsets[0]}
    # a trigger that does not ask for history carries no offset
    plain = trigger_ok(await broker.atrigger([chat], "plain"))
    assert await recv_json(ws) == {"type": "publish", "requestId": "live", "data": "plain",
                                   "room": {"customer": unique, "target": "chat"}, "id": plain}

    # a second client missed everything after the first: it gets the rest, then live
    ws2, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    reply = await subscribe(ws2, 7, chat, since=offsets[0])
    assert reply == {"code": "success", "requestId": 7, "offset": offsets[2], "recovered": True}
    replay = await recv_many(ws2, 2)
    assert [(f["offset"], f["data"], f["requestId"]) for f in replay] == [
        (offsets[1], {"n": 1}, 7), (offsets[2], {"n": 2}, 7)]
    await expect_nothing(ws2)
    # since = the room's top: recovered, nothing to replay
    assert (await subscribe(ws2, 8, chat, since=offsets[2]))["recovered"] is True
    # since = 0, "from the start": everything the room still holds
    assert (await subscribe(ws2, 9, chat, since=0))["recovered"] is True
    assert [f["offset"] for f in await recv_many(ws2, 3)] == offsets
    await expect_nothing(ws2)
    trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": "live", "history": True}))
    got = await recv_many(ws2, 3)
    assert sorted(f["requestId"] for f in got) == [7, 8, 9]
    assert {f["offset"] for f in got} == {offsets[2] + 1}
    assert (await recv_json(ws))["offset"] == offsets[2] + 1
    await expect_nothing(ws2)
    await ws.close()
    await ws2.close()


async def test_since_outside_the_sequence_and_without_history(broker, unique):
    chat = room(unique)
    trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": 1, "history": True}))
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    top = (await subscribe(ws, "a", chat))["offset"]
    # an offset this room never issued (from the future, or of an older sequence)
    assert (await subscribe(ws, "b", chat, since=top + 5))["recovered"] is False
    reply = await subscribe(ws, "c", chat, since=top - 10)
    assert reply["recovered"] is False
    assert [f["offset"] for f in await recv_many(ws, 1)] == [top]  # what is left is replayed
    # a room no rule covers keeps nothing: since cannot be honoured
    assert await ask(ws, {"type": "subscribe", "room": NEWS, "requestId": "n", "since": 3}) == {
        "code": "success", "requestId": "n", "recovered": False}
    # a wildcard subscription: history is per concrete room (docs/guarantees.md)
    reply = await ask(ws, {"type": "subscribe", "room": CHAT_ANY, "requestId": "w", "since": 1})
    assert reply == {"code": "success", "requestId": "w", "recovered": False}
    trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": 2, "history": True}))
    got = sorted(await recv_many(ws, 4), key=lambda f: str(f["requestId"]))
    assert [f["requestId"] for f in got] == ["a", "b", "c", "w"]
    # the wildcard subscription's frame names the concrete room and its offset
    assert all(f["offset"] == top + 1 and f["room"] == {"customer": unique, "target": "chat"}
               for f in got)
    for bad in (-1, "3", 1.5, True):
        reply = await ask(ws, {"type": "subscribe", "room": chat, "requestId": "x",
                               "since": bad})
        assert reply["message"] == "invalid-message", reply
    await expect_nothing(ws)
    await ws.close()


async def test_history_request(broker, unique):
    chat = room(unique)
    ids = [trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": {"n": n}, "history": True})) for n in range(5)]
    ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    latest = await ask(ws, {"type": "history", "room": chat, "limit": 2, "requestId": "h"})
    top = latest["offset"]
    assert latest == {"type": "history", "room": {"customer": unique, "target": "chat"},
                      "offset": top, "requestId": "h", "messages": [
                          {"offset": top - 1, "id": ids[3], "data": {"n": 3}},
                          {"offset": top, "id": ids[4], "data": {"n": 4}}]}
    every = await ask(ws, {"type": "history", "room": chat})
    assert [m["data"]["n"] for m in every["messages"]] == [0, 1, 2, 3, 4]
    after = await ask(ws, {"type": "history", "room": chat, "since": top - 3, "limit": 2})
    assert after["recovered"] is True
    assert [m["offset"] for m in after["messages"]] == [top - 2, top - 1]
    assert (await ask(ws, {"type": "history", "room": room("nobody")})) == {
        "type": "history", "room": {"customer": "nobody", "target": "chat"}, "offset": 0,
        "messages": []}

    async def error(frame: dict) -> str:
        reply = await ask(ws, {**frame, "type": "history", "requestId": 1})
        assert reply["code"] == "error", reply
        return reply["message"]

    assert await error({"room": NEWS}) == "history-not-enabled"
    assert await error({"room": CHAT_ANY}) == "history-not-enabled"
    assert await error({"room": {"target": "secret", "x": "1"}}) == "room-not-found"
    assert await error({"room": "nope"}) == "invalid-room"
    assert await error({"room": chat, "limit": 0}) == "invalid-message"
    assert await error({"room": chat, "since": "x"}) == "invalid-message"
    # a room's history is read with the right to subscribe to it
    other, _ = await ws_open(broker.ws_url, token="stranger", subprotocols=RICH)
    reply = await ask(other, {"type": "history", "room": chat})
    assert reply["message"] == "room-not-found"
    await other.close()
    await ws.close()


async def test_high_templar_dialect_is_unchanged(broker, unique):
    """since works in the High-templar dialect too; its frames gain no field."""
    chat = room(unique)
    trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": "old", "history": True}))
    rich, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
    top = (await subscribe(rich, 1, chat))["offset"]
    ws, welcome = await ws_open(broker.ws_url, token="agent")
    assert welcome == {"is_authorized": True, "allowed_rooms": [CHAT_ANY, NEWS]}
    await send_json(ws, {"type": "subscribe", "room": chat, "requestId": "r",
                         "since": top - 1})
    assert await recv_json(ws) == {"code": "success"}
    assert await recv_json(ws) == {"type": "publish", "requestId": "r", "data": "old"}
    trigger_ok(await broker.atrigger([chat], None, body={
        "rooms": [chat], "data": "new", "history": True}))
    assert await recv_json(ws) == {"type": "publish", "requestId": "r", "data": "new"}
    await expect_nothing(ws)
    await ws.close()
    await rich.close()


async def test_history_ttl_expiry_reports_not_recovered(broker_factory, auth_api, redis_server,
                                                         unique):
    auth_api.allow(token="agent", body=AGENT)
    short = [{"room": CHAT_ANY, "size": 100, "ttl": 0.5}]
    for redis in (None, redis_server):
        broker = broker_factory(auth_api=auth_api, redis=redis, BROKER_HISTORY=short,
                                BROKER_KEY_PREFIX=f"ttl-{unique}")
        chat = room(unique + str(redis is None))
        ws, _ = await ws_open(broker.ws_url, token="agent", subprotocols=RICH)
        top = (await subscribe(ws, 1, chat))["offset"]
        for n in range(2):
            trigger_ok(await broker.atrigger([chat], None, body={
                "rooms": [chat], "data": n, "history": True}))
        offsets = [f["offset"] for f in await recv_many(ws, 2)]
        assert top == 0 and offsets[1] == offsets[0] + 1
        # within the window
        assert (await subscribe(ws, 2, chat, since=offsets[0]))["recovered"] is True
        assert (await recv_json(ws))["offset"] == offsets[1]
        await asyncio.sleep(1.0)
        # the entries expired; the room's sequence did not: the gap is known
        reply = await subscribe(ws, 3, chat, since=offsets[0])
        assert reply == {"code": "success", "requestId": 3, "offset": offsets[1],
                         "recovered": False}
        # nothing missed since the top: still exact
        assert (await subscribe(ws, 4, chat, since=offsets[1]))["recovered"] is True
        await expect_nothing(ws)
        await ws.close()


async def test_seam_no_gap_no_duplicate_across_processes(broker_factory, auth_api, redis_server,
                                                          unique):
    """Triggers flow without pause (published on A) while clients recover on B with since:
    each sees every offset after its since exactly once, in order."""
    auth_api.allow(token="agent", body=AGENT)
    prefix = f"seam-{unique}"
    a = broker_factory(auth_api=auth_api, redis=redis_server, BROKER_HISTORY=HISTORY,
                       BROKER_KEY_PREFIX=prefix)
    b = broker_factory(auth_api=auth_api, redis=redis_server, BROKER_HISTORY=HISTORY,
                       BROKER_KEY_PREFIX=prefix)
    chat = room(unique)
    watcher, _ = await ws_open(a.ws_url, token="agent", subprotocols=RICH)
    await subscribe(watcher, "w", chat)
    total = 120
    stop = asyncio.Event()

    async def publish() -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            for n in range(total):
                r = await client.post(a.base_url + "/trigger", json={
                    "rooms": [chat], "data": n, "history": True},
                    headers={"Authorization": "Bearer test-token"})
                assert r.status_code == 202, r.text
        stop.set()

    publisher = asyncio.ensure_future(publish())
    seen = [f["offset"] for f in await recv_many(watcher, 10, timeout=10)]
    base = seen[0] - 1  # the watcher's frames start at the room's first offset
    results = []
    for i in range(4):  # join at different moments of the flow
        ws, _ = await ws_open(b.ws_url, token="agent", subprotocols=RICH)
        since = base + 3 + i * 7
        reply = await subscribe(ws, i, chat, since=since)
        assert reply["recovered"] is True
        results.append((ws, since))
        await asyncio.sleep(0.05)
    await asyncio.wait_for(publisher, 60)
    last = base + total
    for ws, since in results:
        frames = await recv_many(ws, last - since, timeout=15)
        assert [f["offset"] for f in frames] == list(range(since + 1, last + 1))
        assert [f["data"] for f in frames] == list(range(since - base, total))
        await expect_nothing(ws, 0.5)
        await ws.close()
    await watcher.close()


# ---------------------------------------------------------------- the store on a real Redis


async def test_redis_store_scripts(redis_server):
    from broker.history import HistoryPolicy, recovered
    from broker.messages import DirectMessage
    from broker.stores.acks import AckQuota, RedisAcks
    from broker.stores.history import RedisHistory
    from broker.stores.redis import RedisClient
    from broker.stores.resume import RedisResume

    client = RedisClient(redis_server.url, f"store-{uuid.uuid4().hex[:8]}")
    store = RedisHistory(client)
    resume, acks = RedisResume(client), RedisAcks(client, "p1", 15.0)
    rule = HistoryPolicy.from_setting([{"room": CHAT_ANY, "size": 10, "ttl": 60}]).rules[0]
    t0 = time.time_ns() // 1000
    got = [await store.append([("k1", rule), ("k2", rule)], f"t{n}", f'{{"n":{n}}}', 3600)
           for n in range(250)]
    first = got[0]["k1"]
    assert first > t0 and [g["k1"] for g in got] == list(range(first, first + 250))
    page = await store.read("k1", since=None, limit=3)
    assert page.top == first + 249 and page.base == first - 1
    assert [(e.offset, e.id, e.data_json) for e in page.entries] == [
        (first + 247, "t247", '{"n":247}'), (first + 248, "t248", '{"n":248}'),
        (first + 249, "t249", '{"n":249}')]
    # MAXLEN ~10 trimmed whole nodes: the start is gone, the end is there
    old = await store.read("k1", since=first, limit=None)
    assert not recovered(first, old)
    assert old.entries[-1].offset == first + 249 and len(old.entries) < 249
    recent = await store.read("k1", since=first + 245, limit=None)
    assert recovered(first + 245, recent) and len(recent.entries) == 4
    assert (await store.read("k1", since=first + 249, limit=0)).entries == ()
    # a client-supplied trigger id is recorded once per room (once_ttl)
    one = await store.append([("k1", rule)], "order-1", "1", 3600, once_ttl=60)
    two = await store.append([("k1", rule), ("k3", rule)], "order-1", "1", 3600,
                             once_ttl=60)
    assert two["k1"] == one["k1"] == first + 250 and two["k3"] > 0
    assert (await store.read("k1", since=first + 249, limit=None)).top == first + 250
    # resume: once, for the same fingerprint only
    await resume.save("tok", "fp", "state", 60)
    assert await resume.take("tok", "other") is None
    assert await resume.take("tok", "fp") == "state"
    assert await resume.take("tok", "fp") is None
    # acknowledged messages
    message = DirectMessage("m1", "room", "/agent/bob", "/service/s", "{}", "1", ack=True)
    await acks.put(message, 60, AckQuota())
    assert await acks.pending("/agent/bob") == [message]
    await acks.hold("m1", "c1")
    await acks.hold("m1", "c2")
    assert await acks.confirm("m1", "/agent/eve", "c1") == (False, None)  # not hers
    assert await acks.confirm("m1", "/agent/bob", "c1") == (False, None)  # c2 owes it
    assert await acks.release("c2", "/agent/bob", ["m1"]) == [("m1", "/service/s")]
    assert await acks.pending("/agent/bob") == []
    await acks.put(dataclasses.replace(message, id="m2"), 60, AckQuota())
    await acks.hold("m2", "c1")
    assert await acks.release("c1", "/agent/bob", ["m2"]) == []  # not confirmed: pending
    assert [m.id for m in await acks.pending("/agent/bob")] == ["m2"]
    assert await acks.confirm("m2", "/agent/bob", "c3") == (True, "/service/s")
    # every ledger is back to nothing (quotas are freed by completion)
    p = client.prefix
    assert await client.redis.hget(f"{p}:ack:allb:", "_") == b"0"
    assert await client.redis.hget(f"{p}:ack:inb:/agent/bob", "_") == b"0"
    assert await client.redis.hget(f"{p}:ack:outb:/service/s", "_") == b"0"
    assert not await client.redis.exists(f"{p}:ack:all:", f"{p}:ack:in:/agent/bob",
                                        f"{p}:ack:out:/service/s")
    await client.redis.aclose()
