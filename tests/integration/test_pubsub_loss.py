"""Triggers lost on a process's pub/sub connection (issue 11 #10).

Redis drops a subscriber connection that falls behind (``client-output-buffer-limit pubsub``)
and redis-py reconnects and re-subscribes silently: whatever was published in between never
reaches that process. ``CLIENT KILL TYPE pubsub`` does the same to every process at once.

Two real broker processes on a private Redis; on each, one rich client subscribed to a room
with history and one to a room without. 300 triggers (both rooms, ``"history": true``) are
posted to both processes while the pub/sub connections are killed. Exact accounting: every
client is told ``resync``; the history subscription ends with every trigger exactly once
(live or replayed, ``recovered: true``); the live-only one has no duplicate and nothing that
was not posted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx

from tests.harness import RedisServer, recv_json, send_json, ws_open

RICH = ["combroker.v1"]
HROOM = {"target": "feed", "kind": "kept"}
LROOM = {"target": "feed", "kind": "live"}
BALLAST = {"target": "ballast"}
HISTORY = [{"room": HROOM, "size": 1000, "ttl": 120}]
N = 300


def shard(prefix: str, room: dict) -> int:
    """Which of two Redis servers holds the room's channel-layer group (channels_redis's
    consistent hash of the group's channel name)."""
    from channels_redis.utils import _consistent_hash

    from broker.fanout.router import room_group
    from rooms import parse_room

    return _consistent_hash(f"{prefix}__group__{room_group(parse_room(room).key)}", 2)


class Client:
    def __init__(self, ws, rid: str) -> None:
        self.ws, self.rid = ws, rid
        self.data: list[int] = []  # the n of each delivery, in arrival order
        self.resyncs: list[dict] = []

    async def read_until_marker(self, marker: int, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await recv_json(self.ws, timeout=max(deadline - loop.time(), 0.01))
            if frame.get("type") == "resync":
                self.resyncs.append(frame)
            elif frame.get("type") == "publish" and "code" not in frame:
                assert frame["requestId"] == self.rid, frame
                if frame["data"]["n"] == marker:
                    return
                self.data.append(frame["data"]["n"])
            else:
                raise AssertionError(f"unexpected frame {frame}")


async def open_clients(brokers, auth_api) -> list[Client]:
    """On each broker, one rich client subscribed to the history room, one to the live one."""
    auth_api.allow("t", body={"login_id": "watcher", "allowed_rooms": [HROOM, LROOM]})
    clients: list[Client] = []
    for broker in brokers:
        for rid, room in (("h", HROOM), ("l", LROOM)):
            ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
            await send_json(ws, {"type": "subscribe", "room": room, "requestId": rid})
            assert (await recv_json(ws))["code"] == "success"
            clients.append(Client(ws, rid))
    return clients


async def post(http: httpx.AsyncClient, broker, n: int, data: str = "") -> int:
    r = await http.post(f"{broker.base_url}/trigger",
                        headers={"Authorization": "Bearer test-token"},
                        json={"rooms": [HROOM, LROOM], "data": {"n": n, "pad": data},
                              "history": True})
    return r.status_code


async def settle_accounts(http, broker, clients: list[Client], readers, n: int) -> None:
    """Wait until every client was told ``resync``, then post a marker (published after every
    trigger, so it arrives after them) and read each client up to it; check the accounting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not all(c.resyncs for c in clients):
        assert loop.time() < deadline, [(c.rid, len(c.data), c.resyncs) for c in clients]
        assert not any(r.done() for r in readers), "a reader stopped early"
        await asyncio.sleep(0.05)
    assert await post(http, broker, n) == 202
    await asyncio.gather(*readers)
    report = []
    for i, c in enumerate(clients):
        report.append((i, c.rid, len(c.data), len(set(c.data)), json.dumps(c.resyncs)))
        assert len(c.data) == len(set(c.data)), f"duplicates: {report[-1]}"
        assert set(c.data) <= set(range(n))
        assert c.resyncs, f"client {i} ({c.rid}) was not told: {report[-1]}"
        if c.rid == "h":
            assert sorted(c.data) == list(range(n)), f"history subscription: {report[-1]}"
            listed = [s for f in c.resyncs for s in f.get("subscriptions", [])]
            assert listed and all(s["requestId"] == "h" and s["recovered"] is True
                                  for s in listed), report[-1]
    for c in clients:
        await c.ws.close()
    print(report)


async def test_pubsub_connection_killed_mid_flood(broker_factory, auth_api, fresh_redis):
    brokers = [broker_factory(auth_api=auth_api, redis=fresh_redis, BROKER_HISTORY=HISTORY)
               for _ in range(2)]
    clients = await open_clients(brokers, auth_api)
    readers = [asyncio.ensure_future(c.read_until_marker(N)) for c in clients]
    redis = fresh_redis.client()
    assert len(redis.client_list(_type="pubsub")) == 2  # one subscriber connection a process

    answered = 0
    killed = asyncio.Event()

    async def one(http: httpx.AsyncClient, n: int) -> int:
        nonlocal answered
        status = await post(http, brokers[n % 2], n)
        answered += 1
        if answered == N // 3 and not killed.is_set():
            killed.set()
            assert await asyncio.to_thread(redis.client_kill_filter, _type="pubsub") == 2
        return status

    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        statuses: list[int] = []
        for start in range(0, N, 30):
            statuses += await asyncio.gather(*(one(http, n) for n in range(start, start + 30)))
        assert statuses == [202] * N
        assert killed.is_set()
        await settle_accounts(http, brokers[0], clients, readers, N)


async def test_subscriber_over_its_output_buffer_limit(broker_factory, auth_api, fresh_redis):
    """What Redis does to a subscriber that falls behind: the process stops reading (SIGSTOP),
    Redis closes its pub/sub connection at ``client-output-buffer-limit pubsub``; when the
    process runs again it reconnects, and must tell its clients. Large triggers to a third
    room (whose own subscriber is then closed as slow) fill the socket buffers in between."""
    redis = fresh_redis.client()
    redis.config_set("client-output-buffer-limit", "pubsub 32kb 0 0")
    publisher, stalled = (broker_factory(auth_api=auth_api, redis=fresh_redis,
                                         BROKER_HISTORY=HISTORY) for _ in range(2))
    clients = await open_clients([stalled], auth_api)
    auth_api.allow("b", body={"login_id": "ballast", "allowed_rooms": [BALLAST]})
    ballast, _ = await ws_open(stalled.ws_url, token="b", subprotocols=RICH)
    await send_json(ballast, {"type": "subscribe", "room": BALLAST, "requestId": 1})
    assert (await recv_json(ballast))["code"] == "success"
    readers = [asyncio.ensure_future(c.read_until_marker(100)) for c in clients]
    before = {c["id"] for c in redis.client_list(_type="pubsub")}
    assert len(before) == 2
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            for n in range(100):
                assert await post(http, publisher, n) == 202
                if n % 10 == 0:
                    for _ in range(3):
                        r = await http.post(f"{publisher.base_url}/trigger",
                                            headers={"Authorization": "Bearer test-token"},
                                            json={"rooms": [BALLAST], "data": "x" * 500_000})
                        assert r.status_code == 202
            # Redis has dropped the stalled process's subscriber connection
            left = {c["id"] for c in redis.client_list(_type="pubsub")}
            assert len(left) == 1 and left < before, (before, left)
            os.kill(stalled.pid, signal.SIGCONT)
            await settle_accounts(http, publisher, clients, readers, 100)
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
        await ballast.close()


async def test_one_shard_of_a_sharded_layer_drops_its_subscribers(broker_factory, auth_api,
                                                                  fresh_redis):
    """With the layer sharded over two Redis servers, only the second one drops its pub/sub
    clients: each process must notice the loss on that connection alone, and must not tell
    its clients before a probe came back through that shard."""
    # a key prefix that puts both rooms' groups on the second server
    prefix = next(p for p in (f"sh{i}" for i in range(1000))
                  if shard(p, HROOM) == shard(p, LROOM) == 1)
    with RedisServer() as second:
        brokers = [broker_factory(auth_api=auth_api, redis=[fresh_redis, second],
                                  BROKER_KEY_PREFIX=prefix, BROKER_HISTORY=HISTORY)
                   for _ in range(2)]
        clients = await open_clients(brokers, auth_api)
        readers = [asyncio.ensure_future(c.read_until_marker(N)) for c in clients]
        redis = second.client()
        assert len(redis.client_list(_type="pubsub")) == 2

        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            statuses: list[int] = []
            for start in range(0, N, 30):
                statuses += await asyncio.gather(*(post(http, brokers[n % 2], n)
                                                   for n in range(start, start + 30)))
                if start == 90:
                    assert await asyncio.to_thread(redis.client_kill_filter,
                                                   _type="pubsub") == 2
            assert statuses == [202] * N
            await settle_accounts(http, brokers[0], clients, readers, N)



async def test_frames_held_through_a_long_loss_are_bounded(broker_factory, auth_api, fresh_redis):
    """Found in review: from a loss until a probe comes back through every shard, history
    subscriptions hold their live frames, and nothing bounded them: with one shard down, the
    triggers of the healthy shard piled up in memory for the whole outage. Held frames now count
    against BROKER_MAX_OUTBOX_BYTES; past it those held since the loss are dropped (counted as
    ``held-overflow``): the recorded ones come back in the replay at ``resync``, the others
    (triggers sent without ``history``, at most once) are gone, and ``resync`` says so. The
    connection stays open."""
    # the history room's group on the first server, which stays up; the second one goes down
    prefix = next(p for p in (f"sh{i}" for i in range(1000)) if shard(p, HROOM) == 0)
    down = next(r for r in ({"target": f"down{i}"} for i in range(1000)) if shard(prefix, r) == 1)
    recorded, unrecorded = range(40), range(1000, 1060)  # 60 x 2 KiB held: twice the bound
    with RedisServer() as second:
        broker = broker_factory(auth_api=auth_api, redis=[fresh_redis, second],
                                BROKER_KEY_PREFIX=prefix, BROKER_HISTORY=HISTORY,
                                BROKER_MAX_OUTBOX_BYTES=64 * 1024)
        auth_api.allow("t", body={"login_id": "w", "allowed_rooms": [HROOM, down]})
        ws, _ = await ws_open(broker.ws_url, token="t", subprotocols=RICH)
        # a subscription on the second shard: the process listens there, so the layer is whole
        # again only once a probe comes back through it
        for rid, room in (("h", HROOM), ("d", down)):
            await send_json(ws, {"type": "subscribe", "room": room, "requestId": rid})
            assert (await recv_json(ws))["code"] == "success"
        client = Client(ws, "h")
        reader = asyncio.ensure_future(client.read_until_marker(len(recorded)))
        await asyncio.to_thread(second.stop)

        async def post_one(http: httpx.AsyncClient, n: int, room: dict, history: bool) -> int:
            r = await http.post(f"{broker.base_url}/trigger",
                                headers={"Authorization": "Bearer test-token"},
                                json={"rooms": [room], "data": {"n": n, "pad": "x" * 2048 *
                                                                (not history)},
                                      "history": history})
            return r.status_code

        async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
            # a trigger for the down shard fails (503): the hub holds the history
            # subscription's live frames from then until a probe comes back through that shard
            assert await post_one(http, -1, down, False) == 503
            for n in range(60):
                if n < len(recorded):
                    assert await post_one(http, recorded[n], HROOM, True) == 202
                assert await post_one(http, unrecorded[n], HROOM, False) == 202
            metrics = (await http.get(f"{broker.base_url}/metrics")).text
            assert 'combroker_drops_total{cause="held-overflow"}' in metrics, metrics
            assert not client.resyncs and not client.data  # held: the shard is still down
            await asyncio.to_thread(second.start)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not client.resyncs:
                assert loop.time() < deadline and not reader.done(), "never told resync"
                await asyncio.sleep(0.05)
            assert await post_one(http, len(recorded), HROOM, True) == 202  # the marker
            await reader
            metrics = (await http.get(f"{broker.base_url}/metrics")).text
    assert 'cause="slow"' not in metrics, metrics
    got = client.data
    assert len(got) == len(set(got)), got
    assert sorted(n for n in got if n in recorded) == list(recorded), got
    assert set(got) - set(recorded) < set(unrecorded), got  # some dropped, none invented
    listed = [s for f in client.resyncs for s in f.get("subscriptions", [])]
    assert listed and all(s["requestId"] == "h" and s["recovered"] is True for s in listed)
    await ws.close()
