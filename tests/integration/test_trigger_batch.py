"""Triggers in batches: ``POST /trigger`` with an array over a sharded layer whose one shard is
down (each entry answered for itself), and ``publish_many()`` / ``publish_many_sync()`` from a
Django process of its own. (The batch form's status codes on both ways the route is served:
tests/integration/test_trigger.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.harness import (
    ROOT, RedisServer, atrigger, expect_nothing, free_port, recv_json, send_json, ws_open,
)
from tests.integration.test_trigger_id import room_on_shard

RICH = ["combroker.v1"]
CHAT_ANY = {"target": "chat", "customer": "*"}
UNAVAILABLE = {"error": "channel layer unavailable: the trigger was not delivered", "status": 503}


@pytest.mark.parametrize("layer", ["pubsub", "classic", "memory"])
async def test_a_full_batch_is_delivered_in_order_on_every_layer(broker_factory, auth_api,
                                                                 redis_server, unique, layer):
    """1000 triggers (BROKER_MAX_TRIGGER_BATCH) in one POST, on the pub/sub layer (pipelined),
    channels_redis's classic layer and the in-memory layer (group_send): every one delivered,
    in order (the classic layer refused a batch sent all at once: MaxConnectionsError)."""
    auth_api.allow("t", body={"allowed_rooms": [CHAT_ANY]})
    env = {"BROKER_KEY_PREFIX": f"full-{unique}"}
    if layer == "classic":
        env["DJANGO_SETTINGS_MODULE"] = "tests.classiclayer"
    broker = broker_factory(auth_api=auth_api, redis=None if layer == "memory" else redis_server,
                            **env)
    room = {"target": "chat", "customer": "1"}
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "s"})
    assert (await recv_json(ws))["code"] == "success"
    others = [{"target": "chat", "customer": str(n)} for n in range(2, 5)]
    batch = [{"rooms": [room, others[n % 3]], "data": n} for n in range(1000)]
    r = await atrigger(broker.base_url, "test-token", None, body=batch, timeout=60)
    assert r.status_code == 202, r.text[:500]
    ids = [x["id"] for x in r.json()["results"]]
    got = [await recv_json(ws, timeout=10) for _ in batch]
    assert [(f["data"], f["id"]) for f in got] == list(enumerate(ids))
    await expect_nothing(ws)
    await ws.close()


@pytest.fixture
def two_shards(fresh_redis):
    with RedisServer() as second:
        yield fresh_redis, second


async def test_a_batch_over_a_shard_that_is_down_answers_each_entry(
        broker_factory, auth_api, two_shards, unique):
    first, second = two_shards
    prefix = f"batch-{unique}"
    auth_api.allow("t", body={"allowed_rooms": [CHAT_ANY]})
    broker = broker_factory(auth_api=auth_api, redis=[first, second], BROKER_KEY_PREFIX=prefix)
    a, b = room_on_shard(prefix, 0), room_on_shard(prefix, 1)
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    await send_json(ws, {"type": "subscribe", "room": a, "requestId": "a"})
    assert (await recv_json(ws))["code"] == "success"

    second.stop()
    batch = [{"rooms": [a], "data": 1}, {"rooms": [b], "data": 2},
             {"rooms": [a], "data": 3, "id": "third"}, {"rooms": [a, b], "data": 4}]
    r = await atrigger(broker.base_url, "test-token", None, body=batch)
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert set(results[0]) == {"id"} and results[2] == {"id": "third"}, results
    assert results[1] == UNAVAILABLE and results[3] == UNAVAILABLE, results
    got = [await recv_json(ws, timeout=5) for _ in range(2)]
    assert [(f["data"], f["id"]) for f in got] == [(1, results[0]["id"]), (3, "third")]
    await ws.close()


PUBLISHER = r"""
import asyncio, json, sys
import django
django.setup()
from broker import publish, publish_many, publish_many_sync

room = json.loads(sys.argv[1])


def batch(run):
    return [
        {"rooms": [room], "data": {"run": run, "n": 1}},
        {"rooms": [{"bad": None}], "data": 1},
        {"rooms": [room], "data": {"run": run, "n": 2}, "id": f"{run}-2"},
        {"rooms": [room], "data": 1, "id": "not ok"},
        {"rooms": [room]},
        {"rooms": [room], "data": float("nan")},
        "not a mapping",
        {"rooms": [room], "data": {"run": run, "n": 3}, "history": True},
    ]


def show(results):
    return [r if isinstance(r, str) else [type(r).__name__, str(r)] for r in results]


out = {"sync": show(publish_many_sync(batch("sync"))),
       "async": show(asyncio.run(publish_many(iter(batch("async")))))}
try:  # broker.publish takes the caller's own id too
    out["own"] = asyncio.run(publish([room], {"run": "own"}, trigger_id="own-id"))
except Exception as exc:
    out["own"] = type(exc).__name__
print(json.dumps(out))
"""


def run_publisher(env_overrides: dict, room: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(DJANGO_SETTINGS_MODULE="combroker.settings", PYTHONDONTWRITEBYTECODE="1",
               **env_overrides)
    proc = subprocess.run([sys.executable, "-c", PUBLISHER, json.dumps(room)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def test_publish_many_answers_each_trigger_in_order(broker_factory, auth_api,
                                                          redis_server, unique):
    prefix = f"pubmany-{unique}"
    room = {"target": "chat", "customer": "9"}
    auth_api.allow("t", body={"allowed_rooms": [CHAT_ANY]})
    broker = broker_factory(auth_api=auth_api, redis=redis_server, BROKER_KEY_PREFIX=prefix)
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "s"})
    assert (await recv_json(ws))["code"] == "success"

    out = await asyncio.to_thread(run_publisher, {"BROKER_REDIS_URL": redis_server.url,
                                                  "BROKER_KEY_PREFIX": prefix}, room)
    for run in ("sync", "async"):
        results = out[run]
        assert [r[0] for r in results[1:2] + results[3:7]] == [
            "InvalidRoom", "InvalidTriggerId", "InvalidTrigger", "ValueError",
            "InvalidTrigger"], results
        assert results[3][1].startswith("invalid-trigger-id: ")
        assert results[4][1] == "data missing" and results[6][1] == "body must be a JSON object"
        assert results[2] == f"{run}-2"
        ids = [results[0], results[2], results[7]]
        assert all(isinstance(i, str) for i in ids), results
        for n, trigger_id in enumerate(ids, start=1):
            frame = await recv_json(ws)
            assert (frame["data"], frame["id"]) == ({"run": run, "n": n}, trigger_id), frame
    frame = await recv_json(ws)
    assert (frame["data"], frame["id"]) == ({"run": "own"}, "own-id") == (
        {"run": "own"}, out["own"])
    await expect_nothing(ws)
    await ws.close()


def test_publish_many_returns_broker_unavailable_per_entry_when_redis_is_down():
    out = run_publisher({"BROKER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                        {"target": "chat", "customer": "9"})
    for run in ("sync", "async"):
        names = [r[0] if isinstance(r, list) else r for r in out[run]]
        assert names == ["BrokerUnavailable", "InvalidRoom", "BrokerUnavailable",
                         "InvalidTriggerId", "InvalidTrigger", "ValueError", "InvalidTrigger",
                         "BrokerUnavailable"], out[run]
    assert out["own"] == "BrokerUnavailable"


async def test_a_batch_is_recorded_in_history_in_its_order(broker_factory, auth_api,
                                                            redis_server, unique):
    room = {"target": "chat", "customer": "5"}
    auth_api.allow("t", body={"allowed_rooms": [CHAT_ANY]})
    broker = broker_factory(auth_api=auth_api, redis=redis_server,
                            BROKER_KEY_PREFIX=f"bhist-{unique}",
                            BROKER_HISTORY=[{"room": CHAT_ANY, "size": 100, "ttl": 60}])
    ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
    await send_json(ws, {"type": "subscribe", "room": room, "requestId": "s"})
    assert (await recv_json(ws))["code"] == "success"
    batch = [{"rooms": [room], "data": n, "history": n != 3} for n in range(8)]
    r = await atrigger(broker.base_url, "test-token", None, body=batch)
    assert r.status_code == 202, r.text
    ids = [x["id"] for x in r.json()["results"]]
    live = [await recv_json(ws) for _ in batch]
    assert [(f["data"], f["id"]) for f in live] == list(zip(range(8), ids))
    offsets = [f["offset"] for f in live if "offset" in f]
    assert len(offsets) == 7 and offsets == sorted(offsets), live
    await send_json(ws, {"type": "history", "room": room, "requestId": "h"})
    page = await recv_json(ws)
    assert [(m["data"], m["id"], m["offset"]) for m in page["messages"]] == [
        (f["data"], f["id"], f["offset"]) for f in live if "offset" in f]
    await expect_nothing(ws)
    await ws.close()
