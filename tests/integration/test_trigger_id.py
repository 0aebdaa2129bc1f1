"""A client-supplied trigger id (issue 11 #12): with the channel layer sharded over two Redis
servers, a trigger whose send fails on one shard is answered 503 after it was recorded in
history (on the first server) and delivered through the other shard. A backend retries as
documented; with the same ``"id"`` the retry is recorded once and delivered once per
subscription. Two real redis-server processes, a real broker process, the real /trigger.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.harness import RedisServer, atrigger, expect_nothing, recv_json, send_json, ws_open

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
HISTORY = [{"room": CHAT_ANY, "size": 100, "ttl": 60}]


def room_on_shard(prefix: str, shard: int) -> dict:
    """A chat room whose channel-layer group lives on ``shard`` of two (channels_redis's
    consistent hash of the group's channel name)."""
    from channels_redis.utils import _consistent_hash

    from broker.fanout.router import room_group
    from rooms import parse_room

    for n in range(1000):
        room = {"target": "chat", "customer": str(n)}
        name = f"{prefix}__group__{room_group(parse_room(room).key)}"
        if _consistent_hash(name, 2) == shard:
            return room
    raise AssertionError("no room found")


async def ask(ws, frame: dict) -> dict:
    await send_json(ws, frame)
    return await recv_json(ws)


async def drain(ws, within: float = 0.5) -> list:
    frames = []
    while True:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), within)))
        except TimeoutError:
            return frames


async def post(broker, body: dict) -> httpx.Response:
    return await atrigger(broker.base_url, "test-token", None, body=body)


@pytest.fixture
def two_shards(fresh_redis):
    with RedisServer() as second:
        yield fresh_redis, second


async def test_retry_after_503_with_an_id_is_recorded_and_delivered_once(
        broker_factory, auth_api, two_shards, unique):
    first, second = two_shards
    prefix = f"tid-{unique}"
    auth_api.allow("t", body={"login_id": "agent", "allowed_rooms": [CHAT_ANY]})
    broker = broker_factory(auth_api=auth_api, redis=[first, second], BROKER_KEY_PREFIX=prefix,
                            BROKER_HISTORY=HISTORY)
    a, b = room_on_shard(prefix, 0), room_on_shard(prefix, 1)
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    assert (await ask(ws, {"type": "subscribe", "room": a, "requestId": "a"}))["code"] == \
        "success"

    second.stop()
    body = {"rooms": [a, b], "data": {"n": 1}, "history": True, "id": "order-17"}
    r = await post(broker, body)
    assert r.status_code == 503, r.text
    # The shard that works sent it. Whether it reaches the subscription now or with the
    # replay at ``resync`` depends on the shard of the process's own channel: if that is the
    # stopped one, the process holds its history subscriptions' live frames until a probe
    # comes back through it (docs/guarantees.md). Either way: once.

    second.restart()
    for _ in range(50):  # the backend retries, as documented, until it is accepted
        r = await post(broker, body)
        if r.status_code == 202:
            break
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.2)
    assert r.status_code == 202 and r.json() == {"id": "order-17"}, r.text

    # recorded once in each room
    for room in (a, b):
        await send_json(ws, {"type": "history", "room": room, "requestId": "h"})
    # The process says resync once a probe comes back through every shard (its send failed:
    # messages may have been lost to it); a held live copy is replayed right after that frame.
    frames: list = []
    while not any(f["type"] == "resync" for f in frames):
        frames.append(await recv_json(ws, timeout=15))
    frames += await drain(ws, within=0.5)
    pages = [f for f in frames if f.get("type") == "history"]
    assert len(pages) == 2, frames
    for page in pages:
        assert [(m["id"], m["data"]) for m in page["messages"]] == [("order-17", {"n": 1})]
    # delivered once to the subscription (live, or replayed at resync), never again
    deliveries = [(f["requestId"], f["data"], f["id"]) for f in frames
                  if f.get("type") == "publish" and "code" not in f]
    assert deliveries == [("a", {"n": 1}, "order-17")], frames
    assert {f["type"] for f in frames} == {"history", "publish", "resync"}, frames
    # a subscriber of the other room recovers it once
    late, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    reply = await ask(late, {"type": "subscribe", "room": b, "requestId": "b", "since": 0})
    assert reply["code"] == "success" and reply["recovered"] is True, reply
    got = await recv_json(late)
    assert (got["requestId"], got["data"], got["id"]) == ("b", {"n": 1}, "order-17")
    await expect_nothing(late, 0.5)
    await late.close()
    await ws.close()


async def test_trigger_id_is_validated(broker_factory, auth_api):
    broker = broker_factory(auth_api=auth_api)
    room = {"target": "chat", "customer": "1"}
    for bad in ("", "x" * 65, "a b", "é", "a\nb", 17, None, ["x"]):
        r = await post(broker, {"rooms": [room], "data": 1, "id": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"].startswith("invalid-trigger-id"), r.text
    r = await post(broker, {"rooms": [room], "data": 1, "id": "Order_17.retry:2-x"})
    assert r.status_code == 202 and r.json() == {"id": "Order_17.retry:2-x"}, r.text
