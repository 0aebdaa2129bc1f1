"""Quick measurement: what a targeted trigger costs with N connected clients.

N WebSocket clients, each subscribed to its own room {"user": i}, on one broker process on a
private Redis. Triggers to random single rooms are posted one after another (keep-alive);
each is timed from POST to receipt. Reports triggers/s and latency percentiles for each N.

    .venv/bin/python bench/targeted_quick.py 1000 10000
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.harness import AuthAPI, BrokerProcess, RedisServer  # noqa: E402

TRIGGERS = 400


async def run(n: int, broker: BrokerProcess) -> dict:
    clients = []
    sem = asyncio.Semaphore(200)

    async def open_one(i: int):
        async with sem:
            ws = await connect(broker.ws_url, ping_interval=None, max_queue=None,
                               compression=None, open_timeout=60)
            await ws.recv()
            await ws.send(json.dumps({"type": "subscribe", "room": {"user": i}, "requestId": i}))
            assert json.loads(await ws.recv()) == {"code": "success"}
            return ws

    t0 = time.perf_counter()
    clients = await asyncio.gather(*(open_one(i) for i in range(n)))
    connect_s = time.perf_counter() - t0
    latencies = []
    async with httpx.AsyncClient(trust_env=False) as http:
        t0 = time.perf_counter()
        for k in range(TRIGGERS):
            i = random.randrange(n)
            sent = time.perf_counter()
            r = await http.post(f"{broker.base_url}/trigger", json={"rooms": [{"user": i}], "data": k},
                                headers={"Authorization": "Bearer t"})
            assert r.status_code == 202, r.text
            frame = json.loads(await clients[i].recv())
            assert frame["data"] == k
            latencies.append(time.perf_counter() - sent)
        total = time.perf_counter() - t0
    for ws in clients:
        await ws.close()
    latencies.sort()
    return {"connections": n, "connect_s": round(connect_s, 2),
            "triggers_per_s": round(TRIGGERS / total, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}


async def main(sizes: list[int]) -> None:
    with RedisServer() as redis, AuthAPI() as api:
        api.when(lambda rec: True, body={"allowed_rooms": [{"user": "*"}]})
        broker = BrokerProcess({"BROKER_REDIS_URL": redis.url, "BROKER_AUTH_URL": api.url,
                                "BROKER_TRIGGER_TOKEN": "t", "BROKER_LOG_LEVEL": "WARNING"})
        try:
            results = [await run(n, broker) for n in sizes]
        finally:
            broker.stop()
    for r in results:
        print(json.dumps(r))
    if len(results) > 1:
        print(f"ratio triggers/s {results[-1]['connections']} vs {results[0]['connections']}: "
              f"{results[-1]['triggers_per_s'] / results[0]['triggers_per_s']:.2f}")


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [1000, 10000]))
